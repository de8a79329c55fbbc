"""The main job end to end on a tiny fixture corpus: artifacts, skipping finished stages, resuming a killed PPO run."""
import json

import numpy as np
import pytest

import minigpt_np as mg
from ppo_np import trainer as trainer_module
from scripts import run

GOOD = ["a warm , funny and moving film", "the cast is wonderful and the script is smart",
        "a beautiful , heartfelt story told with grace", "one of the best films of the year",
        "sharp writing and a terrific lead performance", "an utterly charming and delightful comedy"]
BAD = ["a dull , lifeless and tedious mess", "the plot is stupid and the acting is awful",
       "a boring , predictable waste of time", "one of the worst films of the year",
       "clumsy writing and a wooden lead performance", "an utterly joyless and pointless comedy"]


def fixture_corpus(path):
    """A small labelled CSV: each template sentence with a few movie names, one movie per row group."""
    rows = ["text,label,movie"]
    for k, title in enumerate(["the heist", "summer rain", "iron coast", "night train", "blue valley",
                               "the long road", "paper moon", "cold harbor", "red desert", "the visitor"]):
        for i, (good, bad) in enumerate(zip(GOOD, BAD)):
            rows.append(f'"{title} is {good} .",fresh,m{k}')
            rows.append(f'"{title} is {bad} .",rotten,m{k}')
    path.write_text("\n".join(rows) + "\n")
    return path


def tiny_args(tmp_path, name, corpus, *extra):
    return ["--name", name, "--runs-dir", str(tmp_path / "runs"), "--corpus", str(corpus), "--quiet",
            "--vocab-size", "300", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "32",
            "--pretrain-steps", "30", "--pretrain-seconds", "60", "--ppo-steps", "4", "--batch-size", "8",
            "--forward-batch-size", "4", "--mini-batch-size", "4", "--response-tokens", "6",
            "--eval-prompts", "8", "--checkpoint-every", "2", *extra]


def test_main_job_writes_every_artifact_and_skips_finished_stages(tmp_path, monkeypatch):
    corpus = fixture_corpus(tmp_path / "reviews.csv")
    summary = run.run_pipeline(tiny_args(tmp_path, "demo", corpus))
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
    monkeypatch.setattr(run, "pretrain", refuse)
    monkeypatch.setattr(run, "train_reward_model", refuse)
    monkeypatch.setattr(run, "train_ppo", refuse)
    again = run.run_pipeline(tiny_args(tmp_path, "demo", corpus))
    assert again["policy"] == summary["policy"]


def test_a_killed_ppo_run_resumes_from_its_checkpoint_and_ends_where_an_uninterrupted_run_ends(tmp_path, monkeypatch):
    corpus = fixture_corpus(tmp_path / "reviews.csv")
    run.run_pipeline(tiny_args(tmp_path, "whole", corpus))

    real_step, calls = trainer_module.PPOTrainer.step, {"n": 0}

    def dies_in_step_three(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")     # after the checkpoint of step 2, before step 3 is saved
        return real_step(self, *args, **kwargs)
    monkeypatch.setattr(trainer_module.PPOTrainer, "step", dies_in_step_three)
    with pytest.raises(KeyboardInterrupt):
        run.run_pipeline(tiny_args(tmp_path, "killed", corpus))
    killed_dir = tmp_path / "runs" / "killed"
    assert len((killed_dir / "ppo_log.jsonl").read_text().splitlines()) == 2

    steps_after_restart = []

    def counted(self, *args, **kwargs):
        steps_after_restart.append(1)
        return real_step(self, *args, **kwargs)
    monkeypatch.setattr(trainer_module.PPOTrainer, "step", counted)
    run.run_pipeline(tiny_args(tmp_path, "killed", corpus))
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
    assert run.main(tiny_args(tmp_path, "exit", corpus)) is None


def test_a_nan_during_ppo_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    corpus = fixture_corpus(tmp_path / "reviews.csv")
    real_step, calls = trainer_module.PPOTrainer.step, {"n": 0}

    def nan_in_step_three(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise FloatingPointError("PPO loss or its gradient is NaN/inf; the step was not applied.")
        return real_step(self, *args, **kwargs)
    monkeypatch.setattr(trainer_module.PPOTrainer, "step", nan_in_step_three)
    with pytest.raises(RuntimeError, match=r"step 3: .*NaN.*last good checkpoint .*gpt_ppo.npz \(step 2\)"):
        run.run_pipeline(tiny_args(tmp_path, "nan", corpus))
    arrays, meta = mg.checkpoint.load_npz(str(tmp_path / "runs" / "nan" / "gpt_ppo.npz"))
    assert meta["ppo"]["step"] == 2 and not meta["ppo"]["finished"]
    assert all(np.all(np.isfinite(a)) for a in arrays.values() if a.dtype.kind == "f")
