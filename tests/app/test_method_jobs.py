"""`minichatgpt --method X`: every method runs the whole job, resumes after a kill to the same bytes, restarts its own
stage, is sampled from its run folder, and has its options refused up front."""
import json

import numpy as np
import pytest

import minigpt_np as mg
import ppo_np
from minichatgpt.commands import cli
from minichatgpt.loop import methods
from minichatgpt.run import stages

from tiny_run import assert_one_line_refusal, fixture_corpus, kill_in_step, run_cli, snapshot, tiny_args

OTHERS = ("rloo", "grpo", "dpo", "reinforce")
# each method's own stat in its log, and what its tokens view says its credit is
OWN = {"rloo": ("rloo/loss/policy", "leave-one-out advantage"), "grpo": ("grpo/loss/kl", "group-relative advantage"),
       "dpo": ("dpo/rewards_train/margins", "implicit reward"), "reinforce": ("reinforce/loss/policy",
                                                                              "batch-mean baseline")}


def without_time(log_file):
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("time/")}
            for line in log_file.read_text().splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return fixture_corpus(tmp_path_factory.mktemp("corpus") / "reviews.csv")


@pytest.mark.parametrize("method", OTHERS)
def test_a_method_runs_the_whole_job_and_a_killed_run_resumes_to_the_same_bytes(tmp_path, monkeypatch, capsys, corpus,
                                                                                 method):
    summary = cli.run_main(tiny_args(tmp_path, "whole", corpus, "--method", method))
    run_dir = tmp_path / "runs" / "whole"
    for name in (f"gpt_{method}.npz", f"{method}_log.jsonl", "samples.md", "tokens.html", "curves.png", "summary.json"):
        assert (run_dir / name).exists(), f"{name} missing"
    assert not (run_dir / "gpt_ppo.npz").exists() and not (run_dir / "ppo_log.jsonl").exists()
    log = without_time(run_dir / f"{method}_log.jsonl")
    stat, credit = OWN[method]
    assert [s["step"] for s in log] == [1, 2, 3, 4] and stat in log[0], log[0].keys()
    label = ppo_np.METHODS[method].label
    assert summary["method"] == method and summary["wrote"] == sorted(
        ["samples.md", "summary.json", f"{method}_log.jsonl", "tokens.html", "curves.png"])
    assert f"after {label} (policy)" in (run_dir / "samples.md").read_text()
    view = (run_dir / "tokens.html").read_text()
    assert f"the {label} policy" in view and credit in view
    assert summary["built_with"][method]["--batch-size"] == 8 and method in json.loads(
        (run_dir / "manifest.json").read_text())["stages"]

    # killed after the checkpoint of step 2: started again, it does steps 3 and 4 only, and ends on the same bytes
    trainer_class = ppo_np.METHODS[method].trainer
    real_step = kill_in_step(monkeypatch, trainer_class, 3)
    with pytest.raises(KeyboardInterrupt):
        cli.run_main(tiny_args(tmp_path, "killed", corpus, "--method", method))
    killed_dir = tmp_path / "runs" / "killed"
    assert len((killed_dir / f"{method}_log.jsonl").read_text().splitlines()) == 2
    calls = []

    def counted(self, *args, **kwargs):
        calls.append(1)
        return real_step(self, *args, **kwargs)
    monkeypatch.setattr(trainer_class, "step", counted)
    again = cli.run_main(tiny_args(tmp_path, "killed", corpus, "--method", method))
    assert len(calls) == 2, "the restarted run did not continue from the step-2 checkpoint"
    whole, killed = (mg.load_checkpoint(str(d / f"gpt_{method}.npz")).state_dict() for d in (run_dir, killed_dir))
    for name in whole:
        np.testing.assert_array_equal(whole[name], killed[name], err_msg=name)
    assert without_time(killed_dir / f"{method}_log.jsonl") == log
    assert again["policy"] == summary["policy"]

    # minichatgpt-sample on the run folder samples the method's policy
    status, err = run_cli(capsys, [str(run_dir), "--prompt", "the cast", "--n", "1"], cli.sample_main)
    assert status == 0, err
    assert cli.checkpoint_of(str(run_dir)) == str(run_dir / f"gpt_{method}.npz")


def test_restart_of_a_method_rebuilds_its_stage_alone_and_another_method_is_another_folder(tmp_path, monkeypatch,
                                                                                         capsys, corpus):
    first = cli.run_main(tiny_args(tmp_path, "r", corpus, "--method", "grpo"))
    run_dir = tmp_path / "runs" / "r"
    pretrained = (run_dir / "gpt_pretrained.npz").read_bytes()

    def refuse(*args, **kwargs):
        raise AssertionError("a stage below the RL stage was run again")
    monkeypatch.setattr(stages, "pretrain_stage", refuse)
    monkeypatch.setattr(stages, "train_reward_model", refuse)
    again = cli.run_main(tiny_args(tmp_path, "r", corpus, "--method", "grpo", "--restart", "grpo"))
    assert again["policy"] == first["policy"] and (run_dir / "gpt_pretrained.npz").read_bytes() == pretrained

    before = snapshot(run_dir)
    status, err = run_cli(capsys, tiny_args(tmp_path, "r", corpus, "--method", "rloo"))
    assert_one_line_refusal(status, err, 1, "holds a GRPO run", "new --name", "--restart grpo")
    assert snapshot(run_dir) == before

    # --restart grpo with --method rloo replaces the GRPO stage by an RLOO one on the same pretrained model: the
    # run folder then holds RLOO alone, as a fresh RLOO run's does
    replaced = cli.run_main(tiny_args(tmp_path, "r", corpus, "--method", "rloo", "--restart", "grpo"))
    assert (run_dir / "gpt_pretrained.npz").read_bytes() == pretrained
    assert not (run_dir / "gpt_grpo.npz").exists() and not (run_dir / "grpo_log.jsonl").exists()
    assert "grpo" not in json.loads((run_dir / "manifest.json").read_text())["stages"]
    monkeypatch.undo()
    fresh = cli.run_main(tiny_args(tmp_path, "fresh", corpus, "--method", "rloo"))
    assert replaced["policy"] == fresh["policy"] and replaced["method"] == "rloo"
    assert without_time(run_dir / "rloo_log.jsonl") == without_time(tmp_path / "runs" / "fresh" / "rloo_log.jsonl")
    # a method stage the folder does not hold is not "replaced": nothing is deleted
    before = snapshot(run_dir)
    status, err = run_cli(capsys, tiny_args(tmp_path, "r", corpus, "--method", "rloo", "--restart", "grpo"))
    assert_one_line_refusal(status, err, 1, "--restart grpo", "holds no GRPO stage", "--restart rloo")
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("flags, fragment", [
    (["--rloo-k", "2"], "--rloo-k 2 shapes --method rloo only, and --method is ppo"),
    (["--method", "grpo", "--dpo-beta", "0.1"], "--dpo-beta 0.1 shapes --method dpo only"),
    (["--method", "rloo", "--init-kl-coef", "0.3"], "--init-kl-coef 0.3 shapes --method ppo only"),
    (["--method", "dpo", "--preset", "exploit"], "--preset exploit sets PPO's options"),
])
def test_an_option_of_another_method_is_refused_not_ignored(tmp_path, capsys, corpus, flags, fragment):
    status, err = run_cli(capsys, tiny_args(tmp_path, "other", corpus, *flags))
    assert_one_line_refusal(status, err, 2, fragment)
    assert not (tmp_path / "runs").exists()
    assert cli.checked_config(cli.pipeline_parser().parse_args(["--method", "rloo", "--rloo-k", "2"])).methods["rloo_k"] == 2
    # a recorded config holds every method's values of its day, and still opens when the defaults have moved on
    from minichatgpt.settings.config import RunConfig, method_defaults
    assert RunConfig(methods={**method_defaults(), "rloo_kl_coef": 0.1}).methods["rloo_kl_coef"] == 0.1


@pytest.mark.parametrize("flags, fragment", [
    (["--method", "rloo", "--rloo-k", "1"], "--rloo-k 1 is out of range"),
    (["--method", "rloo", "--rloo-k", "3"], "--batch-size 8 must be a multiple of --rloo-k 3"),
    (["--method", "grpo", "--grpo-group-size", "3"], "--batch-size 8 must be a multiple of --grpo-group-size 3"),
    (["--method", "grpo", "--grpo-loss-type", "sum"], "--grpo-loss-type: invalid choice"),
    (["--method", "grpo", "--grpo-importance-sampling", "word"], "--grpo-importance-sampling: invalid choice"),
    (["--method", "grpo", "--grpo-epsilon-high", "0"], "--grpo-epsilon-high 0.0 is out of range"),
    (["--method", "grpo", "--grpo-beta", "-1"], "--grpo-beta -1.0 is out of range"),
    (["--method", "dpo", "--dpo-beta", "0"], "--dpo-beta 0.0 is out of range"),
    (["--method", "dpo", "--batch-size", "9", "--forward-batch-size", "3", "--mini-batch-size", "3"],
     "--batch-size 9 must be even"),
    (["--method", "reinforce", "--reinforce-kl-coef", "nan"], "--reinforce-kl-coef nan is out of range"),
    (["--method", "a2c"], "--method: invalid choice"),
])
def test_bad_method_options_are_refused_in_one_line_before_anything_is_written(tmp_path, capsys, corpus, flags,
                                                                                fragment):
    status, err = run_cli(capsys, tiny_args(tmp_path, "bad", corpus, *flags))
    assert_one_line_refusal(status, err, 2, fragment)
    assert not (tmp_path / "runs").exists()


def test_the_grpo_options_reach_the_trainer():
    from minichatgpt.settings.config import with_values
    config = with_values({"method": "grpo", "methods.grpo_loss_type": "dr_grpo", "methods.grpo_epsilon_high": 0.28,
                          "methods.grpo_importance_sampling": "sequence", "methods.grpo_bias_correction_kl": True})
    cfg = methods.run_trainer_config(config)
    assert (cfg.loss_type, cfg.epsilon_high, cfg.importance_sampling_level, cfg.use_bias_correction_kl) == (
        "dr_grpo", 0.28, "sequence", True)
    assert cfg.max_completion_length == config.sampling.response_tokens and cfg.group_size == 4 and cfg.beta == 0.25
