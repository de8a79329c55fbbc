"""The commands beside the main job never write into a run folder they do not own, refuse what they would ignore,
say what they mix, and describe what they load.

- minichatgpt-reward and minichatgpt-export refuse an output inside a run folder, a link, a folder where a file is
  meant and an empty path, in one line, before any work; the run folder stays byte-identical.
- The sweep works in the run's lock, measures on the prompts --eval-prompts asks for, and refuses in one line.
- Plain overopt on a GPT reward model run labels the kind of every scorer; --cross-kind refuses --proxy-sizes.
- The exported model card describes the model as loaded; the exported files share one mode, and generation inside
  the context is silent in transformers.
"""
import importlib.util
import io
import json
import logging
import os
import stat
import sys

import pytest

from minichatgpt.commands import cli

from minichatgpt.settings import config
from minichatgpt.run.finished_run import Experiment
from minichatgpt.run.run_folder import Refused
from tiny_run import assert_one_line_refusal, run_cli, snapshot, tiny_args

GPT = ("--reward-model", "gpt")
OVEROPT = ["--proxy-sizes", "10", "--prompts", "2", "--n-max", "2", "--rl-steps", "2", "--eval-every", "1", "--quiet"]


def where(run_dir):
    return ["--runs-dir", str(run_dir.parent), "--name", run_dir.name]


def sweep_module():
    spec = importlib.util.spec_from_file_location("sweep", config.__file__.replace("minichatgpt/settings/config.py",
                                                                                   "scripts/sweep.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_sweep(capsys, monkeypatch, sweep, argv):
    """-> (exit status, stderr) of scripts/sweep.py run with argv, as a shell runs it."""
    monkeypatch.setattr(sys, "argv", ["sweep.py", *argv])
    try:
        sweep.main()
        status = 0
    except SystemExit as e:
        status = e.code
    return status, capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- minichatgpt-reward


def test_the_reward_command_never_writes_into_a_run_folder(built_runs, tmp_path, capsys):
    run_dir = built_runs.copy(tmp_path, "r")
    before = snapshot(run_dir)
    reward = ["--corpus", str(built_runs.corpus), "--quiet"]
    for flags, fragment in ((["--out", str(run_dir / "reward.npz")], "is inside the run folder"),
                            (["--out", str(tmp_path / "elsewhere.npz"), "--metrics", str(run_dir / "summary.json")],
                             "--metrics"),
                            (["--out", str(run_dir / "compare" / "proxy.npz")], "is inside the run folder"),
                            (["--out", str(tmp_path)], "is a folder"),
                            (["--out", ""], "--out is empty")):
        status, err = run_cli(capsys, reward + flags, cli.reward_main)
        assert_one_line_refusal(status, err, 2, fragment)
        assert ".tmp" not in err
    assert snapshot(run_dir) == before, "minichatgpt-reward wrote into a finished run"
    assert not (tmp_path / "elsewhere.npz").exists()


# ---------------------------------------------------------------------------------------------- the sweep


def test_the_sweep_holds_the_runs_lock_and_measures_the_prompts_it_is_asked_for(built_runs, tmp_path, capsys,
                                                                               monkeypatch):
    run_dir = built_runs.copy(tmp_path, "s")
    sweep = sweep_module()
    real_train, restarts = sweep.train_run, []

    def meanwhile(*args, **kwargs):   # another process restarts the run while the sweep trains on it
        restarts.append(run_cli(capsys, tiny_args(tmp_path, "s", built_runs.corpus, "--restart", "pretrain")))
        return real_train(*args, **kwargs)
    monkeypatch.setattr(sweep, "train_run", meanwhile)
    pretrained = (run_dir / "gpt_pretrained.npz").read_bytes()
    assert run_sweep(capsys, monkeypatch, sweep, where(run_dir) + ["--", "--ppo-steps 1 --eval-prompts 2"])[0] == 0
    (status, err), = restarts
    assert_one_line_refusal(status, err, 1, "in use by another minichatgpt process")
    assert (run_dir / "gpt_pretrained.npz").read_bytes() == pretrained
    row, = [json.loads(line) for line in (run_dir / "sweep.jsonl").read_text().splitlines()]
    assert row["n"] == row["eval_prompts"] == 2, "the sweep measured on other prompts than it was asked for"


def test_the_sweep_refuses_in_one_line_before_any_work(built_runs, tmp_path, capsys, monkeypatch):
    run_dir = built_runs.copy(tmp_path, "s")
    sweep = sweep_module()
    before = snapshot(run_dir)
    for argv, status, fragment in (
            (["--runs-dir", str(run_dir.parent), "--name", "nothing", "--", "--lr 1e-4"], 1, "no such run folder"),
            (["--runs-dir", str(run_dir.parent), "--name", "../x", "--", "--lr 1e-4"], 2, "--name must be one"),
            (where(run_dir) + ["--out", str(tmp_path), "--", "--lr 1e-4"], 2, "is a folder"),
            (where(run_dir) + ["--out", str(run_dir / "gpt_ppo.npz"), "--", "--lr 1e-4"], 2, "inside the run folder"),
            (where(run_dir) + ["--", "--eval-prompts 4"], 2, "--eval-prompts 4 is more than the run's 3"),
            (where(run_dir) + ["--", "--lr 1e-4", "--method reinforce --ppo-epochs 3"], 2, "--ppo-epochs 3 changes "
             "nothing with --method reinforce")):
        assert_one_line_refusal(*run_sweep(capsys, monkeypatch, sweep, argv), status, fragment)
    assert snapshot(run_dir) == before and not (run_dir / "sweep.jsonl").exists()


# ---------------------------------------------------------------------------------------------- overopt


def test_plain_overopt_on_a_gpt_reward_model_run_says_the_kind_of_every_scorer(built_runs, tmp_path, capsys):
    run_dir = built_runs.copy(tmp_path, "g", *GPT)
    cli.overopt_main(where(run_dir) + OVEROPT)
    out = capsys.readouterr().out
    scorers = json.loads((run_dir / "overopt.json").read_text())["scorers"]
    assert {name: s["kind"] for name, s in scorers.items()} == {"full": "gpt", "10": "ngram", "gold": "ngram",
                                                                 "lexicon": "lexicon"}
    assert "proxy full  (GPT reward model; gold gold)" in out and "proxy 10    (n-gram; gold gold)" in out
    legend = []                                   # the plot's legend names each curve's kind
    import matplotlib.axes
    real_plot = matplotlib.axes.Axes.plot

    def plot(self, *args, label=None, **kwargs):
        legend.append(label)
        return real_plot(self, *args, label=label, **kwargs)
    matplotlib.axes.Axes.plot = plot
    try:
        from minichatgpt.evaluation.report import write_overopt_plot
        write_overopt_plot(json.loads((run_dir / "overopt.json").read_text()), str(tmp_path / "plot.png"))
    finally:
        matplotlib.axes.Axes.plot = real_plot
    assert any("proxy full (GPT reward model" in str(label) for label in legend), legend
    assert any("proxy 10 (n-gram" in str(label) for label in legend), legend


def test_cross_kind_refuses_proxy_sizes_and_its_refusals_name_the_command_that_makes_it(built_runs, tmp_path,
                                                                                        capsys):
    run_dir = built_runs.copy(tmp_path, "c")
    before = snapshot(run_dir)
    status, err = run_cli(capsys, where(run_dir) + ["--cross-kind"] + OVEROPT, cli.overopt_main)
    assert_one_line_refusal(status, err, 2, "--proxy-sizes", "--cross-kind")
    assert snapshot(run_dir) == before
    (run_dir / "overopt_cross").mkdir()
    (run_dir / "overopt_cross" / "manifest.json").write_text(json.dumps(
        {"stages": {"overopt_cross": {"built_from": {"prompts": "2"}, "finished": False}}}))
    with pytest.raises(Refused, match=r"--prompts: 2 -> 3; delete .* to run minichatgpt-overopt --cross-kind "
                                      r"--runs-dir \S+ --name c with these settings"):
        Experiment(str(run_dir), "overopt_cross", {"prompts": "3"}, {"prompts": "--prompts"})


# ---------------------------------------------------------------------------------------------- export


def export(capsys, run_dir, *argv):
    return run_cli(capsys, [*where(run_dir), *argv], cli.export_main)


def test_export_refuses_outputs_it_cannot_write_as_given_in_one_line(built_runs, tmp_path, capsys):
    run_dir = built_runs.copy(tmp_path, "e")
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "empty", target_is_directory=True)
    before = snapshot(run_dir)
    for out, fragment in ((str(tmp_path / "link"), "is a symbolic link"), ("", "OUT_DIR is empty"),
                          (str(run_dir / "compare"), "is inside the run folder"),
                          (str(run_dir / "hf"), "is inside the run folder")):
        status, err = export(capsys, run_dir, out)
        assert_one_line_refusal(status, err, 2, fragment)
        assert ".tmp" not in err
    assert snapshot(run_dir) == before and os.listdir(tmp_path / "empty") == []


def test_the_model_card_describes_the_model_as_loaded(built_runs, tmp_path, capsys):
    run_dir = built_runs.copy(tmp_path, "e")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["stages"]["report"]["built_from"]["config"]["model"]["n_layer"] = 4     # nothing checks the config
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    assert export(capsys, run_dir, str(tmp_path / "hf"))[0] == 0
    card = (tmp_path / "hf" / "README.md").read_text()
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["n_layer"] == 1
    assert "1 layers" in card and "4 layers" not in card and "30 steps (max_steps)" in card
    modes = {name: stat.S_IMODE(os.stat(tmp_path / "hf" / name).st_mode) for name in os.listdir(tmp_path / "hf")}
    assert len(set(modes.values())) == 1, f"the exported files have different modes: {modes}"


def logged_by_generate(model, **kwargs):
    """What transformers logs while `model` generates after a 3-token prompt -> (text, length of the output)."""
    import torch
    logged = io.StringIO()
    handler = logging.StreamHandler(logged)
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        with torch.no_grad():
            out = model.generate(torch.tensor([[5, 6, 7]]), attention_mask=torch.ones(1, 3, dtype=torch.long),
                                 do_sample=False, **kwargs)
    finally:
        logger.removeHandler(handler)
    return logged.getvalue(), out.shape[1]


def test_generation_inside_the_context_is_silent_and_the_default_stays_inside_it(built_runs, tmp_path, capsys):
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoModelForCausalLM
    run_dir, _ = built_runs()
    assert export(capsys, run_dir, str(tmp_path / "hf"))[0] == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    said, length = logged_by_generate(model, max_new_tokens=4)
    assert said == "" and length == 7, said
    said, length = logged_by_generate(model)
    assert said == "" and length <= model.config.n_positions
    # negative control: a generation config holding max_length makes the same call warn
    model.generation_config.max_length = model.config.n_positions
    said, _ = logged_by_generate(model, max_new_tokens=4)
    assert "max_new_tokens" in said and "max_length" in said, said


def test_an_error_on_a_temporary_file_names_the_file_the_user_gave():
    from minichatgpt.commands.entry import message_of
    error = OSError(2, "No such file or directory", "/proc/x.4242.tmp")
    assert message_of(error) == "/proc/x: No such file or directory"


# ---------------------------------------------------------------------------------------------- minichatgpt-pretrain


def test_pretrain_into_a_run_of_the_main_job_names_only_its_own_options_and_never_advises_deleting_it(
        built_runs, tmp_path, capsys):
    run_dir = built_runs.copy(tmp_path, "r")
    before = snapshot(run_dir)
    status, err = run_cli(capsys, ["--out-dir", str(run_dir), "--corpus", str(built_runs.corpus), "--vocab-size", "300",
                                   "--n-layer", "2", "--n-head", "2", "--n-embd", "16", "--block-size", "32",
                                   "--pretrain-steps", "30", "--samples", "0", "--quiet"], cli.pretrain_main)
    assert_one_line_refusal(status, err, 1, "--n-layer: 1 -> 2", "use another --out-dir")
    assert "delete" not in err and "--batch-size" not in err and "--eval-prompts" not in err
    assert snapshot(run_dir) == before
