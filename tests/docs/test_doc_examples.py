"""Every Python block of README.md and docs/*.md runs as written, or stands word for word in the file it quotes.

A block is one of two things:
- an example: self-contained, it builds its own inputs and runs in seconds; each runs here in a fresh interpreter,
  from an empty folder;
- an excerpt of a module, marked by the line before its fence, `<!-- excerpt: ppo_np/core.py -->`: its words, in
  order, must stand in that file (indentation and line breaks aside).
The negative controls: a block that uses `idx` and `targets` without making them fails to run; an excerpt with one
word changed is not found.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXCERPT = re.compile(r"^<!-- excerpt: (\S+) -->$")


def python_blocks(doc):
    """[(line of the fence, source, the file it quotes or None)] of every ```python block of a markdown file."""
    lines = Path(doc).read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            marker = EXCERPT.match(lines[i - 1].strip()) if i else None
            blocks.append((i + 1, "\n".join(lines[i + 1:end]) + "\n", marker.group(1) if marker else None))
            i = end
        i += 1
    return blocks


def documents():
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def all_blocks():
    return [(doc, *block) for doc in documents() for block in python_blocks(doc)]


def block_id(block):
    doc, line, _, quoted = block
    return f"{doc.relative_to(ROOT)}:{line}" + (f" (excerpt of {quoted})" if quoted else "")


def stands_in(excerpt, file):
    """Do the excerpt's words stand, in order and contiguous, in the file?"""
    words, text = excerpt.split(), Path(file).read_text(encoding="utf-8").split()
    n = len(words)
    return n > 0 and any(text[i:i + n] == words for i in range(len(text) - n + 1) if text[i] == words[0])


def run_example(source, folder):
    """Run a block in a fresh interpreter, in `folder`, with the checkout importable -> CompletedProcess."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", source], cwd=folder, capture_output=True, text=True, timeout=300,
                          env=env)


EXAMPLES = [b for b in all_blocks() if b[3] is None]
EXCERPTS = [b for b in all_blocks() if b[3] is not None]


def test_the_docs_hold_examples_and_excerpts():
    """Guards against a vacuous pass: the tutorial's examples and the methods' excerpts are found."""
    assert len(EXAMPLES) >= 3 and len(EXCERPTS) >= 6, ([block_id(b) for b in EXAMPLES], len(EXCERPTS))


@pytest.mark.parametrize("block", EXAMPLES, ids=block_id)
def test_every_example_runs_as_written(block, tmp_path):
    done = run_example(block[2], tmp_path)
    assert done.returncode == 0, f"{block_id(block)} failed:\n{done.stderr[-3000:]}"


@pytest.mark.parametrize("block", EXCERPTS, ids=block_id)
def test_every_excerpt_stands_word_for_word_in_its_file(block):
    quoted = ROOT / block[3]
    assert quoted.is_file(), f"{block_id(block)}: {block[3]} is no file of the project"
    assert stands_in(block[2], quoted), f"{block_id(block)} is not in {block[3]} word for word:\n{block[2]}"


def test_an_example_that_uses_what_it_never_made_fails(tmp_path):
    """Negative control: a pretraining block that never makes idx and targets."""
    old = ("import numpy as np, minigpt_np as mg\n"
           "cfg = mg.GPTConfig(vocab_size=4096, block_size=64, n_layer=4, n_head=4, n_embd=128)\n"
           "model = mg.GPT(cfg, dtype=np.float32, seed=0)\n"
           "logits = model(idx)\n"
           "loss = mg.functional.cross_entropy(logits, targets)\n")
    done = run_example(old, tmp_path)
    assert done.returncode != 0 and "NameError: name 'idx' is not defined" in done.stderr, done.stderr


def test_an_excerpt_with_one_word_changed_is_not_found():
    """Negative control: a real excerpt is found; with one word changed, or its lines out of order, it is not."""
    source, quoted = EXCERPTS[0][2], ROOT / EXCERPTS[0][3]
    assert stands_in(source, quoted)
    words = source.split()
    assert not stands_in(" ".join(words[:-1] + [words[-1] + "x"]), quoted)
    lines = source.strip().splitlines()
    if len(lines) > 1:
        assert not stands_in("\n".join(lines[::-1]), quoted)


def test_the_blocks_are_found_with_their_markers(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("# x\n\n```python\nprint(1)\n```\n\n<!-- excerpt: ppo_np/core.py -->\n```python\ndef whiten(\n```\n"
                   "\n```bash\nls\n```\n")
    assert python_blocks(doc) == [(3, "print(1)\n", None), (8, "def whiten(\n", "ppo_np/core.py")]
