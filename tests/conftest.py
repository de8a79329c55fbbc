"""Make the project importable when the tests run from a source checkout without `pip install -e .`."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
