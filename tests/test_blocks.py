"""`blocks.in_row_blocks` visits every row exactly once, in blocks of about BLOCK_BYTES, from THREADS threads."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from minigpt_np import blocks


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
    code = "from minigpt_np import blocks; print(blocks.threads())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == expected


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_thread_count_in_the_environment_is_refused_with_a_clear_message(value):
    env = dict(os.environ, MINIGPT_NP_THREADS=value)
    code = "import numpy as np, minigpt_np as mg; mg.ops.gelu_forward(np.zeros((64, 8192), np.float32))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode != 0
    assert "MINIGPT_NP_THREADS must be a whole number >= 1" in done.stderr
