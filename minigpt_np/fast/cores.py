"""Two micro-batches at once, one per core: the data parallelism of a training step.

NumPy runs each elementwise pass (GELU, a softmax, LayerNorm) on one core, while its BLAS spreads each matrix
product over all of them; on two cores one core idles through every elementwise pass. A step on a batch is also a
sum of steps on its parts (`fast.pretrain`), so the two parts can run at the same time, each a whole forward and
backward on a core of its own (on more cores, on half of them), with the BLAS held to that share inside each. NumPy
lets go of the interpreter lock inside every pass and every product, so both cores are busy with elementwise work
and products alike; only the autograd's Python bookkeeping takes turns.

`on_two_cores(first, second)` runs the two parts; `blas_threads(n)` sets the BLAS's thread count for a while,
through threadpoolctl, which knows the OpenBLAS that NumPy's wheels bundle, and MKL, BLIS and Accelerate. Where it
finds no BLAS whose threads it can set, the BLAS is left as it is and the parts run one after the other. Rounding
does not depend on whether the parts ran at once: each is computed alone, and their gradients are added in a fixed
order. It does depend on the BLAS's thread count, as any matrix product does: OpenBLAS on 1 and on 2 threads rounds
some products differently (measured).
"""
import contextlib
import os
from concurrent.futures import ThreadPoolExecutor

from threadpoolctl import ThreadpoolController

_helper = {"pool": None, "pid": None}
_blas = {}


def cores():
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def blas():
    """threadpoolctl's controller of the BLAS libraries this process has loaded (NumPy's), found once."""
    if "controller" not in _blas:
        _blas["controller"] = ThreadpoolController().select(user_api="blas")
    return _blas["controller"]


def on_two_cores(first, second):
    """(first(), second()): second on a helper thread while first runs on the caller's, each with the BLAS on half
    the cores, if there are two or more and the BLAS's threads can be set; otherwise one after the other. An
    exception in either is raised here, after both have finished."""
    if cores() < 2 or not blas().lib_controllers:
        return first(), second()
    with blas_threads(max(1, cores() // 2)):
        pending = _pool().submit(second)
        try:
            result = first()
        finally:
            other = pending.result()       # waits for the helper even when first failed: it shares the weights
        return result, other


@contextlib.contextmanager
def blas_threads(n):
    """Within the block, the BLAS uses n threads per product (then its previous count); a no-op without one."""
    with blas().limit(limits=n):
        yield


def _pool():
    """One helper thread, started on first use, and again in a forked child (which inherits none)."""
    if _helper["pid"] != os.getpid():
        _helper["pool"], _helper["pid"] = ThreadPoolExecutor(1, thread_name_prefix="minigpt_np_core"), os.getpid()
    return _helper["pool"]
