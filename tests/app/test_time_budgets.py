"""The time budgets: --ppo-seconds leaves the RL stage unfinished, and the same command again continues it to
--ppo-steps, ending on the bytes of a run never stopped; --pretrain-seconds is a final stop, recorded in the summary,
since the later stages are built on the model it reached."""
import json

import numpy as np

import minigpt_np as mg
from minichatgpt.commands import cli
from minichatgpt.settings import config
from minichatgpt.loop import rlhf
from tiny_run import tiny_args


def without_time(log_file):
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("time/")}
            for line in log_file.read_text().splitlines()]


class Clock:
    """A clock for the loop that moves one second each time it is read, so a budget runs out after a step or two."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        self.now += 1.0
        return self.now


def test_a_run_stopped_by_ppo_seconds_is_unfinished_and_continues_to_the_bytes_of_an_unstopped_run(built_runs,
                                                                                                  tmp_path,
                                                                                                  monkeypatch):
    whole, corpus = built_runs("--method", "rloo")
    args = tiny_args(tmp_path, "s", corpus, "--method", "rloo")
    with monkeypatch.context() as m:
        m.setattr(rlhf, "time", Clock())
        assert cli.run_main(args + ["--ppo-seconds", "3"]) is None
    run_dir = tmp_path / "runs" / "s"
    manifest = json.loads((run_dir / "manifest.json").read_text())["stages"]
    assert not manifest["rloo"]["finished"] and "report" not in manifest and not (run_dir / "summary.json").exists()
    assert 0 < len((run_dir / "rloo_log.jsonl").read_text().splitlines()) < 4

    summary = cli.run_main(args)
    assert summary["ppo_steps"] == 4
    ours, theirs = (mg.load_checkpoint(str(d / "gpt_rloo.npz")).state_dict() for d in (run_dir, whole))
    for name in theirs:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    assert without_time(run_dir / "rloo_log.jsonl") == without_time(whole / "rloo_log.jsonl")
    assert summary["policy"] == json.loads((whole / "summary.json").read_text())["policy"]


def test_a_run_stopped_by_pretrain_seconds_stays_stopped_and_says_so(built_runs, tmp_path, caplog):
    args = tiny_args(tmp_path, "p", built_runs.corpus)
    seconds = args.index("--pretrain-seconds") + 1
    args[seconds] = "1e-9"                                             # one update, then the budget is spent
    summary = cli.run_main(args)
    assert summary["pretrain"]["stop_reason"] == "max_seconds" and summary["pretrain"]["step"] == 1
    caplog.set_level("INFO")
    del args[seconds - 1:seconds + 1]
    again = cli.run_main(args)
    assert "pretrain: done already" in [r.getMessage() for r in caplog.records]
    assert again["pretrain"] == summary["pretrain"]
    help_ = {o.flag: o.help for o in config.run_options()}
    assert "a final stop" in help_["--pretrain-seconds"] and "continues to --ppo-steps" in help_["--ppo-seconds"]
