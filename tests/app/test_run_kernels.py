"""The command line's --kernels: every stage and experiment that trains a GPT records the kernels it ran on, a
resume on the other kernels is refused in one line naming the change, and a run folder recorded before the option
existed resumes as what it was, a run on the fast kernels."""
import json
import shutil

import pytest

import minigpt_np as mg
from minichatgpt.commands import cli
from minichatgpt.settings import config
from minichatgpt.run import pipeline
from minichatgpt.run.finished_run import FinishedRun
from tiny_run import assert_one_line_refusal, fixture_corpus, run_cli, snapshot, tiny_args

COMPARE = ["--budget", "16", "--batch-size", "8", "--eval-prompts", "2", "--eval-every", "2", "--quiet"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run on the default kernels, with a finished comparison -> (run folder, corpus)."""
    tmp = tmp_path_factory.mktemp("finished")
    corpus = fixture_corpus(tmp / "reviews.csv")
    cli.run_main(tiny_args(tmp, "done", corpus))
    run_dir = tmp / "runs" / "done"
    cli.compare_main(["--runs-dir", str(run_dir.parent), "--name", run_dir.name, *COMPARE])
    return run_dir, corpus


def copy_run(finished, tmp_path):
    run_dir, corpus = finished
    shutil.copytree(run_dir, tmp_path / "runs" / "copy")
    return tmp_path / "runs" / "copy", corpus


def manifest(run_dir, folder=""):
    return json.loads((run_dir / folder / "manifest.json").read_text())["stages"]


def test_the_fast_kernels_are_the_command_lines_default_and_recorded_with_the_stages_that_train():
    assert config.RunConfig().kernels == "fast" and mg.kernels.in_use() == "reference"   # the library's default
    data = {"corpus_sha256": "x"}
    ngram, gpt = config.RunConfig(), config.RunConfig(reward_model="gpt")
    recorded = {stage: "--kernels" in pipeline.built_from(ngram, stage, data) for stage in ("tokenizer", "pretrain",
                                                                                          "reward", "gold", "ppo")}
    assert recorded == {"tokenizer": False, "pretrain": True, "reward": False, "gold": False, "ppo": True}
    assert pipeline.built_from(gpt, "reward", data)["--kernels"] == "fast"      # the GPT reward model trains a GPT
    assert pipeline.built_from(config.with_values({"kernels": "reference"}), "grpo", data)["--kernels"] == "reference"


def test_a_run_and_its_experiment_record_their_kernels(finished):
    run_dir, _ = finished
    stages = manifest(run_dir)
    assert {s: r["built_from"].get("--kernels") for s, r in stages.items() if s != "report"} == {
        "tokenizer": None, "pretrain": "fast", "reward": None, "gold": None, "ppo": "fast"}
    assert stages["report"]["built_from"]["config"]["kernels"] == "fast"
    assert manifest(run_dir, "compare")["compare"]["built_from"]["kernels"] == "fast"


def test_resuming_a_run_on_the_other_kernels_is_refused_in_one_line(finished, tmp_path, capsys):
    run_dir, corpus = copy_run(finished, tmp_path)
    before = snapshot(run_dir)
    status, err = run_cli(capsys, tiny_args(tmp_path, "copy", corpus, "--kernels", "reference"))
    assert_one_line_refusal(status, err, 1, "for its pretrain stage: --kernels: fast -> reference", "--restart")
    assert snapshot(run_dir) == before, "a refused run changed the run folder"


def test_an_experiment_on_the_other_kernels_is_refused_in_one_line(finished, tmp_path, capsys):
    run_dir, _ = copy_run(finished, tmp_path)
    before = snapshot(run_dir)
    status, err = run_cli(capsys, ["--runs-dir", str(run_dir.parent), "--name", "copy", *COMPARE, "--kernels",
                                   "reference"], cli.compare_main)
    assert_one_line_refusal(status, err, 1, "kernels: fast -> reference")
    assert snapshot(run_dir) == before, "a refused experiment changed the run folder"


def test_a_run_recorded_before_the_option_existed_resumes_on_the_fast_kernels(finished, tmp_path, capsys):
    """Its records hold no kernels: it is read, resumed and built on as the fast-kernel run it is, and refused on
    the reference kernels."""
    run_dir, corpus = copy_run(finished, tmp_path)
    for folder in ("", "compare"):
        file = run_dir / folder / "manifest.json"
        records = json.loads(file.read_text())
        for record in records["stages"].values():
            record["built_from"].pop("--kernels", None)
            record["built_from"].pop("kernels", None)
            record["built_from"].get("config", {}).pop("kernels", None)
        file.write_text(json.dumps(records, indent=2) + "\n")
    assert FinishedRun.open(str(run_dir)).config.kernels == "fast"
    status, err = run_cli(capsys, tiny_args(tmp_path, "copy", corpus))
    assert status == 0, err
    status, err = run_cli(capsys, ["--runs-dir", str(run_dir.parent), "--name", "copy", *COMPARE], cli.compare_main)
    assert status == 0, err
    status, err = run_cli(capsys, tiny_args(tmp_path, "copy", corpus, "--kernels", "reference"))
    assert_one_line_refusal(status, err, 1, "--kernels: fast -> reference")


def test_a_run_on_the_reference_kernels_refuses_the_fast_ones(tmp_path, capsys):
    corpus = fixture_corpus(tmp_path / "reviews.csv")
    status, err = run_cli(capsys, tiny_args(tmp_path, "plain", corpus, "--kernels", "reference", "--ppo-steps", "2"))
    assert status == 0, err
    run_dir = tmp_path / "runs" / "plain"
    assert manifest(run_dir)["ppo"]["built_from"]["--kernels"] == "reference"
    before = snapshot(run_dir)
    status, err = run_cli(capsys, tiny_args(tmp_path, "plain", corpus, "--ppo-steps", "2"))
    assert_one_line_refusal(status, err, 1, "--kernels: reference -> fast")
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("main", [cli.main, cli.pretrain_main, cli.compare_main])
def test_an_unknown_kernel_name_is_refused_in_one_line_naming_the_choices(tmp_path, capsys, monkeypatch, main):
    monkeypatch.chdir(tmp_path)
    status, err = run_cli(capsys, ["--kernels", "quick"], main)
    assert_one_line_refusal(status, err, 2, "--kernels: invalid choice: 'quick' (choose from 'reference', 'fast')")
    assert not list(tmp_path.iterdir()), "a refused command wrote something"
