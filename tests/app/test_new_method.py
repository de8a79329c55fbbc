"""A method is one module and one registry entry: a toy method defined outside the package (toy_method.py), added
to ppo_np.METHODS in this process only, runs through every command as the built-in methods do, with no file of
minichatgpt/ naming it: the main job, the refusal of another method's option, its own option recorded, the
comparison, and its report (curves, tokens view, samples). docs/methods.md, section 7, lists what its module
declares; the last test holds that list to the Method record."""
import json
import re

import pytest

import ppo_np
from minichatgpt.commands import cli
from toy_method import SIGN

from tiny_run import assert_one_line_refusal, fixture_corpus, run_cli, tiny_args

COMPARE = ["--budget", "32", "--batch-size", "8", "--eval-prompts", "2", "--eval-every", "2", "--quiet"]


@pytest.fixture
def corpus(tmp_path):
    return fixture_corpus(tmp_path / "reviews.csv")


def test_an_unregistered_method_is_refused(tmp_path, capsys, corpus):
    """The negative control: without its registry entry the application knows no such method."""
    status, err = run_cli(capsys, tiny_args(tmp_path, "toy", corpus, "--method", "sign"))
    assert_one_line_refusal(status, err, 2, "--method", "'sign'")
    status, err = run_cli(capsys, tiny_args(tmp_path, "toy", corpus, "--sign-scale", "2"))
    assert_one_line_refusal(status, err, 2, "--sign-scale")
    assert not (tmp_path / "runs").exists()


def test_a_registered_method_runs_the_main_job_compare_and_its_report(tmp_path, monkeypatch, capsys, corpus):
    monkeypatch.setitem(ppo_np.METHODS, "sign", SIGN)

    # another method's option, and a shared option it does not read, are refused before anything is written
    status, err = run_cli(capsys, tiny_args(tmp_path, "toy", corpus, "--method", "sign", "--init-kl-coef", "0.3"))
    assert_one_line_refusal(status, err, 2, "--init-kl-coef 0.3 shapes --method ppo only")
    status, err = run_cli(capsys, tiny_args(tmp_path, "toy", corpus, "--method", "sign", "--ppo-epochs", "2"))
    assert_one_line_refusal(status, err, 2, "--ppo-epochs 2 changes nothing with --method sign")
    status, err = run_cli(capsys, tiny_args(tmp_path, "toy", corpus, "--sign-scale", "2"))
    assert_one_line_refusal(status, err, 2, "--sign-scale 2.0 shapes --method sign only")
    status, err = run_cli(capsys, tiny_args(tmp_path, "toy", corpus, "--method", "sign", "--sign-scale", "0"))
    assert_one_line_refusal(status, err, 2, "--sign-scale 0.0 is out of range", "> 0")
    assert not (tmp_path / "runs").exists()

    # the main job, with its own option recorded by its flag
    status, err = run_cli(capsys, tiny_args(tmp_path, "toy", corpus, "--method", "sign", "--sign-scale", "2"))
    assert status == 0, err
    run_dir = tmp_path / "runs" / "toy"
    record = json.loads((run_dir / "manifest.json").read_text())["stages"]["sign"]["built_from"]
    assert record["--sign-scale"] == 2.0 and "--ppo-epochs" not in record and "--init-kl-coef" not in record
    log = [json.loads(line) for line in (run_dir / "sign_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and "sign/loss/policy" in log[0] and "sign/mean_scores" in log[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["method"] == "sign" and summary["config"]["methods"]["sign_scale"] == 2.0
    assert (run_dir / "gpt_sign.npz").exists() and (run_dir / "curves.png").stat().st_size > 10000
    assert "after SIGN (policy)" in (run_dir / "samples.md").read_text()
    view = (run_dir / "tokens.html").read_text()
    assert "the SIGN policy" in view and "the sign of the response's score, times 2.0, on every token" in view

    # run again: every stage done already
    capsys.readouterr()
    cli.main(tiny_args(tmp_path, "toy", corpus, "--method", "sign", "--sign-scale", "2"))
    out = capsys.readouterr().out
    assert "toy/ was done already" in out, out

    # the comparison takes it beside the others, with the same budget
    status, err = run_cli(capsys, ["--name", "toy", "--runs-dir", str(tmp_path / "runs"), *COMPARE],
                          main=cli.compare_main)
    assert status == 0, err
    results = json.loads((run_dir / "compare.json").read_text())
    assert list(results["methods"]) == ["ppo", "rloo", "grpo", "reinforce", "sign", "dpo", "best_of_n"]
    assert results["methods"]["sign"]["label"] == "SIGN" and results["methods"]["sign"]["generated"] == 32
    assert results["methods"]["sign"]["config"]["scale"] == 1.0 and results["settings"]["sign_scale"] == 1.0
    assert " SIGN |" in (run_dir / "compare.md").read_text()


def test_section_7_lists_every_field_a_methods_module_declares():
    """docs/methods.md, section 7, names each field of the Method record, in a table a new method's author reads."""
    from test_docs_numbers import ROOT
    import dataclasses
    text = (ROOT / "docs" / "methods.md").read_text()
    section = text[text.index("## 7. Adding a method"):text.index("## 8. One comparison")]
    first_cells = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    named = {name for cell in first_cells for name in re.findall(r"`(\w+)`", cell)}
    fields = {f.name for f in dataclasses.fields(ppo_np.Method)}
    assert named == fields, f"missing {sorted(fields - named)}, not fields {sorted(named - fields)}"
