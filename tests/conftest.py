"""Make the project importable from a source checkout, and keep BLAS to one thread in tests.

The tests use tiny matrices, where a second OpenBLAS thread only adds synchronisation; on a busy machine it
made some test files 10x slower. Set before numpy is first imported; an explicit setting wins.
"""
import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
