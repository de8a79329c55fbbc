"""No words about how the project was made in any tracked .py, .md or .ipynb file: code and docs say what is, and
git says what was. A reader cannot tell which piece of work a number named, or which machine came first.

The phrases are written below in two parts, so that this file does not hold them whole; it is scanned like every
other file. A training run's own sessions (a resumed run) are not history, and are not refused.
"""
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HISTORY = [re.compile(pattern, re.I) for pattern in (r"\bissue" + r" \d+", r"in another" + r" session",
                                                      r"earlier" + r" machine", r"trials" + r" of")]
SUFFIXES = (".py", ".md", ".ipynb")


def tracked_files(root=ROOT):
    """The files of the checkout git does not ignore, or every file under root outside git's and caches' folders."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                                capture_output=True, check=True).stdout
        files = [root / name for name in listed.decode().split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        files = [p for p in root.rglob("*") if not {".git", ".venv", "build"} & set(p.parts)]
    return [f for f in files if f.suffix in SUFFIXES and f.is_file()]


def history_words(files, root=ROOT):
    """Every line that says how the project was made -> ["file:line: the words"]."""
    found = []
    for file in files:
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
            for pattern in HISTORY:
                match = pattern.search(line)
                if match:
                    found.append(f"{file.relative_to(root)}:{number}: {match.group(0)!r} in {line.strip()[:100]}")
    return found


def test_no_tracked_file_says_how_the_project_was_made():
    files = tracked_files()
    assert Path(__file__).resolve() in [f.resolve() for f in files], "this file is scanned too"
    assert len(files) > 100, len(files)
    found = history_words(files)
    assert not found, f"{len(found)} line(s) about how the project was made:\n" + "\n".join(found)


def test_each_phrase_is_found_in_code_docs_and_notebooks(tmp_path):
    """Negative control: one file of each kind holds one phrase each; every one is reported at its line, and a
    training run's own session is not."""
    (tmp_path / "a.py").write_text("x = 1\n# as fixed in ISSUE" + " 16\n")
    (tmp_path / "b.md").write_text("Measured in another" + " session.\nOn the earlier" + " machine it was slower.\n")
    (tmp_path / "c.ipynb").write_text('{"source": ["the hostile trials' + ' of the app"]}\n')
    (tmp_path / "d.py").write_text("tokens_per_s = 0   # this session's throughput, since the run resumed\n")
    found = history_words(sorted(tmp_path.iterdir()), root=tmp_path)
    print("\n".join(found))
    assert [f.split(":")[0] + ":" + f.split(":")[1] for f in found] == ["a.py:2", "b.md:1", "b.md:2", "c.ipynb:1"]
