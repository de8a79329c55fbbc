"""The reading path of docs/reading.md holds: it names the seven files in the order a learner reads them, each of
them exists, and the engine's reference files are free of the speed work that lives in minigpt_np/fast."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
READING = ROOT / "docs" / "reading.md"
ORDER = ["minigpt_np/tensor.py", "minigpt_np/ops.py", "minigpt_np/model.py", "scripts/rlhf_one_file.py",
         "ppo_np/core.py", "ppo_np/skeleton.py", "notebooks/ppo_step.ipynb"]
REFERENCE_FILES = ["minigpt_np/tensor.py", "minigpt_np/ops.py", "minigpt_np/functional.py", "minigpt_np/model.py",
                   "minigpt_np/optim.py", "minigpt_np/pretrain.py"]
# the speed constructs, and a timing written in a docstring or comment ("3x faster", "80 us", "12.5 ms")
SPEED_WORK = re.compile(r"in_row_blocks|\bout=|einsum|fmax|reduceat|replica|\d\s*x (?:faster|slower)|"
                        r"\b\d+(?:\.\d+)?\s*(?:ms|us|µs)\b")


def speed_work(text):
    """The lines of a source text that hold a speed construct or a timing -> [(line number, line)]."""
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if SPEED_WORK.search(line)]


def files_in_table(text):
    """The first link of every row of the table, in order -> paths relative to the repository root."""
    rows = [line for line in text.splitlines() if re.match(r"^\| \d+ \|", line)]
    return [str((READING.parent / re.search(r"\]\(([^)#]+)\)", row).group(1)).resolve().relative_to(ROOT))
            for row in rows]


def test_the_reading_path_names_the_seven_files_in_order_and_each_exists():
    listed = files_in_table(READING.read_text())
    assert listed == ORDER, f"docs/reading.md lists {listed}, expected {ORDER}"
    missing = [name for name in listed if not (ROOT / name).is_file()]
    assert not missing, f"named in docs/reading.md but missing: {missing}"


@pytest.mark.parametrize("name", REFERENCE_FILES)
def test_the_reference_engine_holds_no_speed_work(name):
    found = speed_work((ROOT / name).read_text())
    assert not found, f"{name} holds speed work a reader should not meet there: {found[:5]}"


def test_the_speed_work_check_finds_the_fast_kernels_constructs():
    """Negative control: the same check on the fast kernels finds what the reference left out."""
    found = speed_work((ROOT / "minigpt_np" / "fast" / "ops.py").read_text())
    kinds = {kind for kind in ("in_row_blocks", "out=", "einsum", "fmax", "reduceat") if any(kind in l for _, l in found)}
    assert kinds == {"in_row_blocks", "out=", "einsum", "fmax", "reduceat"}, f"the check found only {sorted(kinds)}"
    assert speed_work('"""The max runs 3x faster here (80 us against 10 us)."""'), "a timing in a docstring passed"
