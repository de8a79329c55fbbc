"""docs/cli.md, written from each command's own parser: every command, every option, its default and its help.

    python scripts/cli_doc.py            # write docs/cli.md
    python scripts/cli_doc.py --check    # exit status 1 if docs/cli.md is not what it would write

The commands are the console scripts pyproject.toml installs and the scripts under scripts/ that a reader runs. Each
is called as its reader would call it, and its parser is caught where it parses the command line, before any work:
so the page shows the options a command really takes, with the defaults its config rows give them, however the
parser is built. tests/docs/test_cli_doc.py checks that docs/cli.md is current.
"""
import argparse
import contextlib
import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "cli.md"
SCRIPTS = ["scripts/results.py", "scripts/sweep.py", "scripts/rlhf_one_file.py", "scripts/bench.py",
           "scripts/bench_ppo.py"]

HEADER = """# Every command and option

This page is written by `python scripts/cli_doc.py` from the commands' own parsers; do not edit it by hand. The
defaults of the main job's options are the config dataclasses of
[`minichatgpt/settings/config.py`](../minichatgpt/settings/config.py), one row per option (its flag, field, bounds
and help), and the other commands' rows are there too; each method's own options are rows its module in
[`ppo_np/`](../ppo_np/__init__.py) declares, with their defaults. Every command also takes `--help`. A refusal is one
line on stderr ([troubleshooting.md](troubleshooting.md)).
"""


class Caught(BaseException):
    """Raised in place of parsing: carries the parser a command built (BaseException, so no handler keeps it)."""

    def __init__(self, parser):
        super().__init__()
        self.parser = parser


@contextlib.contextmanager
def catching_parsers():
    """argparse parsers raise Caught(parser) instead of parsing, with no cache folder set in the environment, so
    that defaults built from it show as a reader's would."""
    original = argparse.ArgumentParser.parse_args
    saved = {key: os.environ.get(key) for key in ("MINICHATGPT_CACHE", "XDG_CACHE_HOME")}

    def caught(self, args=None, namespace=None):
        raise Caught(self)

    argparse.ArgumentParser.parse_args = caught
    os.environ.pop("MINICHATGPT_CACHE", None)
    os.environ.pop("XDG_CACHE_HOME", None)
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = original
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def console_scripts(pyproject=ROOT / "pyproject.toml"):
    """[(name, "module:function")] of pyproject.toml's [project.scripts], in its order."""
    text = pyproject.read_text(encoding="utf-8")
    section = re.search(r"^\[project\.scripts\]\n(.*?)(?=^\[|\Z)", text, re.S | re.M).group(1)
    return re.findall(r'^([\w-]+)\s*=\s*"([\w.]+:\w+)"', section, re.M)


def parser_of(call):
    """The parser call() builds before it parses -> ArgumentParser."""
    with catching_parsers():
        try:
            call()
        except Caught as caught:
            return caught.parser
    raise RuntimeError(f"{call} returned without parsing a command line")


def script_main(script):
    """The main function of a script under scripts/, imported as a module (not run)."""
    name = "cli_doc_" + Path(script).stem
    spec = importlib.util.spec_from_file_location(name, ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def commands():
    """[(how a reader types the command, its parser)]: the console scripts, then the scripts."""
    found = []
    for name, target in console_scripts():
        module, function = target.split(":")
        main = getattr(importlib.import_module(module), function)
        found.append((name, parser_of(lambda: main([]))))
    for script in SCRIPTS:
        main = script_main(script)
        found.append((f"python {script}", parser_of(lambda: main([]))))
    return found


def default_of(action):
    """An option's default as the page shows it."""
    if isinstance(action, argparse.BooleanOptionalAction) or isinstance(action, (argparse._StoreTrueAction,
                                                                                 argparse._StoreFalseAction)):
        return "on" if action.default else "off"
    if action.default is None:
        return "none"
    if isinstance(action.default, (list, tuple)):
        return " ".join(map(str, action.default))
    return str(action.default)


def help_of(action):
    """The help text, without a "(default: ...)" that says what the default column says, with the choices of a
    positional argument named."""
    text = action.help or ""
    said = f" (default: {default_of(action)})"
    if text.endswith(said):
        text = text[:-len(said)]
    if action.choices and not action.option_strings:
        text += f" ({', '.join(map(str, action.choices))})"
    return text.replace("|", "\\|")


def option_rows(parser):
    formatter = parser._get_formatter()
    rows = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, (argparse._HelpAction,
                                                                   argparse._SubParsersAction)):
            continue
        invocation = formatter._format_action_invocation(action).replace("|", "\\|")
        default = "required" if not action.option_strings and action.required else default_of(action)
        rows.append(f"| `{invocation}` | {default} | {help_of(action)} |")
    return rows


def description_of(parser):
    """The first paragraph of the parser's description, on one line."""
    return " ".join((parser.description or "").strip().split("\n\n")[0].split())


def section(title, parser, level=2):
    lines = [f"{'#' * level} `{title}`", "", description_of(parser), ""]
    rows = option_rows(parser)
    if rows:
        lines += ["| option | default | what it does |", "|---|---|---|", *rows, ""]
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for action in subparsers:
        for name, sub in action.choices.items():
            lines += section(f"{title} {name}", sub, level + 1)
    return lines


def page():
    """The text of docs/cli.md."""
    lines = [HEADER]
    for title, parser in commands():
        lines += section(title, parser)
    return "\n".join(lines).rstrip().replace(str(Path.home()), "~") + "\n"   # the reader's home, not ours


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only check that docs/cli.md is current (exit status 1 if not)")
    args = p.parse_args(argv)
    text = page()
    if args.check:
        if PAGE.read_text(encoding="utf-8") != text:
            sys.exit("docs/cli.md is not what scripts/cli_doc.py writes; run python scripts/cli_doc.py")
        return
    PAGE.write_text(text, encoding="utf-8")
    print(f"wrote {PAGE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
