"""The main job end to end on a tiny fixture corpus: artifacts, skipping finished stages, resuming a killed PPO run."""
import json

import numpy as np
import pytest

import minigpt_np as mg
from minichatgpt.commands import cli
from minichatgpt.loop import rlhf
from minichatgpt.run import stages
from minigpt_np import pretrain as pretrain_module
from minigpt_np.checkpoint import load_npz
from ppo_np import ppo as trainer_module

from tiny_run import fixture_corpus, kill_ppo_in_step, tiny_args


def test_main_job_writes_every_artifact_and_skips_finished_stages(tmp_path, monkeypatch):
    corpus = fixture_corpus(tmp_path / "reviews.csv")
    summary = cli.run_main(tiny_args(tmp_path, "demo", corpus))
    run_dir = tmp_path / "runs" / "demo"
    for name in ("tokenizer.json", "gpt_pretrained.npz", "reward.npz", "gpt_ppo.npz", "ppo_log.jsonl",
                 "curves.png", "samples.md", "summary.json"):
        assert (run_dir / name).exists(), f"{name} missing"
    log = [json.loads(line) for line in (run_dir / "ppo_log.jsonl").read_text().splitlines()]
    assert [s["step"] for s in log] == [1, 2, 3, 4]
    for key in ("objective/kl", "objective/kl_coef", "objective/entropy", "ppo/loss/policy", "ppo/loss/value",
                "ppo/policy/clipfrac", "ppo/val/var_explained", "time/ppo/total", "env/reward_mean"):
        assert key in log[0], f"stat {key} missing from ppo_log.jsonl"
    assert set(summary["policy"]) >= {"reward_positive", "reward_mean", "kl_to_reference", "distinct_2"}
    assert "before (" in (run_dir / "samples.md").read_text()

    # a second run finds every stage complete: no training function may be called
    def refuse(*args, **kwargs):
        raise AssertionError("a finished stage was run again")
    monkeypatch.setattr(pretrain_module, "train_step", refuse)
    monkeypatch.setattr(stages, "train_reward_model", refuse)
    monkeypatch.setattr(rlhf, "ppo_step", refuse)
    again = cli.run_main(tiny_args(tmp_path, "demo", corpus))
    assert again["policy"] == summary["policy"]


def test_a_killed_ppo_run_resumes_from_its_checkpoint_and_ends_where_an_uninterrupted_run_ends(tmp_path, monkeypatch):
    corpus = fixture_corpus(tmp_path / "reviews.csv")
    cli.run_main(tiny_args(tmp_path, "whole", corpus))

    real_step = kill_ppo_in_step(monkeypatch, 3)   # after the checkpoint of step 2, before step 3 is saved
    with pytest.raises(KeyboardInterrupt):
        cli.run_main(tiny_args(tmp_path, "killed", corpus))
    killed_dir = tmp_path / "runs" / "killed"
    assert len((killed_dir / "ppo_log.jsonl").read_text().splitlines()) == 2

    steps_after_restart = []

    def counted(self, *args, **kwargs):
        steps_after_restart.append(1)
        return real_step(self, *args, **kwargs)
    monkeypatch.setattr(trainer_module.PPOTrainer, "step", counted)
    cli.run_main(tiny_args(tmp_path, "killed", corpus))
    assert len(steps_after_restart) == 2, "the restarted run did not continue from the step-2 checkpoint"

    whole = mg.load_checkpoint(str(tmp_path / "runs" / "whole" / "gpt_ppo.npz")).state_dict()
    resumed = mg.load_checkpoint(str(killed_dir / "gpt_ppo.npz")).state_dict()
    worst = max((np.abs(whole[k] - resumed[k]).max(), k) for k in whole)
    assert worst[0] == 0.0, f"resumed run differs from the uninterrupted one at {worst[1]} by {worst[0]}"
    log_whole = (tmp_path / "runs" / "whole" / "ppo_log.jsonl").read_text().splitlines()
    log_resumed = (killed_dir / "ppo_log.jsonl").read_text().splitlines()
    strip = lambda line: {k: v for k, v in json.loads(line).items() if not k.startswith("time/")}  # noqa: E731
    assert [strip(x) for x in log_whole] == [strip(x) for x in log_resumed]


def test_console_entry_points_return_nothing_so_the_exit_status_is_zero(tmp_path):
    """setuptools' console scripts call sys.exit(main()): a returned dict would exit with status 1."""
    corpus = fixture_corpus(tmp_path / "reviews.csv")
    assert cli.main(tiny_args(tmp_path, "exit", corpus)) is None


def test_a_nan_during_ppo_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    corpus = fixture_corpus(tmp_path / "reviews.csv")
    kill_ppo_in_step(monkeypatch, 3, FloatingPointError("PPO loss or its gradient is NaN/inf; the step was not applied."))
    with pytest.raises(RuntimeError, match=r"step 3: .*NaN.*last good checkpoint .*gpt_ppo.npz \(step 2\)"):
        cli.run_main(tiny_args(tmp_path, "nan", corpus))
    arrays, meta = load_npz(str(tmp_path / "runs" / "nan" / "gpt_ppo.npz"))
    assert meta["training"]["state"]["step"] == 2 and not meta["training"]["state"]["finished"]
    assert all(np.all(np.isfinite(a)) for a in arrays.values() if a.dtype.kind == "f")
