"""--restart checks every stage's whole record before it deletes anything, and deletes all a stage leaves.

- A restart that forgets an option the run recorded (--reward-model gpt) is refused before any file is deleted; the
  record is compared both ways, and a run whose manifest holds no metrics (the n-gram proxy recorded by leaving
  --reward-model out) still opens and resumes.
- A restart deletes the training files of the stages it deletes: a GPT reward model's checkpoint left by a kill
  does not block the run it rebuilds.
- --restart of a method's own RL stage keeps the run's method.
"""
import json
import shutil

import numpy as np
import pytest

from minichatgpt.commands import cli
from minichatgpt.run.finished_run import FinishedRun
from tiny_run import assert_one_line_refusal, kill_ppo_in_step, run_cli, snapshot, tiny_args

GPT = ("--reward-model", "gpt")


@pytest.mark.parametrize("restart", [["--restart", "ppo"], ["--restart", "gold"],
                                     ["--method", "rloo", "--restart", "ppo"]])
def test_a_restart_that_forgets_the_gpt_reward_model_deletes_nothing(built_runs, tmp_path, capsys, restart):
    run_dir = built_runs.copy(tmp_path, "g", *GPT)
    (run_dir / "compare").mkdir()               # what an experiment built on the run would leave
    (run_dir / "compare" / "manifest.json").write_text('{"stages": {}}\n')
    before = snapshot(run_dir)
    status, err = run_cli(capsys, tiny_args(tmp_path, "g", built_runs.corpus, *restart))
    assert snapshot(run_dir) == before, "the refused restart deleted files"
    assert_one_line_refusal(status, err, 1, "its reward stage: --reward-model: gpt -> ngram")
    assert "gpt_rloo.npz" not in err or "rloo" in restart, "the hint names files of a method the run does not hold"
    # the other way round too: an n-gram run asked for a GPT proxy
    ngram = built_runs.copy(tmp_path, "n")
    before = snapshot(ngram)
    status, err = run_cli(capsys, tiny_args(tmp_path, "n", built_runs.corpus, *GPT, *restart))
    assert_one_line_refusal(status, err, 1, "--reward-model: ngram -> gpt")
    assert snapshot(ngram) == before


def without_metrics(run_dir):
    """Rewrite a run's manifest without what its stages measured, as a manifest may hold it."""
    file = run_dir / "manifest.json"
    manifest = json.loads(file.read_text())
    for record in manifest["stages"].values():
        record.pop("metrics", None)
    file.write_text(json.dumps(manifest, indent=2) + "\n")


def test_a_run_whose_manifest_holds_no_metrics_still_opens_and_resumes(built_runs, tmp_path, monkeypatch,
                                                                                  capsys):
    run_dir = built_runs.copy(tmp_path, "old")
    without_metrics(run_dir)
    assert "--reward-model" not in json.loads((run_dir / "manifest.json").read_text())["stages"]["reward"][
        "built_from"], "the n-gram proxy is recorded by leaving the option out"
    before = snapshot(run_dir)
    again = cli.run_main(tiny_args(tmp_path, "old", built_runs.corpus))
    assert again == json.loads((run_dir / "summary.json").read_text()) and snapshot(run_dir) == before
    FinishedRun.open(str(run_dir))
    assert run_cli(capsys, [str(run_dir), "--n", "1"], cli.sample_main)[0] == 0

    # killed during PPO, its manifest without metrics: it resumes to the policy of the uninterrupted run
    real_step = kill_ppo_in_step(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        cli.run_main(tiny_args(tmp_path, "killed", built_runs.corpus))
    monkeypatch.setattr("ppo_np.ppo.PPOTrainer.step", real_step)
    without_metrics(tmp_path / "runs" / "killed")
    resumed = cli.run_main(tiny_args(tmp_path, "killed", built_runs.corpus))
    whole = json.loads((built_runs()[0] / "summary.json").read_text())
    assert resumed["policy"] == whole["policy"]
    assert "reward" not in resumed and resumed["timings_s"]["pretrain"] is None, "a measurement nobody recorded"


def test_a_restart_deletes_the_gpt_reward_models_training_checkpoint_left_by_a_kill(built_runs, tmp_path,
                                                                                     monkeypatch):
    from reward.gpt_reward import GPTRewardModel
    real_save, calls = GPTRewardModel.save, {"n": 0}

    def killed(self, path):   # the training checkpoint is written; reward.npz is not
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt
        return real_save(self, path)
    monkeypatch.setattr(GPTRewardModel, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        cli.run_main(tiny_args(tmp_path, "g", built_runs.corpus, *GPT))
    run_dir = tmp_path / "runs" / "g"
    assert (run_dir / "reward_gpt_train.npz").exists() and not (run_dir / "reward.npz").exists()
    shutil.copytree(run_dir, tmp_path / "runs" / "g2")

    summary = cli.run_main(tiny_args(tmp_path, "g", built_runs.corpus, *GPT, "--pretrain-steps", "25", "--restart",
                                     "pretrain"))
    assert summary["pretrain"]["step"] == 25 and not (run_dir / "reward_gpt_train.npz").exists()
    cli.run_main(tiny_args(tmp_path, "g2", built_runs.corpus, *GPT, "--restart", "reward"))
    assert not (tmp_path / "runs" / "g2" / "reward_gpt_train.npz").exists()
    # the reward model is the one the run that was never killed trained
    trained, fresh = (np.load(folder / "reward.npz") for folder in (tmp_path / "runs" / "g2", built_runs(*GPT)[0]))
    for name in fresh.files:
        np.testing.assert_array_equal(trained[name], fresh[name], err_msg=name)


def test_restart_of_a_methods_own_stage_keeps_the_method(built_runs, tmp_path):
    run_dir = built_runs.copy(tmp_path, "r", "--method", "grpo")
    summary = cli.run_main(tiny_args(tmp_path, "r", built_runs.corpus, "--restart", "grpo"))
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    assert summary["method"] == "grpo" and "grpo" in stages and "ppo" not in stages
    assert (run_dir / "gpt_grpo.npz").exists() and not (run_dir / "gpt_ppo.npz").exists()
