"""Every link in docs/*.md (and README.md) resolves: linked files exist, and every code link names a function,
class or method that the linked file really defines.

A code link is a markdown link whose text is `path::name` in backticks and whose target is the same file, relative
to the document:  [`ppo_np/core.py::ppo_loss`](../ppo_np/core.py).  `path` is relative to the repository root;
`name` is a module-level function or class, or `Class.method`. Definitions are found by parsing the file with
`ast`, so a name that only appears in a comment or a string does not count. Plain relative links [text](path)
must point at an existing file or folder, and a `#anchor` into a markdown file must match one of its headings.
Links inside fenced code blocks or inline code spans, and external links (http:, mailto:, ...), are not checked.
"""
import ast
import dataclasses
import functools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# [text](target) or ![alt](target), with an optional "title"; the text may hold `code` and one level of [brackets]
LINK = re.compile(r"!?\[((?:[^\[\]\\]|\\.|\[[^\[\]]*\])*)\]\(\s*<?([^()\s<>]*)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[([^\]]+)\]:\s*<?([^\s<>]+)>?")
CODE_LINK_TEXT = re.compile(r"^`([^`\s]+?)::([A-Za-z_][\w.]*)`$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


@dataclasses.dataclass
class Link:
    line: int       # 1-based line number in the document
    text: str       # the link text, e.g. `ppo_np/core.py::ppo_loss`
    target: str     # the link target as written, e.g. ../ppo_np/core.py


def doc_lines_outside_fences(text):
    """(line number, line) for every line not inside a fenced code block."""
    fence = None
    for number, line in enumerate(text.splitlines(), start=1):
        opening = FENCE.match(line)
        if fence is None and opening:
            fence = opening.group(1)[0] * 3
            continue
        if fence is not None:
            if line.strip().startswith(fence):
                fence = None
            continue
        yield number, line


def find_links(text):
    """Every inline link and reference definition outside code blocks and code spans -> list of Link."""
    links = []
    for number, line in doc_lines_outside_fences(text):
        definition = REFERENCE_DEFINITION.match(line)
        if definition:
            links.append(Link(number, definition.group(1), definition.group(2)))
            continue
        spans = [m.span() for m in CODE_SPAN.finditer(line)]
        for m in LINK.finditer(line):
            start = m.start()
            if any(a < start < b for a, b in spans):
                continue                        # e.g. `[x](y)` written as code
            links.append(Link(number, m.group(1), m.group(2)))
    return links


def github_slug(heading):
    """The anchor GitHub gives a heading: link markup dropped, lower case, punctuation removed, spaces -> '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


@functools.lru_cache(maxsize=None)
def anchors_of(path):
    """All heading anchors of a markdown file, with GitHub's -1, -2 suffixes for repeated headings."""
    anchors, seen = set(), {}
    for _, line in doc_lines_outside_fences(Path(path).read_text(encoding="utf-8")):
        m = HEADING.match(line)
        if m:
            slug = github_slug(m.group(1))
            count = seen.get(slug, 0)
            anchors.add(slug if count == 0 else f"{slug}-{count}")
            seen[slug] = count + 1
    return anchors


@functools.lru_cache(maxsize=None)
def defined_names(path):
    """Dotted names a Python file defines: module-level functions and classes, and Class.method (nested classes too)."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"), filename=str(path))
    names = set()

    def visit(body, prefix):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(prefix + node.name)
                if isinstance(node, ast.ClassDef):
                    visit(node.body, prefix + node.name + ".")
    visit(tree.body, "")
    return frozenset(names)


def _inside(path, root):
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def check_doc(doc, root=ROOT):
    """Every broken link of one markdown file -> list of "doc:line: [text](target): what is wrong"."""
    doc, root = Path(doc).resolve(), Path(root).resolve()
    problems = []

    def report(link, why):
        problems.append(f"{doc.relative_to(root)}:{link.line}: [{link.text}]({link.target}): {why}")

    for link in find_links(doc.read_text(encoding="utf-8")):
        target, _, anchor = link.target.partition("#")
        code = CODE_LINK_TEXT.match(link.text.strip())
        if EXTERNAL.match(link.target):
            if code:
                report(link, "a code link must point at a file of this repository, not a URL")
            continue
        resolved = (doc.parent / target).resolve() if target else doc
        if not _inside(resolved, root):
            report(link, f"points outside the repository ({resolved})")
            continue
        if not resolved.exists():
            report(link, f"file {resolved.relative_to(root)} does not exist")
            continue
        if code:
            path_text, name = code.groups()
            named = (root / path_text).resolve()
            if named != resolved:
                report(link, f"the text names {path_text} but the link goes to {resolved.relative_to(root)}")
                continue
            if named.suffix != ".py" or not named.is_file():
                report(link, f"{path_text} is not a Python file, so it cannot define {name}")
                continue
            try:
                names = defined_names(named)
            except SyntaxError as err:
                report(link, f"{path_text} does not parse: {err}")
                continue
            if name not in names:
                kind = "method" if "." in name else "function or class"
                report(link, f"{path_text} defines no {kind} {name}")
            continue
        if anchor and resolved.suffix == ".md" and resolved.is_file() and anchor not in anchors_of(resolved):
            report(link, f"{resolved.relative_to(root)} has no heading with anchor #{anchor}")
    return problems


def documents(root=ROOT):
    docs = sorted((root / "docs").glob("**/*.md"))
    readme = root / "README.md"
    return docs + ([readme] if readme.exists() else [])


# ------------------------------------------------------------------------------------------------------------ tests
def test_every_docs_link_points_at_an_existing_file_and_definition():
    problems = [p for doc in documents() for p in check_doc(doc)]
    assert not problems, f"{len(problems)} broken link(s):\n" + "\n".join(problems)


def test_the_dissection_links_its_equations_to_code():
    """Guards against a vacuous pass: both docs exist and carry many code links, all in the checked form."""
    for name, minimum in (("ppo.md", 30), ("gpt.md", 20)):
        doc = ROOT / "docs" / name
        assert doc.exists(), f"docs/{name} is missing"
        code_links = [link for link in find_links(doc.read_text(encoding="utf-8"))
                      if CODE_LINK_TEXT.match(link.text.strip())]
        assert len(code_links) >= minimum, f"docs/{name} has {len(code_links)} code links, expected >= {minimum}"


def test_checker_reports_every_kind_of_broken_link_with_its_line(tmp_path):
    """Negative control: a document with one broken link of each kind; each is reported at its own line."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text(
        "# def ghost(): a comment is not a definition\n"
        "NOTE = 'class Phantom: neither is a string'\n"
        "X = 1\n"
        "def f():\n"
        "    def inner():\n"
        "        pass\n"
        "class C:\n"
        "    def m(self):\n"
        "        pass\n"
        "    class Inner:\n"
        "        def deep(self):\n"
        "            pass\n")
    (tmp_path / "pkg" / "notes.txt").write_text("not python\n")
    (tmp_path / "docs").mkdir()
    doc = tmp_path / "docs" / "doc.md"
    lines = [
        "# A title",                                                                    # 1
        "[`pkg/mod.py::f`](../pkg/mod.py), [`pkg/mod.py::C.m`](../pkg/mod.py) are fine", # 2
        "[`pkg/mod.py::C.Inner.deep`](../pkg/mod.py) and [the title](#a-title) too",    # 3
        "[`pkg/mod.py::g`](../pkg/mod.py)",                                             # 4 no such function
        "[`pkg/mod.py::C.n`](../pkg/mod.py)",                                           # 5 no such method
        "[`pkg/mod.py::C.f`](../pkg/mod.py)",                                           # 6 f is not C's method
        "[`pkg/gone.py::f`](../pkg/gone.py)",                                           # 7 no such file
        "[`pkg/mod.py::f`](../pkg/notes.txt)",                                          # 8 target is another file
        "[notes](missing.md)",                                                          # 9 plain link, no file
        "[`pkg/mod.py::ghost`](../pkg/mod.py) [`pkg/mod.py::Phantom`](../pkg/mod.py)",  # 10 only in comment/string
        "[`pkg/mod.py::inner`](../pkg/mod.py)",                                         # 11 nested, not module level
        "[`pkg/mod.py::X`](../pkg/mod.py)",                                             # 12 a variable, not a def
        "[elsewhere](#no-such-heading)",                                                # 13 missing anchor
        "```",                                                                          # 14
        "[`pkg/mod.py::zzz`](../pkg/mod.py)",                                           # 15 inside a code block
        "```",                                                                          # 16
        "`[x](nope.md)` and [web](https://example.com/nope)",                           # 17 code span, external
        "[out](../../outside.md)",                                                      # 18 outside the repository
        "[`pkg/notes.txt::f`](../pkg/notes.txt)",                                       # 19 not a Python file
    ]
    doc.write_text("\n".join(lines) + "\n")
    problems = check_doc(doc, root=tmp_path)
    print("\n".join(problems))
    reported = sorted(int(p.split(":")[1]) for p in problems)
    assert reported == [4, 5, 6, 7, 8, 9, 10, 10, 11, 12, 13, 18, 19], reported
    assert all(p.startswith("docs/doc.md:") for p in problems)
    by_line = {int(p.split(":")[1]): p for p in problems}
    assert "defines no function or class g" in by_line[4]
    assert "defines no method C.n" in by_line[5]
    assert "does not exist" in by_line[7] and "does not exist" in by_line[9]
    assert "the text names pkg/mod.py" in by_line[8]
    assert "#no-such-heading" in by_line[13]


def test_github_slugs_of_headings():
    assert github_slug("7. The clipped value loss (`vf_coef`, the 0.5)") == "7-the-clipped-value-loss-vf_coef-the-05"
    assert github_slug("Stop at [eos](x.md)!") == "stop-at-eos"
