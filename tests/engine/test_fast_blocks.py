"""The fast kernels' row blocks: `blocks.in_row_blocks` visits every row exactly once, in blocks of about
BLOCK_BYTES, from THREADS threads, and however the rows are cut and shared no number changes."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import minigpt_np as mg
from minigpt_np import kernels
from minigpt_np.fast import blocks
from minigpt_np.fast import functional as fast_functional
from minigpt_np.fast import ops as fast_ops
from minigpt_np.tensor import Tensor


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_every_row_is_visited_once_whatever_the_threads(monkeypatch, threads):
    monkeypatch.setattr(blocks, "THREADS", threads)
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 3 * 8 * 4)          # 3 rows of 8 float32 per block
    x = np.arange(50 * 8, dtype=np.float32).reshape(50, 8)
    visits = np.zeros((50, 1), dtype=np.int64)
    sizes, workers = [], set()

    def fn(x_rows, visits_rows):
        visits_rows += 1
        sizes.append(len(x_rows))
        workers.add(threading.get_ident())
    blocks.in_row_blocks(fn, x, visits)
    assert (visits == 1).all()
    assert sorted(sizes) == [2] + [3] * 16                          # 16 blocks of 3 rows and the last 2
    assert len(workers) <= threads


def test_a_broadcast_view_is_cut_like_the_others_and_a_single_row_goes_to_every_block(monkeypatch):
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 16)                   # one row of out per block
    mask = np.broadcast_to(np.array([[True, False]]), (6, 2))      # stride 0 along the rows
    offset = np.array([[10.0, 20.0]])                               # first axis 1: every block gets it whole
    out = np.zeros((6, 2))
    blocks.in_row_blocks(lambda m, b, o: np.add(m, b, out=o), mask, offset, out)
    np.testing.assert_array_equal(out, np.tile([11.0, 20.0], (6, 1)))


def test_an_error_in_a_block_reaches_the_caller(monkeypatch):
    monkeypatch.setattr(blocks, "THREADS", 2)
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 8)

    def fn(rows):
        if rows[0, 0] == 7:
            raise FloatingPointError("row 7")
    with pytest.raises(FloatingPointError, match="row 7"):
        blocks.in_row_blocks(fn, np.arange(10.0).reshape(10, 1))


@pytest.mark.parametrize("value, expected", [("3", "3"), ("", "1")])
def test_the_thread_count_comes_from_the_environment_or_is_one(value, expected):
    env = dict(os.environ, MINIGPT_NP_THREADS=value)
    code = "from minigpt_np.fast import blocks; print(blocks.threads())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == expected


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_thread_count_in_the_environment_is_refused_with_a_clear_message(value):
    env = dict(os.environ, MINIGPT_NP_THREADS=value)
    code = "import numpy as np; from minigpt_np.fast import ops; ops.gelu_forward(np.zeros((64, 8192), np.float32))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode != 0
    assert "MINIGPT_NP_THREADS must be a whole number >= 1" in done.stderr


def randn(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def test_cross_entropy_over_many_row_blocks_equals_one_block(monkeypatch):
    """The softmax runs in row blocks: blocks of one row give the same loss and gradient, bit for bit."""
    logits, targets = 3.0 * randn(50, 7), np.where(randn(50, seed=1) > 1, -100, np.arange(50) % 7)

    def loss_and_grad():
        with kernels.using("fast"):
            x = Tensor(logits.copy(), requires_grad=True)
            loss = mg.functional.cross_entropy(x, targets)
            loss.backward()
        return float(loss.data), x.grad
    one_block = loss_and_grad()
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 1)
    row_by_row = loss_and_grad()
    assert one_block[0] == row_by_row[0]
    np.testing.assert_array_equal(one_block[1], row_by_row[1])


def test_gelu_over_many_row_blocks_equals_one_block(monkeypatch):
    x, dy = 2.0 * randn(6, 9), randn(6, 9, seed=1)
    one_block = fast_ops.gelu_forward(x), fast_ops.gelu_backward(dy, x, fast_ops.gelu_forward(x)[1])
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 1)
    row_by_row = fast_ops.gelu_forward(x), fast_ops.gelu_backward(dy, x, fast_ops.gelu_forward(x)[1])
    for a, b in zip((*one_block[0], one_block[1]), (*row_by_row[0], row_by_row[1])):
        np.testing.assert_array_equal(a, b)


def test_row_blocks_and_threads_change_no_number_of_a_gpt_step(monkeypatch):
    """However the rows are cut and shared among threads, every number of a GPT's forward and backward, with and
    without a padding mask, is the one computed in a single block on one thread."""
    cfg = mg.GPTConfig(vocab_size=29, block_size=12, n_layer=2, n_head=2, n_embd=16)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (4, 11))
    idx, targets = tokens[:, :-1], tokens[:, 1:]
    mask = np.ones(idx.shape, dtype=np.int64)
    mask[1, :3] = 0

    def step():
        with kernels.using("fast"):
            model = mg.GPT(cfg, seed=0)
            loss = model.loss(idx, targets)
            padded = mg.functional.cross_entropy(model(idx, attention_mask=mask), np.where(mask == 1, targets, -100))
            mg.tensor.backward([loss, padded], [np.ones((), np.float32), np.ones((), np.float32)])
        return [loss.data, padded.data] + [p.grad for p in model.parameters()]
    monkeypatch.setattr(blocks, "THREADS", 1)
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 2 ** 30)
    whole = step()
    monkeypatch.setattr(blocks, "THREADS", 3)
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 64)                 # a row or two per block
    split = step()
    for a, b in zip(whole, split):
        np.testing.assert_array_equal(a, b)


def test_attention_scores_are_key_major_and_the_mask_laid_out_like_them():
    """allowed[b, 0, j, t] = (j <= t + S - T) and key_mask[b, j], C-ordered as the scores (S, T) it is added to."""
    key_mask = np.array([[0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    for T, S, mask in [(4, 4, None), (3, 7, None), (1, 5, None), (3, 7, key_mask), (1, 7, key_mask)]:
        allowed = fast_ops.causal_allowed(T, S, mask)
        expected = np.array([[[[j <= t + S - T and (mask is None or mask[b, j] == 1) for t in range(T)]
                               for j in range(S)]] for b in range(1 if mask is None else len(mask))])
        assert allowed.dtype == bool and np.array_equal(allowed, expected)
        assert allowed.flags.c_contiguous


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_fused_lm_head_cross_entropy_equals_lm_head_then_cross_entropy_exactly(dtype):
    """The fused op writes the softmax over the logits it owns, and dlogits over the softmax: the same bits as the
    two fast ops in a row."""
    targets = np.array([[2, -100, 0, 6], [-100, -100, 3, 3]])
    inputs = randn(2, 4, 5).astype(dtype), randn(7, 5, seed=1).astype(dtype)

    def loss_and_grads(fn):
        x, E = (Tensor(a.copy(), requires_grad=True) for a in inputs)
        loss = fn(x, E)
        loss.backward()
        return loss.data, x.grad, E.grad
    with kernels.using("fast"):
        fused = loss_and_grads(lambda x, E: fast_functional.lm_head_cross_entropy(x, E, targets))
        composed = loss_and_grads(lambda x, E: mg.functional.cross_entropy(mg.functional.lm_head(x, E), targets))
    for a, b in zip(fused, composed):
        np.testing.assert_array_equal(a, b)
