"""The run folder cannot lie or be clobbered, and every refusal on the command line is one line a person can act on.

One test per bad input: the exact case, the refusal (exit status and the one line on stderr) or the behaviour, and
that nothing outside the run folder changed.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from minichatgpt.commands import cli
from minigpt_np.resume import training_state
from ppo_np import ppo as trainer_module
from tiny_run import assert_one_line_refusal, fixture_corpus, kill_ppo_in_step, run_cli, snapshot, tiny_args


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, built_runs):
    """A finished tiny run, tmp/runs/done: (tmp folder, corpus path); copy its run folder before changing it."""
    tmp = tmp_path_factory.mktemp("finished")
    built_runs.copy(tmp, "done")
    return tmp, built_runs.corpus


def copy_run(finished_run, tmp_path, name="copy"):
    tmp, corpus = finished_run
    shutil.copytree(tmp / "runs" / "done", tmp_path / "runs" / name)
    return tmp_path / "runs" / name, corpus


# ---------------------------------------------------------------------------------------------- --name


@pytest.mark.parametrize("name", ["../../somedir", "/tmp/elsewhere", "", ".", "..", "a/b"])
def test_name_must_be_one_folder_name_and_nothing_outside_the_runs_dir_changes(tmp_path, capsys, name):
    corpus = fixture_corpus(tmp_path / "reviews.csv")
    (tmp_path / "samples.md").write_text("a user's own file")         # planted beside runs/
    before = snapshot(tmp_path)
    status, err = run_cli(capsys, tiny_args(tmp_path, name, corpus))
    assert_one_line_refusal(status, err, 2, "--name must be one folder name")
    assert snapshot(tmp_path) == before, "a refused run changed files"


# ---------------------------------------------------------------------------------------------- changed options


@pytest.mark.parametrize("change, named", [
    (["--n-layer", "2"], "--n-layer: 1 -> 2"),
    (["--n-embd", "32"], "--n-embd: 16 -> 32"),
    (["--vocab-size", "320"], "--vocab-size: 300 -> 320"),
    (["--pretrain-steps", "31"], "--pretrain-steps: 30 -> 31"),
    (["--ppo-steps", "5"], "--ppo-steps: 4 -> 5"),
    (["--seed", "7"], "--seed: 0 -> 7"),
    (["--lr", "0.001"], "--lr: 0.0002 -> 0.001"),
    (["--eval-prompts", "2"], "--eval-prompts: 3 -> 2"),       # it decides which prompts PPO trained on
])
def test_a_finished_run_refuses_changed_options_naming_old_and_new(finished_run, tmp_path, capsys, change, named):
    run_dir, corpus = copy_run(finished_run, tmp_path)
    before = snapshot(run_dir)
    status, err = run_cli(capsys, tiny_args(tmp_path, "copy", corpus, *change))
    assert_one_line_refusal(status, err, 1, named, "--name", "--restart")
    assert snapshot(run_dir) == before, "a refused run changed the run folder"


def test_another_corpus_is_refused_and_options_that_shape_nothing_may_change(finished_run, tmp_path, capsys):
    run_dir, corpus = copy_run(finished_run, tmp_path)
    other = tmp_path / "other.csv"
    other.write_text(corpus.read_text().replace("terrific", "splendid"))
    status, err = run_cli(capsys, tiny_args(tmp_path, "copy", other))
    assert_one_line_refusal(status, err, 1, "corpus sha256")
    # --quiet, --checkpoint-every and the time budgets only say how to run, not what is built
    status, err = run_cli(capsys, tiny_args(tmp_path, "copy", corpus, "--checkpoint-every", "3",
                                            "--pretrain-seconds", "5"))
    assert status == 0, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["built_with"]["ppo"]["--ppo-steps"] == 4 and summary["built_with"]["pretrain"]["--n-layer"] == 1


def test_restart_rebuilds_a_stage_and_what_is_built_on_it(finished_run, tmp_path, capsys):
    run_dir, corpus = copy_run(finished_run, tmp_path)
    pretrained = (run_dir / "gpt_pretrained.npz").stat().st_mtime_ns
    status, err = run_cli(capsys, tiny_args(tmp_path, "copy", corpus, "--ppo-steps", "5", "--restart", "ppo"))
    assert status == 0, err
    assert training_state(run_dir / "gpt_ppo.npz")["step"] == 5
    assert len((run_dir / "ppo_log.jsonl").read_text().splitlines()) == 5
    assert (run_dir / "gpt_pretrained.npz").stat().st_mtime_ns == pretrained, "--restart ppo rebuilt pretraining"
    assert json.loads((run_dir / "summary.json").read_text())["built_with"]["ppo"]["--ppo-steps"] == 5


def test_a_killed_ppo_run_refuses_to_resume_with_other_options(tmp_path, capsys, monkeypatch):
    corpus = fixture_corpus(tmp_path / "reviews.csv")
    real_step = kill_ppo_in_step(monkeypatch, 3)
    status, err = run_cli(capsys, tiny_args(tmp_path, "killed", corpus))
    assert status == 130 and "run the same command again to resume" in err
    monkeypatch.setattr(trainer_module.PPOTrainer, "step", real_step)
    for change, named in ((["--batch-size", "4"], "--batch-size: 8 -> 4"), (["--lr", "0.001"], "--lr"),
                          (["--init-kl-coef", "0.5"], "--init-kl-coef: 0.2 -> 0.5"),
                          (["--adaptive-kl"], "--adaptive-kl: False -> True")):
        status, err = run_cli(capsys, tiny_args(tmp_path, "killed", corpus, *change))
        assert_one_line_refusal(status, err, 1, named, "--restart ppo")
    status, err = run_cli(capsys, tiny_args(tmp_path, "killed", corpus))
    assert status == 0, err


# ---------------------------------------------------------------------------------------------- foreign files


def test_foreign_artifacts_are_refused(finished_run, tmp_path, capsys):
    tmp, corpus = finished_run
    fresh = tmp_path / "runs" / "fresh"
    fresh.mkdir(parents=True)
    shutil.copy(tmp / "runs" / "done" / "gpt_pretrained.npz", fresh)
    status, err = run_cli(capsys, tiny_args(tmp_path, "fresh", corpus))
    assert_one_line_refusal(status, err, 1, "gpt_pretrained.npz was not made by this run")
    assert sorted(os.listdir(fresh)) == [".lock", "gpt_pretrained.npz"]

    run_dir, _ = copy_run(finished_run, tmp_path)
    (run_dir / "reward.npz").write_bytes((run_dir / "reward.npz").read_bytes()[:-10] + b"0123456789")
    status, err = run_cli(capsys, tiny_args(tmp_path, "copy", corpus))
    assert_one_line_refusal(status, err, 1, "reward.npz changed since this run wrote it", "--restart reward")


@pytest.mark.parametrize("main, replaced, by", [(cli.overopt_main, "reward.npz", "gold.npz"),
                                                (cli.compare_main, "gpt_pretrained.npz", "gpt_ppo.npz")])
def test_an_experiment_refuses_a_run_file_replaced_since_its_stage_wrote_it(finished_run, tmp_path, capsys, main,
                                                                           replaced, by):
    run_dir, _ = copy_run(finished_run, tmp_path)
    shutil.copy(run_dir / by, run_dir / replaced)
    before = snapshot(run_dir)
    status, err = run_cli(capsys, ["--name", "copy", "--runs-dir", str(tmp_path / "runs"), "--quiet"], main=main)
    assert_one_line_refusal(status, err, 1, f"{replaced} changed since this run wrote it", "--restart")
    assert snapshot(run_dir) == before, "a refused experiment wrote files"


def test_a_tokenizer_of_another_vocabulary_is_refused_beside_the_model(finished_run, tmp_path):
    from minichatgpt.run import stages
    from minigpt_np.data import build_tokenizer
    run_dir, _ = copy_run(finished_run, tmp_path)
    other = build_tokenizer(["just a few words of text"] * 3, vocab_size=270)
    with pytest.raises(stages.Refused, match="vocabulary of .* tokens but the run's tokenizer.json has 2"):
        stages.load_pretrained(str(run_dir), other)


# ---------------------------------------------------------------------------------------------- the PPO log


def test_a_deleted_or_damaged_log_refuses_instead_of_reporting_zero_steps(finished_run, tmp_path, capsys):
    run_dir, corpus = copy_run(finished_run, tmp_path)
    (run_dir / "ppo_log.jsonl").unlink()
    status, err = run_cli(capsys, tiny_args(tmp_path, "copy", corpus))
    assert_one_line_refusal(status, err, 1, "ppo_log.jsonl is missing", "--restart ppo")
    run_dir, corpus = copy_run(finished_run, tmp_path, "torn")
    log = run_dir / "ppo_log.jsonl"
    log.write_text(log.read_text()[:-40])        # a torn last line
    status, err = run_cli(capsys, tiny_args(tmp_path, "torn", corpus))
    assert_one_line_refusal(status, err, 1, "ppo_log.jsonl", "--restart ppo")


def test_a_killed_run_whose_log_was_deleted_refuses_with_the_file_named(tmp_path, capsys, monkeypatch):
    corpus = fixture_corpus(tmp_path / "reviews.csv")
    real_step = kill_ppo_in_step(monkeypatch, 3)
    run_cli(capsys, tiny_args(tmp_path, "k", corpus))
    monkeypatch.setattr(trainer_module.PPOTrainer, "step", real_step)
    (tmp_path / "runs" / "k" / "ppo_log.jsonl").unlink()
    status, err = run_cli(capsys, tiny_args(tmp_path, "k", corpus))
    assert_one_line_refusal(status, err, 1, "ppo_log.jsonl is missing", "--restart ppo")


# ---------------------------------------------------------------------------------------------- two processes


def start_run(tmp_path, corpus, name, *extra):
    code = "import sys; from minichatgpt.commands.cli import main; main(sys.argv[1:])"
    return subprocess.Popen([sys.executable, "-c", code, *tiny_args(tmp_path, name, corpus, *extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)


def wait_for_lock(lock, proc, timeout=60):
    start = time.time()
    while time.time() - start < timeout:
        if lock.exists() and lock.read_text().strip() == str(proc.pid):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the first process never took the lock")


def test_a_second_process_on_the_same_folder_is_refused_and_the_first_finishes(tmp_path, capsys):
    corpus = fixture_corpus(tmp_path / "reviews.csv")
    first = start_run(tmp_path, corpus, "shared")
    wait_for_lock(tmp_path / "runs" / "shared" / ".lock", first)
    status, err = run_cli(capsys, tiny_args(tmp_path, "shared", corpus))
    assert_one_line_refusal(status, err, 1, f"in use by another minichatgpt process (pid {first.pid})")
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    log = (tmp_path / "runs" / "shared" / "ppo_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [1, 2, 3, 4]


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path, capsys):
    corpus = fixture_corpus(tmp_path / "reviews.csv")
    first = start_run(tmp_path, corpus, "stale")
    wait_for_lock(tmp_path / "runs" / "stale" / ".lock", first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    status, err = run_cli(capsys, tiny_args(tmp_path, "stale", corpus))
    assert status == 0, err


# ---------------------------------------------------------------------------------------------- options checked first


@pytest.mark.parametrize("extra, message", [
    (["--ppo-steps", "0"], "--ppo-steps must be >= 1"),
    (["--ppo-steps", "-3"], "--ppo-steps must be >= 1"),
    (["--ppo-seconds", "-1"], "--ppo-seconds must be > 0"),
    (["--response-tokens", "0"], "--response-tokens must be >= 1"),
    (["--checkpoint-every", "0"], "--checkpoint-every must be >= 1"),
    (["--eval-prompts", "0"], "--eval-prompts must be >= 1"),
    (["--init-kl-coef", "nan"], "--init-kl-coef must be a finite number"),
    (["--lr", "inf"], "--lr must be a finite number"),
    (["--batch-size", "20", "--forward-batch-size", "8"], "--batch-size 20 must be a multiple of --forward-batch-size 8"),
    (["--batch-size", "8", "--mini-batch-size", "3"], "--batch-size 8 must be a multiple of --mini-batch-size 3"),
    (["--response-tokens", "30"], "exceed --block-size 32"),
    (["--n-embd", "15"], "--n-embd 15 must be a multiple of --n-head 2"),
    (["--restart", "everything"], "argument --restart: invalid choice"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_every_option_is_checked_before_any_work(tmp_path, capsys, extra, message):
    corpus = fixture_corpus(tmp_path / "reviews.csv")
    start = time.perf_counter()
    status, err = run_cli(capsys, tiny_args(tmp_path, "checked", corpus, *extra))
    assert_one_line_refusal(status, err, 2, message, "--help")
    assert time.perf_counter() - start < 5 and not (tmp_path / "runs").exists(), "work started before the refusal"


def test_a_low_pretraining_learning_rate_is_accepted():
    args = cli.pipeline_parser().parse_args(["--pretrain-lr", "1e-4"])
    assert cli.checked_config(args).pretrain.lr == 1e-4


def test_debug_shows_the_traceback(tmp_path, capsys):
    corpus = fixture_corpus(tmp_path / "reviews.csv")
    open(tmp_path / "empty.csv", "w").close()
    status, err = run_cli(capsys, tiny_args(tmp_path, "e", tmp_path / "empty.csv"))
    assert_one_line_refusal(status, err, 1, "empty.csv: the file is empty")
    with pytest.raises(ValueError, match="the file is empty"):
        cli.main(tiny_args(tmp_path, "e", tmp_path / "empty.csv", "--debug"))
    assert corpus.exists()


# ---------------------------------------------------------------------------------------------- data


def test_duplicate_rows_are_removed_before_the_split_and_counted(tmp_path, capsys):
    rows = fixture_corpus(tmp_path / "base.csv").read_text().splitlines()
    body = rows[1:]
    no_movie = ["text,label"] + [",".join(r.split(",")[:-1]) for r in body]
    dup = tmp_path / "dup.csv"
    dup.write_text("\n".join(no_movie + [r.upper().replace("FRESH", "fresh").replace("ROTTEN", "rotten")
                                         for r in no_movie[1:]] + no_movie[1:]) + "\n")
    status, err = run_cli(capsys, tiny_args(tmp_path, "dup", dup))
    assert status == 0, err
    summary = json.loads((tmp_path / "runs" / "dup" / "summary.json").read_text())
    assert summary["data"]["duplicates_removed"] == 2 * len(body) and summary["data"]["snippets"] == 3 * len(body)


def test_a_corpus_too_small_is_refused_up_front_saying_how_many_rows(tmp_path, capsys):
    small = tmp_path / "small.csv"
    small.write_text("\n".join(fixture_corpus(tmp_path / "base.csv").read_text().splitlines()[:61]) + "\n")
    status, err = run_cli(capsys, tiny_args(tmp_path, "small", small))
    assert_one_line_refusal(status, err, 1, "the corpus is too small", "labelled rows")
    assert not any(f.endswith((".npz", ".json")) for f in os.listdir(tmp_path / "runs" / "small"))


# ---------------------------------------------------------------------------------------------- sampling and step


@pytest.mark.parametrize("extra, message", [
    (["--top-p", "0"], "--top-p 0.0 is out of range"),
    (["--temperature", "nan"], "--temperature nan is out of range"),
    (["--top-k", "-5"], "--top-k -5 is out of range"),
    (["--max-new-tokens", "0"], "--max-new-tokens 0 is out of range"),
])
def test_sample_refuses_nonsense(finished_run, capsys, extra, message):
    tmp, _ = finished_run
    status, err = run_cli(capsys, [str(tmp / "runs" / "done"), *extra], main=cli.sample_main)
    assert_one_line_refusal(status, err, 2, message)


def test_sample_takes_a_run_folder(finished_run, capsys):
    tmp, _ = finished_run
    cli.sample_main([str(tmp / "runs" / "done"), "--n", "2", "--prompt", "the heist"])
    out = capsys.readouterr().out
    assert out.count("the heist") == 2, out


def test_generate_refuses_nonsense():
    import minigpt_np as mg
    model = mg.GPT(mg.GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=1, n_embd=4))
    idx = np.ones((1, 2), dtype=np.int64)
    for kwargs, message in ((dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
                            (dict(temperature=float("nan")), "temperature"), (dict(top_k=-5), "top_k"),
                            (dict(max_new_tokens=0), "max_new_tokens")):
        with pytest.raises(ValueError, match=message):
            mg.generate(model, idx, **{"max_new_tokens": 3, **kwargs})
    assert mg.generate(model, idx, 3, top_k=0, top_p=1.0, seed=0).shape == (1, 5)   # 0 and 1 switch them off


def test_ppo_step_refuses_float_ids_and_2d_queries():
    import minigpt_np as mg
    from ppo_np import PPOConfig, PPOTrainer
    cfg = mg.GPTConfig(vocab_size=11, block_size=12, n_layer=1, n_head=1, n_embd=4)
    policy, ref = mg.GPT(cfg), mg.GPT(cfg)
    policy.add_value_head()
    trainer = PPOTrainer(policy, ref, PPOConfig(batch_size=2, forward_batch_size=2, mini_batch_size=2))
    queries, responses = [np.array([1, 2]), np.array([3])], [np.array([4, 5]), np.array([6])]
    with pytest.raises(ValueError, match="token ids must be integers"):
        trainer.step([np.array([1.0, 2.5]), queries[1]], responses, [0.0, 1.0])
    with pytest.raises(ValueError, match="1-D array"):
        trainer.step([np.array([[1, 2]]), queries[1]], responses, [0.0, 1.0])
    with pytest.raises(ValueError, match="outside"):
        trainer.step(queries, [np.array([4, 11]), responses[1]], [0.0, 1.0])


def test_the_pretrain_command_takes_plain_unlabelled_text(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("\n".join(f"line {i} of a plain text file about films and stories" for i in range(300)) + "\n")
    cli.pretrain_main(["--corpus", str(text), "--out-dir", str(tmp_path / "pt"), "--vocab-size", "300",
                       "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "32",
                       "--pretrain-steps", "5", "--samples", "0", "--quiet"])
    assert (tmp_path / "pt" / "gpt_pretrained.npz").exists() and "done: 5 updates" in capsys.readouterr().out


def test_a_missing_corpus_or_checkpoint_is_a_usage_error_and_creates_nothing(tmp_path, capsys):
    status, err = run_cli(capsys, tiny_args(tmp_path, "nx", tmp_path / "absent.csv"))
    assert_one_line_refusal(status, err, 2, "--corpus", "no such file or folder")
    status, err = run_cli(capsys, [str(tmp_path / "absent.npz")], main=cli.sample_main)
    assert_one_line_refusal(status, err, 2, "absent.npz: no such file or folder")
    (tmp_path / "log.jsonl").write_text("{}\n")
    status, err = run_cli(capsys, [str(tmp_path / "log.jsonl")], main=cli.sample_main)
    assert_one_line_refusal(status, err, 2, "is not a model checkpoint")
    status, err = run_cli(capsys, ["--name", "nothing", "--runs-dir", str(tmp_path / "runs"), "--quiet"],
                          main=cli.overopt_main)
    assert_one_line_refusal(status, err, 1, "no such run folder")
    assert not (tmp_path / "runs").exists(), "a refusal created a run folder"


def test_a_dict_an_experiment_recorded_as_text_matches_whatever_the_order_of_its_keys():
    """An experiment's manifest keeps each setting as its text (the run's PPO settings as a dict's text), so a config
    whose fields are declared in another order must still match; another value must not (the negative control)."""
    from minichatgpt.run.run_folder import changed
    stored = {"run ppo": str({"lr": 0.0002, "ppo_epochs": 2, "seed": 0}), "budget": "256"}
    reordered = {"run ppo": str({"lr": 0.0002, "seed": 0, "ppo_epochs": 2}), "budget": "256"}
    assert changed(stored, reordered) == []
    other = {"run ppo": str({"lr": 0.0002, "seed": 1, "ppo_epochs": 2}), "budget": "256"}
    assert changed(stored, other) == [f"run ppo: {stored['run ppo']} -> {other['run ppo']}"]
    assert changed(stored, {**reordered, "budget": "512"}) == ["budget: 256 -> 512"]
