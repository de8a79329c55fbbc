"""An option the run would not read, or cannot honour, is refused in one line before anything is deleted or
written, and never recorded.

- Each method declares the shared options it uses (its Method's `uses`); the others, and another method's own options,
  are refused whenever they are given, even at their defaults.
- --eval-prompts above what the corpus holds out, and a --vocab-size the corpus cannot fill, are refused (with the
  value that would do), as compare, overopt and the sweep refuse what a run cannot give.
- One batch-size hint satisfies every constraint at once; --name says the rule it applies.
"""
import json
import re
import shlex

import pytest

import ppo_np
from minichatgpt.commands import cli
from minichatgpt.settings import config
from ppo_np.skeleton import SHARED
from tiny_run import assert_one_line_refusal, fixture_corpus, run_cli, snapshot, tiny_args


@pytest.mark.parametrize("flags, fragment", [
    (["--method", "reinforce", "--ppo-epochs", "3"], "--ppo-epochs 3 changes nothing with --method reinforce"),
    (["--method", "reinforce", "--ppo-epochs", "2"], "--ppo-epochs 2 changes nothing"),       # at its default too
    (["--method", "dpo", "--init-kl-coef", "0.2"], "--init-kl-coef 0.2 shapes --method ppo only"),
    (["--method", "reinforce", "--rloo-kl-coef", "0.25"], "--rloo-kl-coef 0.25 shapes --method rloo only"),
    (["--dpo-beta", "0.5"], "--dpo-beta 0.5 shapes --method dpo only"),
    (["--no-grpo-bias-correction-kl"], "--no-grpo-bias-correction-kl shapes --method grpo only"),
    (["--method", "rloo", "--grpo-be", "0.25"], "--grpo-beta 0.25 shapes --method grpo only"),   # abbreviated
])
def test_an_option_the_method_would_not_read_is_refused_even_at_its_default(tmp_path, capsys, flags, fragment):
    status, err = run_cli(capsys, tiny_args(tmp_path, "x", fixture_corpus(tmp_path / "reviews.csv"), *flags))
    assert_one_line_refusal(status, err, 2, fragment)
    assert not (tmp_path / "runs").exists()


def test_each_method_declares_the_shared_options_it_uses_and_a_run_that_recorded_an_unused_one_resumes(
        built_runs, tmp_path):
    # a REINFORCE run recorded with the --ppo-epochs it never read runs again without it
    run_dir = built_runs.copy(tmp_path, "r", "--method", "reinforce")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["stages"]["reinforce"]["built_from"]["--ppo-epochs"] = 3
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    before = snapshot(run_dir)
    cli.run_main(tiny_args(tmp_path, "r", built_runs.corpus, "--method", "reinforce"))
    assert snapshot(run_dir) == before
    assert "--ppo-epochs" not in json.loads((built_runs("--method", "reinforce")[0] / "manifest.json").read_text())[
        "stages"]["reinforce"]["built_from"], "an option the method does not read was recorded"
    shared = {o.flag for o in config.run_options() if o.stage == "rl"}
    assert set(SHARED) == shared
    assert all(set(m.uses) <= shared for m in ppo_np.METHODS.values())
    assert "--ppo-epochs" not in ppo_np.METHODS["reinforce"].uses and "--ppo-epochs" in ppo_np.METHODS["rloo"].uses


@pytest.mark.parametrize("flags, fragment", [
    (["--eval-prompts", "4"], "--eval-prompts 4 is more than this corpus's 3 held-out prompts"),
    (["--vocab-size", "100000000"], "--vocab-size 100000000 is more than this corpus fills"),
])
def test_an_option_the_corpus_cannot_honour_is_refused_before_anything_is_written_or_deleted(built_runs, tmp_path,
                                                                                            capsys, flags, fragment):
    status, err = run_cli(capsys, tiny_args(tmp_path, "fresh", built_runs.corpus, *flags))
    assert_one_line_refusal(status, err, 2, fragment, "or fewer" if "--eval-prompts" in flags else "or less")
    assert [p.name for p in (tmp_path / "runs" / "fresh").iterdir()] == [".lock"]
    # a restart asking for it deletes nothing
    run_dir = built_runs.copy(tmp_path, "x")
    before = snapshot(run_dir)
    status, err = run_cli(capsys, tiny_args(tmp_path, "x", built_runs.corpus, *flags, "--restart", "tokenizer"))
    assert_one_line_refusal(status, err, 2, fragment)
    assert snapshot(run_dir) == before
    # the value it names is accepted
    accepted = re.search(r"use (--\S+ \d+) or", err).group(1).split()
    assert cli.checked_config(cli.pipeline_parser().parse_args(tiny_args(tmp_path, "y", built_runs.corpus,
                                                                         *accepted)))


def test_a_run_recorded_with_more_evaluation_prompts_than_its_corpus_held_out_runs_with_those_it_used(built_runs,
                                                                                                       tmp_path):
    run_dir = built_runs.copy(tmp_path, "x")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["stages"]["ppo"]["built_from"]["--eval-prompts"] = 8     # asked, and capped to the 3 held out
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    before = snapshot(run_dir)
    cli.run_main(tiny_args(tmp_path, "x", built_runs.corpus))     # --eval-prompts 3, what it used
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("flags", [
    ["--batch-size", "8", "--forward-batch-size", "3", "--mini-batch-size", "3"],
    ["--batch-size", "16", "--forward-batch-size", "6", "--mini-batch-size", "5"],
    ["--method", "rloo", "--rloo-k", "3", "--batch-size", "8"],
    ["--method", "grpo", "--grpo-group-size", "5", "--batch-size", "12", "--forward-batch-size", "4"],
    ["--method", "dpo", "--batch-size", "9", "--forward-batch-size", "3", "--mini-batch-size", "3"],
])
def test_one_batch_size_hint_satisfies_every_constraint(tmp_path, capsys, flags):
    args = tiny_args(tmp_path, "b", fixture_corpus(tmp_path / "reviews.csv"), *flags)
    status, err = run_cli(capsys, args)
    assert_one_line_refusal(status, err, 2, "must be", "; use ")
    hint = shlex.split(re.search(r"; use (.*?) \(see", err).group(1))
    print(err.strip(), "->", hint)
    fixed = cli.checked_config(cli.pipeline_parser().parse_args(args + hint))
    assert fixed.ppo.batch_size % fixed.sampling.forward_batch_size == 0


def test_the_name_rule_and_its_message_agree(tmp_path, capsys):
    from minichatgpt.run.run_folder import check_name
    for name in ("my run", "critique \u00e9t\u00e9 \U0001F3AC", "v1.2_b-3"):
        assert check_name(name) == name
    with pytest.raises(ValueError, match="not starting with '-'"):
        check_name("-x")
    for name in ("a\nb", "tab\there", "a/b", "..", ""):
        status, err = run_cli(capsys, tiny_args(tmp_path, name, fixture_corpus(tmp_path / "reviews.csv")))
        assert_one_line_refusal(status, err, 2, "--name must be one folder name of printable characters")
    assert not (tmp_path / "runs").exists()
