"""scripts/bench.py's "products alone" row: the matrix products it times are the engine's, shape for shape, and
exactly the FLOPs the formula counts for a training step. (Its timings are printed, never asserted.)"""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

import minigpt_np as mg
from minigpt_np import kernels
from minigpt_np.fast import ops

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench", ROOT / "scripts" / "bench.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

CONFIGS = [(mg.GPTConfig(vocab_size=50, block_size=8, n_layer=2, n_head=2, n_embd=16), 3),
           (mg.GPTConfig(vocab_size=64, block_size=16, n_layer=3, n_head=4, n_embd=32), 1),
           (mg.GPTConfig(vocab_size=64, block_size=128, n_layer=1, n_head=4, n_embd=32), 3)]   # attention in 3 blocks


def rows(a):
    """(N, C) of an (..., C) operand as the ops flatten it."""
    return int(np.prod(a.shape[:-1])), a.shape[-1]


def transposed(shape):
    return shape[:-2] + (shape[-1], shape[-2])


# Each function of the fast kernels (minigpt_np.fast.ops, which the benchmark times) that computes matrix products ->
# the (a.shape, b.shape) of those products, from its arguments; attention's per row block, as
# `blocks.in_row_blocks` calls it.
PRODUCTS_OF = {
    "linear_forward": lambda x, w, b=None: [(rows(x), w.shape)],
    "linear_backward": lambda dy, x, w, need_dx=True: [(rows(x)[::-1], rows(dy))]
    + ([(rows(dy), w.shape[::-1])] if need_dx else []),
    "lm_head_forward": lambda x, wte: [(rows(x), wte.shape[::-1])],
    "lm_head_backward": lambda dlogits, x, wte: [(rows(dlogits), wte.shape), (rows(dlogits)[::-1], rows(x))],
    "_attention_rows": lambda q, k, v, disallowed, att, y: [(k.shape, transposed(q.shape)),
                                                            (transposed(att.shape), v.shape)],
    "_attention_backward_rows": lambda dy, q, k, v, att, dq, dk, dv, allowed=None: [
        (att.shape, dy.shape), (v.shape, transposed(dy.shape)), (transposed(att.shape), k.shape), (att.shape, q.shape)],
}


def engine_products(cfg, batch, monkeypatch):
    """(a.shape, b.shape) of every matrix product of one forward and backward of the fast kernels on `batch`
    windows."""
    seen = []
    for name, products_of in PRODUCTS_OF.items():
        def recorded(*args, _op=getattr(ops, name), _products_of=products_of, **kwargs):
            seen.extend(_products_of(*args, **kwargs))
            return _op(*args, **kwargs)
        monkeypatch.setattr(ops, name, recorded)
    model = mg.GPT(cfg, dtype=np.float32, seed=0)
    windows = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, cfg.block_size + 1))
    with kernels.using("fast"):
        model.loss(windows[:, :-1], windows[:, 1:]).backward()
    return sorted((tuple(map(int, a)), tuple(map(int, b))) for a, b in seen)


@pytest.mark.parametrize("cfg, batch", CONFIGS)
def test_step_products_are_the_engines(cfg, batch, monkeypatch):
    products = bench.step_products(cfg, batch, seed=0)
    assert sorted((a.shape, b.shape) for a, b, _ in products) == engine_products(cfg, batch, monkeypatch)
    assert not any(np.shares_memory(a, b) for a, b, _ in products)      # A^T A would go to a cheaper routine


@pytest.mark.parametrize("cfg, batch", CONFIGS)
def test_step_products_count_the_training_flops(cfg, batch):
    assert bench.products_flops(bench.step_products(cfg, batch, seed=0)) == bench.train_flops(cfg, batch)


def test_products_step_runs_both_halves():
    cfg, batch = CONFIGS[0]
    bench.make_products_step(cfg, batch)()
    products = bench.step_products(cfg, batch, seed=0)
    bench.run_products(products)
    for a, b, out in products:
        np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-5)


def test_a_tiny_case_times_the_fast_kernels_torch_and_on_request_the_reference(monkeypatch):
    """The benchmark's training case end to end on a tiny GPT, one repeat (its memory probe left out: it runs the
    script's own cases in a fresh process). Timings are not checked, only that each engine ran the same first step."""
    cfg = mg.GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=16)
    monkeypatch.setitem(bench.SIZES, "tiny", bench.TrainCase(cfg, 3))
    monkeypatch.setattr(bench, "measure_memory", lambda *args: float("nan"))
    with kernels.using("fast"):
        rows, report = bench.bench_training("tiny", warmup=0, repeats=1, threads=1, reference=True)
    assert [row[1] for row in rows] == ["numpy", "torch", "numpy reference", "numpy products"]
    assert report["first_loss_abs_diff"] < 1e-5 and report["ms_reference"] > 0 and report["ms_numpy"] > 0
