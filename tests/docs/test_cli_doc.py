"""docs/cli.md is what `python scripts/cli_doc.py` writes from the commands' own parsers: every command and option,
with the default its config row gives it. The negative control changes a default in the config and finds the page
out of date."""
import dataclasses
import importlib.util
from pathlib import Path

import pytest

from minichatgpt.settings import config

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("cli_doc", ROOT / "scripts" / "cli_doc.py")
cli_doc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cli_doc)


@pytest.fixture(scope="module")
def page():
    return cli_doc.page()


def test_docs_cli_md_is_what_cli_doc_writes(page):
    written, current = page, (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert current == written, "docs/cli.md is out of date: run python scripts/cli_doc.py"


def test_every_console_script_and_every_option_of_the_main_job_is_on_the_page(page):
    scripts = [name for name, _ in cli_doc.console_scripts()]
    assert len(scripts) >= 7 and all(f"## `{name}`" in page for name in scripts), scripts
    main_job = page.split("## `minichatgpt`")[1].split("\n## ")[0]
    missing = [o.flag for o in config.run_options() if f"`{o.flag}" not in main_job]
    assert not missing, missing


def test_a_changed_default_makes_the_page_out_of_date(page, monkeypatch):
    """Negative control: the main job's lr, changed in the config, changes its row and nothing else."""
    before = page
    monkeypatch.setattr(config, "PPO", dataclasses.replace(config.PPO, lr=3e-4))
    after = cli_doc.page()
    changed = [line for line in after.splitlines() if line not in before.splitlines()]
    print("\n".join(changed))
    assert changed and all(line.startswith("| `--lr LR` | 0.0003 |") for line in changed), changed


def test_the_catching_leaves_argparse_and_the_environment_as_they_were(monkeypatch):
    import argparse
    import os
    monkeypatch.setenv("MINICHATGPT_CACHE", "/somewhere")
    parse = argparse.ArgumentParser.parse_args
    cli_doc.commands()
    assert argparse.ArgumentParser.parse_args is parse and os.environ["MINICHATGPT_CACHE"] == "/somewhere"
