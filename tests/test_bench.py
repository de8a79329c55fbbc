"""scripts/bench.py's "products alone" row: the matrix products it times are those the FLOP formula counts for a
training step, no more and no fewer. (Its timings are printed, never asserted.)"""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

import minigpt_np as mg

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench", ROOT / "scripts" / "bench.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


@pytest.mark.parametrize("cfg, batch", [
    (mg.GPTConfig(vocab_size=50, block_size=8, n_layer=2, n_head=2, n_embd=16), 3),
    (mg.GPTConfig(vocab_size=64, block_size=16, n_layer=3, n_head=4, n_embd=32), 1),
])
def test_step_products_count_the_training_flops(cfg, batch):
    products = bench.step_products(cfg, batch, seed=0)
    assert bench.products_flops(products) == bench.train_flops(cfg, batch)
    assert len(products) == 18 * cfg.n_layer + 3          # 4 linears x 3, attention's 6; the tied head's 3


def test_products_run_in_place():
    cfg = mg.GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=16)
    bench.make_products_step(cfg, 3)()
    first = bench.step_products(cfg, 2, seed=0)
    bench.run_products(first)
    np.testing.assert_allclose(first[0][2], first[0][0] @ first[0][1], rtol=1e-5)   # out= holds a product
    assert [out.shape for _, _, out in bench.step_products(cfg, 1, seed=1)][:3] == [(8, 48), (8, 16), (16, 48)]
