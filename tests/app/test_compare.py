"""The method comparison: the same budget of generated responses for PPO, RLOO, GRPO, REINFORCE, DPO and best-of-n
(each trained method takes its own optimizer steps), and the compare command end to end with a resume after a kill."""
import json

import numpy as np
import pytest

import ppo_np
from minichatgpt.commands import cli
from minichatgpt.experiments import compare
from minichatgpt.loop import methods
from minichatgpt.settings.config import PPO, SAMPLING, CompareConfig, method_defaults
from minichatgpt.run.run_folder import Lock
from ppo_np.grpo import GRPOTrainer
from ppo_np.ppo import PPOTrainer

from tiny_run import fixture_corpus, kill_in_step, tiny_args

# 4 steps of 8 responses; 2 held-out prompts (the tiny run has 3), so best-of-n takes n = 16 samples of each
TINY = ["--budget", "32", "--batch-size", "8", "--eval-prompts", "2", "--eval-every", "2", "--quiet"]
TRAINED = ("ppo", "rloo", "grpo", "reinforce", "dpo")


def test_every_trained_method_generates_and_scores_the_same_responses_though_their_optimizer_steps_differ():
    cfg = CompareConfig()
    configs = compare.trainer_configs(cfg, PPO, SAMPLING.response_tokens)
    assert set(configs) == {"ppo", "rloo", "grpo", "reinforce", "dpo"}
    budget = {}
    for name, config in configs.items():
        group = methods.group_size(name, config)
        if ppo_np.METHODS[name].pairs:   # DPO: batch_size pairs a step, two reference samples each, sampled up front
            budget[name] = cfg.steps * 2 * config.batch_size
        else:                  # batch_size / group prompts a step, group responses each
            prompts = config.batch_size // group
            assert prompts * group == config.batch_size, name
            budget[name] = cfg.steps * prompts * group
    assert set(budget.values()) == {cfg.budget}, budget

    def optimizer_steps(name):   # from the skeleton's own fields: mini-batches per step / mini-batches per AdamW step
        method, config = ppo_np.METHODS[name], configs[name]
        epochs = getattr(config, method.epochs) if method.epochs else 1
        per_update = method.minibatches_per_update(config) if method.minibatches_per_update else 1
        return cfg.steps * epochs * (config.batch_size // config.mini_batch_size) // per_update
    steps = {name: optimizer_steps(name) for name in configs}
    # n steps of the batch, e epochs, 4 mini-batches of 16 in a batch of 64 (DPO: 8 of 4 pairs in 32 pairs): PPO, RLOO
    # and DPO step per mini-batch, GRPO per pass over the batch, REINFORCE per batch
    n, e = cfg.budget // cfg.batch_size, cfg.epochs
    assert (n, e, cfg.batch_size) == (92, 2, 64), "the compare defaults changed: write the counts below again"
    assert steps == {"ppo": n * e * 4, "rloo": n * e * 4, "grpo": n * e, "reinforce": n, "dpo": n * e * 4}, steps


@pytest.mark.parametrize("change, message", [
    (dict(budget=100), "budget 100 must be a multiple of batch_size 64"),
    (dict(batch_size=62, budget=124 * 32), "batch_size 62 must be a multiple of methods.rloo_k 4"),
    (dict(methods={**method_defaults(), "rloo_k": 1}), "methods.rloo_k 1 is out of range: methods.rloo_k must be >= 2"),
    (dict(eval_prompts=300), "must be a multiple of eval_prompts 300"),
    (dict(budget=256, batch_size=64, eval_prompts=256), "at least twice it"),
    (dict(lr=float("nan")), "lr must be a finite number > 0"),
])
def test_settings_that_cannot_give_every_method_the_same_budget_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        CompareConfig(**change)


def test_only_the_first_step_is_traced_and_each_records_its_responses():
    calls = []

    def step(stream, rng):
        calls.append(len(np.ones(1000)))        # allocates 8 kB
        return {}
    wrapped = compare.measured(step, 8)
    first, second = wrapped(None, None), wrapped(None, None)
    assert 0.007 < first["memory/step_peak_mb"] < 1 and "memory/step_peak_mb" not in second
    assert first["compare/responses"] == second["compare/responses"] == 8 and len(calls) == 2


def logs(run_dir):
    """Each trained method's log, without the keys that depend on the machine (time, memory)."""
    return {m: [{k: v for k, v in json.loads(line).items() if not k.startswith(("time/", "memory/"))}
                for line in (run_dir / "compare" / f"{m}.jsonl").read_text().splitlines()] for m in TRAINED}


def without_costs(results):
    return {**results, "methods": {m: {k: v for k, v in r.items() if k not in ("wall_seconds", "peak_mb")}
                                   for m, r in results["methods"].items()}}


def test_compare_command_end_to_end_with_resume_after_a_kill(tmp_path, capsys, monkeypatch):
    corpus = fixture_corpus(tmp_path / "reviews.csv")
    cli.run_main(tiny_args(tmp_path, "run", corpus))
    run_dir = tmp_path / "runs" / "run"
    where = ["--name", "run", "--runs-dir", str(tmp_path / "runs")]
    kill_in_step(monkeypatch, GRPOTrainer, 3)     # PPO and RLOO done; GRPO killed after its step-2 checkpoint
    with pytest.raises(SystemExit):
        cli.compare_main(where + TINY)
    assert "interrupted" in capsys.readouterr().err
    monkeypatch.undo()
    counted = {"ppo": [], "grpo": []}
    for name, trainer_class in (("ppo", PPOTrainer), ("grpo", GRPOTrainer)):
        def count(self, *args, _name=name, _real=trainer_class.step, **kwargs):
            counted[_name].append(1)
            return _real(self, *args, **kwargs)
        monkeypatch.setattr(trainer_class, "step", count)
    cli.compare_main(where + TINY)
    assert {k: len(v) for k, v in counted.items()} == {"ppo": 0, "grpo": 2}, "the resumed comparison redid work"
    monkeypatch.undo()
    out = capsys.readouterr().out
    results = json.loads((run_dir / "compare.json").read_text())
    assert (run_dir / "compare.png").stat().st_size > 10000
    table = (run_dir / "compare.md").read_text()
    for label in ("reference", "PPO", "RLOO", "GRPO", "REINFORCE", "DPO", "best-of-n"):
        assert f" {label} |" in table and f" {label} |" in out, f"the table does not name {label}"
    assert "Bradley-Terry" in out and set(results["methods"]) == {*ppo_np.METHODS, "best_of_n"}

    # the same budget of generated responses: from each trained method's log, DPO's pairs and best-of-n's samples
    budget, batch = 32, 8
    for name, records in logs(run_dir).items():
        assert sum(r.get("compare/responses", 0) for r in records) == budget, name
        assert [r["step"] for r in records] == [0, 1, 2, 3, 4], name
        assert [r["step"] for r in records if "eval/gold_mean" in r] == [0, 2, 4], name
    pairs = json.loads((run_dir / "compare" / "dpo_pairs.json").read_text())["pairs"]
    assert sum(len(p["responses"]) for p in pairs) == budget and len(pairs) == budget // 2
    bon = json.loads((run_dir / "compare" / "best_of_n.json").read_text())
    assert bon["n"] * results["reference"]["n"] == bon["generated"] == budget
    assert {m: r["generated"] for m, r in results["methods"].items()} == {m: budget for m in (*ppo_np.METHODS, "best_of_n")}
    assert all(r["steps"] == budget // batch for m, r in results["methods"].items() if m != "best_of_n")
    assert all(r["peak_mb"] > 0 and r["wall_seconds"] > 0 for r in results["methods"].values())
    assert [p["n"] for p in results["methods"]["best_of_n"]["curve"]] == [1, 2, 4, 8, 16]

    # the resumed comparison equals one never interrupted
    again_dir = tmp_path / "again"
    cli.run_main(tiny_args(again_dir, "run", corpus))
    cli.compare_main(["--name", "run", "--runs-dir", str(again_dir / "runs")] + TINY)
    again = json.loads((again_dir / "runs" / "run" / "compare.json").read_text())
    assert without_costs(again) == without_costs(results)
    assert logs(again_dir / "runs" / "run") == logs(run_dir)

    # other settings on the same compare/ folder are refused, and so is a second process
    with pytest.raises(SystemExit) as e:
        cli.compare_main(where + TINY + ["--grpo-beta", "0.1"])
    assert e.value.code == 1 and "--grpo-beta: 0.25 -> 0.1" in capsys.readouterr().err
    with Lock(str(run_dir)), pytest.raises(SystemExit) as e:
        cli.compare_main(where + TINY)
    assert e.value.code == 1 and "in use by another minichatgpt process" in capsys.readouterr().err


def test_compare_refuses_an_unfinished_run_and_bad_options(tmp_path, capsys):
    (tmp_path / "runs" / "nothing").mkdir(parents=True)
    with pytest.raises(SystemExit) as e:
        cli.compare_main(["--name", "nothing", "--runs-dir", str(tmp_path / "runs"), "--quiet"])
    assert e.value.code == 1 and "is not a finished run" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.compare_main(["--name", "nothing", "--runs-dir", str(tmp_path / "runs"), "--budget", "100"])
    assert e.value.code == 2 and "--budget 100 must be a multiple of --batch-size 64" in capsys.readouterr().err
