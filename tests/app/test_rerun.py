"""Running the main job again on a finished run keeps what the run measured and retrains nothing.

- The summary is made from what each stage recorded when it was built: a re-run, a resumed run and a run whose RL
  stage was swapped report the same test accuracies, tokens/s and stage timings as the process that built them.
- The report is derived from the recorded stages: a missing or edited report file is written again, to the same
  bytes, with one line naming it; the command that export, sample and compare name for it is one that works.
"""
import json
import re
import shlex

import pytest

from minichatgpt.commands import cli

from minichatgpt.loop import rlhf

from minichatgpt.run import stages
from tiny_run import assert_one_line_refusal, kill_ppo_in_step, run_cli, snapshot, tiny_args

REPORT = ("summary.json", "samples.md", "tokens.html", "curves.png")


def refuse_training(monkeypatch):
    """Make every stage that trains raise: a command that passes trained nothing."""
    def refuse(*args, **kwargs):
        raise AssertionError("a stage was trained again")
    for module, name in ((stages, "pretrain_stage"), (stages, "train_reward_model"), (stages, "gpt_reward_stage"),
                         (stages, "gold_stage"), (rlhf, "train_run")):
        monkeypatch.setattr(module, name, refuse)


def measured(summary):
    """What the processes that built a run's stages measured, as its summary reports it."""
    return {key: summary.get(key) for key in ("pretrain", "reward", "gold")}


def test_running_a_finished_run_again_keeps_every_measurement_and_writes_nothing(built_runs, tmp_path, monkeypatch):
    run_dir = built_runs.copy(tmp_path, "x")
    first = json.loads((run_dir / "summary.json").read_text())
    assert first["reward"]["test"]["accuracy"] > 0 and first["gold"]["test"]["accuracy"] > 0
    assert first["pretrain"]["tokens_per_s"] > 0 and all(t > 0 for t in first["timings_s"].values())
    before = snapshot(run_dir)
    refuse_training(monkeypatch)
    again = cli.run_main(tiny_args(tmp_path, "x", built_runs.corpus))
    assert again == first, "the re-run reports other numbers than the process that built the run"
    assert snapshot(run_dir) == before, "the re-run of a finished run wrote files"


def test_a_resumed_run_and_a_swapped_rl_stage_report_what_the_stages_measured_when_built(built_runs, tmp_path,
                                                                                        monkeypatch):
    # killed during PPO: the process that resumes it loads pretraining, the reward model and the gold
    real_step = kill_ppo_in_step(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        cli.run_main(tiny_args(tmp_path, "killed", built_runs.corpus))
    manifest = json.loads((tmp_path / "runs" / "killed" / "manifest.json").read_text())
    monkeypatch.setattr("ppo_np.ppo.PPOTrainer.step", real_step)
    resumed = cli.run_main(tiny_args(tmp_path, "killed", built_runs.corpus))
    for stage in ("pretrain", "reward", "gold"):
        assert resumed[stage] == {k: v for k, v in manifest["stages"][stage]["metrics"].items() if k != "seconds"}
    assert resumed["timings_s"]["pretrain"] == manifest["stages"]["pretrain"]["metrics"]["seconds"]
    assert resumed["reward"]["test"]["accuracy"] > 0 and resumed["pretrain"]["tokens_per_s"] > 0

    # the RL stage swapped for RLOO: the stages kept report the numbers of the process that built them
    run_dir = built_runs.copy(tmp_path, "swapped")
    first = json.loads((run_dir / "summary.json").read_text())
    swapped = cli.run_main(tiny_args(tmp_path, "swapped", built_runs.corpus, "--method", "rloo", "--restart", "ppo"))
    assert measured(swapped) == measured(first) and swapped["method"] == "rloo"
    assert {k: swapped["timings_s"][k] for k in ("data_and_tokenizer", "pretrain", "reward")} == \
        {k: first["timings_s"][k] for k in ("data_and_tokenizer", "pretrain", "reward")}


@pytest.mark.parametrize("damage", ["delete", "append"])
def test_a_missing_or_edited_report_file_is_written_again_to_the_same_bytes_without_training(built_runs, tmp_path,
                                                                                            caplog, monkeypatch,
                                                                                            damage):
    run_dir = built_runs.copy(tmp_path, "x")
    original = {name: (run_dir / name).read_bytes() for name in REPORT}
    for name in REPORT:
        if damage == "delete":
            (run_dir / name).unlink()
        else:
            (run_dir / name).write_bytes(original[name] + b"\n a line of my own\n")
    refuse_training(monkeypatch)
    caplog.set_level("INFO")
    cli.run_main(tiny_args(tmp_path, "x", built_runs.corpus))
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("report:")]
    assert len(said) == 1 and "nothing was retrained" in said[0], said
    for name in REPORT:
        assert name in said[0], f"{name} not named in {said[0]!r}"
        assert (run_dir / name).read_bytes() == original[name], f"{name} was written again to other bytes"
    caplog.clear()
    cli.run_main(tiny_args(tmp_path, "x", built_runs.corpus))
    assert "report: done already" in [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("main, argv", [
    ("export", lambda run_dir, tmp_path: ["--runs-dir", str(run_dir.parent), "--name", run_dir.name,
                                          str(tmp_path / "exported")]),
    ("sample", lambda run_dir, tmp_path: [str(run_dir), "--n", "1"]),
    ("compare", lambda run_dir, tmp_path: ["--runs-dir", str(run_dir.parent), "--name", run_dir.name, "--budget",
                                           "32", "--batch-size", "8", "--eval-prompts", "2", "--quiet"]),
])
def test_the_command_a_refusal_names_for_a_missing_report_file_writes_it_again(built_runs, tmp_path, capsys, main,
                                                                               argv):
    run_dir = built_runs.copy(tmp_path, "x")
    samples = (run_dir / "samples.md").read_bytes()
    (run_dir / "samples.md").unlink()
    before = snapshot(run_dir)
    status, err = run_cli(capsys, argv(run_dir, tmp_path), getattr(cli, f"{main}_main"))
    assert_one_line_refusal(status, err, 1, "samples.md is missing", "to write it again")
    assert snapshot(run_dir) == before
    command = shlex.split(re.search(r"run (minichatgpt .*?) to write it again", err).group(1))
    print(" ".join(command))
    status, err = run_cli(capsys, command[1:])
    assert status == 0, f"the command the refusal names fails: {err}"
    assert (run_dir / "samples.md").read_bytes() == samples
    status, err = run_cli(capsys, argv(run_dir, tmp_path), getattr(cli, f"{main}_main"))
    assert status == 0, err


def test_running_again_removes_the_temporary_files_a_killed_process_left(built_runs, tmp_path):
    run_dir = built_runs.copy(tmp_path, "x")
    left = ["ppo_log.jsonl.12984.tmp", "summary.json.77.tmp", "manifest.json.5.tmp"]
    for name in left + ["my notes.5.tmp"]:             # the last is a user's own file: not a name the run writes
        (run_dir / name).write_text("half written")
    cli.run_main(tiny_args(tmp_path, "x", built_runs.corpus))
    assert not any((run_dir / name).exists() for name in left) and (run_dir / "my notes.5.tmp").exists()


def test_the_tokens_view_names_the_log_ratio_it_shows_under_each_score(built_runs):
    view = (built_runs()[0] / "tokens.html").read_text()
    rows = re.findall(r"<small>(.*?)</small>", view)
    assert rows and all(re.fullmatch(r"score [+-]\d+\.\d\d, log-ratio [+-]\d+\.\d\d", row) for row in rows), rows[:2]
    assert "on the reference's response it is not a KL" in view
