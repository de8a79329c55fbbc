"""Make the project importable from a source checkout, and keep BLAS to one thread in tests; and the tiny runs the
tests share. The tests mirror the packages: engine/ (minigpt_np), methods/ (ppo_np), reward/, app/ (minichatgpt) and
docs/.

The tests use tiny matrices, where a second OpenBLAS thread only adds synchronisation; on a busy machine it
made some test files 10x slower. Set before numpy is first imported; an explicit setting wins.
"""
import os
import sys

import pytest

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
TESTS = os.path.dirname(os.path.abspath(__file__))
# the project, the shared helpers beside this file (tiny_run, gradcheck, ...), and each folder's modules, which a
# few tests of another folder import (test_docs_numbers' quotes, test_export's layout helpers)
sys.path[:0] = [os.path.dirname(TESTS), TESTS,
                *(os.path.join(TESTS, folder) for folder in ("engine", "methods", "reward", "app", "docs"))]


@pytest.fixture(scope="session")
def built_runs(tmp_path_factory):
    """Finished tiny runs built once per pytest run, by their extra flags (tiny_run.Built); copy one to change it."""
    from tiny_run import Built
    return Built(tmp_path_factory.mktemp("built"))


@pytest.fixture(autouse=True)
def kernels_left_as_found():
    """Every test ends on the engine's default kernels, the reference: a test, or a command it ran, that left the
    fast ones in use would change what every later test computes, so it fails (and the default is put back)."""
    yield
    import minigpt_np as mg
    left = mg.kernels.in_use()
    mg.kernels.use("reference")
    assert left == "reference", f"the test left the {left} kernels in use"
