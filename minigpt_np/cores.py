"""Two micro-batches at once, one per core: the data parallelism of a training step.

NumPy runs each elementwise pass (GELU, a softmax, LayerNorm) on one core, while its BLAS spreads each matrix
product over all of them; on two cores one core idles through every elementwise pass. A step on a batch is also a
sum of steps on its parts: with micro-batches of n_1 and n_2 target tokens, n = n_1 + n_2,

    L = (n_1 L_1 + n_2 L_2) / n,        dL/dtheta = (n_1 / n) dL_1/dtheta + (n_2 / n) dL_2/dtheta

so the two parts can run at the same time, each a whole forward and backward on a core of its own (on more cores,
on half of them), with the BLAS held to that share inside each. NumPy lets go of the interpreter lock inside every pass and every product, so both
cores are busy with elementwise work and products alike; only the autograd's Python bookkeeping takes turns.

`on_two_cores(first, second)` runs the two parts; `blas_threads(n)` sets the BLAS's thread count for a while.
The BLAS's thread count is a setting of the whole process, reached through the OpenBLAS library that NumPy's
wheels ship (`_openblas`); where that is not found (NumPy built against MKL or Accelerate), the BLAS is left as
it is and the parts run one after the other. Rounding does not depend on whether the parts ran at once: each
is computed alone, and their gradients are added in a fixed order. It does depend on the BLAS's thread count, as
any matrix product does: OpenBLAS on 1 and on 2 threads rounds some products differently (measured).
"""
import contextlib
import ctypes
import glob
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

_helper = {"pool": None, "pid": None}


def cores():
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def on_two_cores(first, second):
    """(first(), second()): second on a helper thread while first runs on the caller's, each with the BLAS on half
    the cores, if there are two or more and the BLAS's threads can be set; otherwise one after the other. An
    exception in either is raised here, after both have finished."""
    if cores() < 2 or _openblas() is None:
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
    """Within the block, OpenBLAS uses n threads per product (then its previous count); a no-op without OpenBLAS."""
    lib = _openblas()
    if lib is None:
        yield
        return
    previous = lib.get()
    lib.set(n)
    try:
        yield
    finally:
        lib.set(previous)


class _OpenBLAS:
    def __init__(self, library, suffix):
        self._get = getattr(library, f"{suffix[0]}get_num_threads{suffix[1]}")
        self._set = getattr(library, f"{suffix[0]}set_num_threads{suffix[1]}")
        self._get.restype = ctypes.c_int
        self._set.argtypes = [ctypes.c_int]

    def get(self):
        return self._get()

    def set(self, n):
        self._set(n)


_found = {}


def _openblas():
    """The thread-count functions of the OpenBLAS that NumPy loaded (its wheels ship it beside the package, as
    scipy-openblas with prefixed names), or None."""
    if "lib" not in _found:
        _found["lib"] = None
        here = os.path.dirname(np.__file__)
        for path in sorted(glob.glob(os.path.join(here, os.pardir, "numpy.libs", "*openblas*"))
                           + glob.glob(os.path.join(here, ".dylibs", "*openblas*"))):
            library = ctypes.CDLL(path)
            for suffix in (("scipy_openblas_", "64_"), ("scipy_openblas_", ""), ("openblas_", "64_"),
                           ("openblas_", "")):
                if hasattr(library, f"{suffix[0]}set_num_threads{suffix[1]}"):
                    _found["lib"] = _OpenBLAS(library, suffix)
                    return _found["lib"]
    return _found["lib"]


def _pool():
    """One helper thread, started on first use, and again in a forked child (which inherits none)."""
    if _helper["pid"] != os.getpid():
        _helper["pool"], _helper["pid"] = ThreadPoolExecutor(1, thread_name_prefix="minigpt_np_core"), os.getpid()
    return _helper["pool"]
