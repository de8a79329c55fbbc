"""Elementwise work in row blocks: each block small enough for a core's cache, the blocks shared among the cores.

An elementwise expression (GELU, a softmax, LayerNorm, an AdamW update) is several NumPy passes over its arrays.
Over a whole activation every pass streams it through memory; over a block of rows that fits in the cache only
the first one does. And NumPy runs each pass on one core, while the matrix products beside it use them all. The
blocks are independent, and NumPy lets go of the interpreter lock inside each pass, so several threads can work
on different blocks at once.

`in_row_blocks(fn, *arrays)` does both: it cuts the arrays into blocks of about BLOCK_BYTES along their first axis
and calls fn on each block from THREADS threads (the caller's own and THREADS - 1 helpers, which take the next
block as they finish one; the caller waits only for blocks a helper has started, never for a helper that has not
been given a core yet). Every block is computed exactly as it would be alone, so the results depend neither
on the block size nor on the thread count (tested).

The thread count is 1 unless the environment variable MINIGPT_NP_THREADS or a program (THREADS) asks for more:
a helper has to be woken, and wait for a core, hundreds of times a step, and each op waits for its slowest block,
which made a pretraining step slower on two cores (measured; docs/gpt.md, "The fast kernels").
"""
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

BLOCK_BYTES = 2 ** 18          # about 256 KB of the widest array per block: a few such blocks fit in a core's cache
THREADS = None                 # threads for the blocks; None: MINIGPT_NP_THREADS, or else 1 (`threads`)


def threads():
    """The threads `in_row_blocks` uses: THREADS if set, else MINIGPT_NP_THREADS, else 1.

    The environment is read on first use, so a bad value is refused where the work starts, as a ValueError.
    """
    return THREADS or _threads_from_environment()


@functools.lru_cache(maxsize=None)
def _threads_from_environment():
    value = os.environ.get("MINIGPT_NP_THREADS", "")
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"MINIGPT_NP_THREADS must be a whole number >= 1 (threads for the elementwise ops), "
                             f"got {value!r}; unset it for one thread")
        return int(value)
    return 1


_helpers = {"pool": None, "key": None}


def in_row_blocks(fn, *arrays):
    """fn(*blocks) for consecutive blocks of rows arrays[i:j], the same rows of every array, ~BLOCK_BYTES each.

    The arrays share their first axis, except that an array whose first axis has length 1 goes whole to every
    block (as broadcasting would use it). Outputs among them must be arrays the caller allocated: the blocks are
    views, and fn writes into them in place. Arrays that make one block (a token of generation) go to fn as they are.
    """
    n_rows, widest = len(arrays[0]), max([a.nbytes for a in arrays])
    if widest <= BLOCK_BYTES or n_rows == 1:
        fn(*arrays)
        return
    step = max(1, BLOCK_BYTES // (widest // n_rows))
    starts = iter(range(0, n_rows, step))      # shared: each thread takes the next block (atomic under the GIL)
    progress = {"left": -(-n_rows // step), "errors": []}
    lock, all_done = threading.Lock(), threading.Event()

    def work():
        for start in starts:
            try:
                fn(*(a[start:start + step] if len(a) == n_rows else a for a in arrays))
            except BaseException as e:  # noqa: BLE001 - handed to the caller below
                progress["errors"].append(e)
            with lock:
                progress["left"] -= 1
                if progress["left"] == 0:
                    all_done.set()
    n_threads = threads()
    for _ in range(min(n_threads, progress["left"]) - 1):
        _pool(n_threads).submit(work)
    work()
    all_done.wait()              # for the blocks a helper is still computing; a helper that came late found none
    if progress["errors"]:
        raise progress["errors"][0]


def _pool(n_threads):
    """n_threads - 1 helper threads, started on first use, and again when the count changes or in a forked child
    (which inherits none of them)."""
    if _helpers["key"] != (os.getpid(), n_threads):
        if _helpers["pool"] is not None and _helpers["key"][0] == os.getpid():
            _helpers["pool"].shutdown(wait=False)
        _helpers["pool"] = ThreadPoolExecutor(max(1, n_threads - 1), thread_name_prefix="minigpt_np")
        _helpers["key"] = (os.getpid(), n_threads)
    return _helpers["pool"]
