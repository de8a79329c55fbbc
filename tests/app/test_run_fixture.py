"""Run folders kept as files (tests/fixtures/run_folder: the main job's tiny settings, the fixture corpus) still open,
resume and take the experiments: code that no longer reads what the main job wrote fails here, not on a user's run.

    finished/  a whole run, with a comparison and an over-optimisation study built on it: running the same command
               again does nothing ("done already") and every file stays byte-identical; compare and overopt run
               again with the same settings take their kept files as they are, and train nothing
    stopped/   a run whose RL stage was stopped after 1 of its 4 steps (--ppo-seconds): the same command resumes it
               from its checkpoint, keeps the step it logged, and finishes

The main job records its corpus by its absolute path, so the copy relocates that one string of the manifest, as a
user moving a run folder with its corpus would. The negative control: the same command with another option is
refused, and changes nothing.
"""
import json
import shutil
from pathlib import Path

from minichatgpt.commands import cli

from tiny_run import assert_one_line_refusal, run_cli, snapshot

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "run_folder"
TINY = ["--quiet", "--vocab-size", "300", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "32",
        "--pretrain-steps", "30", "--pretrain-seconds", "60", "--ppo-steps", "4", "--batch-size", "8",
        "--forward-batch-size", "4", "--mini-batch-size", "4", "--response-tokens", "6", "--eval-prompts", "3",
        "--checkpoint-every", "2"]


def copied(tmp_path):
    """The fixture copied into tmp_path, its recorded corpus path moved there -> the folder of the copy."""
    folder = tmp_path / "kept"
    shutil.copytree(FIXTURE, folder)
    manifest = folder / "finished" / "manifest.json"
    recorded = json.loads(manifest.read_text())["stages"]["report"]["built_from"]["config"]["corpus"]
    manifest.write_text(manifest.read_text().replace(json.dumps(recorded), json.dumps(str(folder / "reviews.csv"))))
    return folder


def main_job(folder, name, *extra):
    return ["--name", name, "--runs-dir", str(folder), "--corpus", str(folder / "reviews.csv"), *TINY, *extra]


def test_a_kept_finished_run_is_done_already_and_takes_the_experiments(tmp_path, capsys):
    folder = copied(tmp_path)
    run_dir = folder / "finished"
    before = snapshot(run_dir)
    cli.main(main_job(folder, "finished"))
    assert f"{run_dir}/ was done already" in capsys.readouterr().out
    assert snapshot(run_dir) == before, "running a finished run again changed it"

    status, err = run_cli(capsys, main_job(folder, "finished", "--lr", "0.001"))     # the negative control
    assert_one_line_refusal(status, err, 1, "--lr")
    assert snapshot(run_dir) == before

    where = ["--name", "finished", "--runs-dir", str(folder), "--quiet"]
    kept = {name: json.loads((run_dir / name).read_text()) for name in ("compare.json", "overopt.json")}
    experiments = {name: snapshot(run_dir / name) for name in ("compare", "overopt")}
    cli.compare_main(where + ["--budget", "32", "--batch-size", "8", "--eval-prompts", "2", "--eval-every", "2"])
    cli.overopt_main(where + ["--proxy-sizes", "10", "30", "--prompts", "3", "--n-max", "4", "--rl-steps", "4",
                              "--eval-every", "2"])
    # every file the same bytes, and no policy's checkpoint written again (the small Bradley-Terry fit is redone)
    for name, files in experiments.items():
        again = snapshot(run_dir / name)
        assert {f: again[f][0] for f in files} == {f: v[0] for f, v in files.items()}, name
        trained = [f for f in files if f.endswith(".npz") and f != "bradley_terry.npz"]
        assert trained and all(again[f] == files[f] for f in trained), name
    compare = json.loads((run_dir / "compare.json").read_text())
    assert list(compare["methods"]) == list(kept["compare.json"]["methods"]) == \
        ["ppo", "rloo", "grpo", "reinforce", "dpo", "best_of_n"]
    for method, result in compare["methods"].items():
        assert result["metrics"] == kept["compare.json"]["methods"][method]["metrics"], method
    assert json.loads((run_dir / "overopt.json").read_text())["rl"] == kept["overopt.json"]["rl"]
    capsys.readouterr()


def test_a_kept_stopped_run_resumes_from_its_checkpoint(tmp_path, capsys):
    folder = copied(tmp_path)
    run_dir = folder / "stopped"
    kept = (run_dir / "ppo_log.jsonl").read_text().splitlines()
    assert len(kept) == 1 and not json.loads((run_dir / "manifest.json").read_text())["stages"]["ppo"].get("finished")
    cli.main(main_job(folder, "stopped"))
    log = (run_dir / "ppo_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [1, 2, 3, 4]
    assert log[0] == kept[0], "the resumed run rewrote the step it had logged"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["ppo"]["finished"] and manifest["stages"]["report"]["finished"]
    assert json.loads((run_dir / "summary.json").read_text())["ppo_steps"] == 4
    capsys.readouterr()
