"""scripts/rlhf_one_file.py is the real thing: given the same rollouts, its steps give the stats, weights and optimizer
state of ppo_np's PPOTrainer at the same settings, per tensor to 1e-12 at float64 (with negative controls); run on a
finished run it repeats the run's own log and policy; it reads the run without writing into it, and refuses, in one
line, an unfinished run, a run of another method and a bad command line."""
import dataclasses
import importlib.util
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

import minigpt_np as mg
from minichatgpt.commands import cli
from minichatgpt.run.finished_run import FinishedRun
from ppo_np import PPOConfig, PPOTrainer
from tiny_run import assert_one_line_refusal, fixture_corpus, kill_ppo_in_step, run_cli, snapshot, tiny_args

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "rlhf_one_file.py"
TOL = 1e-12


def load_script():
    spec = importlib.util.spec_from_file_location("rlhf_one_file", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


one_file = load_script()


def worst_relative(ours, theirs):
    """The largest ||a - b|| / ||b|| over the tensors both name (||a - b|| where b = 0; two nan agree)
    -> (error, name); a name only one side has is an infinite error."""
    errors = [(float("inf"), name) for name in set(ours) ^ set(theirs)]
    for name in set(ours) & set(theirs):
        a, b = np.asarray(ours[name], dtype=np.float64), np.asarray(theirs[name], dtype=np.float64)
        both_nan = np.isnan(a) & np.isnan(b)
        diff, size = np.linalg.norm(np.where(both_nan, 0.0, a - b).ravel()), np.linalg.norm(np.nan_to_num(b).ravel())
        errors.append((diff / size if size else diff, name))
    return max(errors)


def state_of(stats_per_step, policy, optimizer):
    """Every tensor a PPO run leaves: each step's stats ("step 2: ppo/loss/total"), without timings and the loop's env/
    and step keys, the weights and the optimizer's state (AdamW's t, per-parameter step counts, m and v)."""
    out = {f"step {i}: {k}": v for i, stats in enumerate(stats_per_step, start=1) for k, v in stats.items()
           if not k.startswith(("time/", "env/")) and k != "step"}
    return {**out, **{f"weight {k}": v for k, v in policy.state_dict().items()}, **optimizer.state_dict()}


def as_float64(model):
    copy = mg.GPT(model.cfg, dtype=np.float64)
    copy.load_state_dict(model.state_dict())
    return copy


def trainer_on(rollouts, policy, ref_model, cfg, pad_token_id):
    """ppo_np's PPOTrainer on the same rollouts -> the state it leaves."""
    trainer = PPOTrainer(policy, ref_model, cfg, pad_token_id=pad_token_id)
    stats = [trainer.step(queries, responses, scores) for queries, responses, scores in rollouts]
    return state_of(stats, policy, trainer.optimizer)


# ---------------------------------------------------------------------------------------------------------
# a step of the file against a step of the trainer


VOCAB = 13
CFG = mg.GPTConfig(vocab_size=VOCAB, block_size=16, n_layer=2, n_head=2, n_embd=8)
# every branch the step has: the adaptive controller, clipped scores, the global-norm clip, weight decay, two
# epochs, and an lr large enough that the ratio and the values leave their clip ranges
SETTINGS = PPOConfig(lr=3e-2, batch_size=8, forward_batch_size=4, mini_batch_size=4, ppo_epochs=2, adap_kl_ctrl=True,
                     init_kl_coef=0.3, target=0.5, horizon=50, cliprange=0.1, cliprange_value=0.1, score_clip=1.5,
                     max_grad_norm=1.0, weight_decay=0.01, seed=5)


def models():
    ref = mg.GPT(CFG, dtype=np.float64, seed=0)
    policy = mg.GPT(CFG, dtype=np.float64, seed=0)
    policy.add_value_head(seed=1)
    policy.training = ref.training = False
    return policy, ref


def rollouts(steps=3, B=8, seed=0):
    """Queries and responses of different lengths (a response of one token among them), scores beyond score_clip."""
    rng = np.random.default_rng(seed)
    return [([rng.integers(1, VOCAB, rng.integers(1, 5)) for _ in range(B)],
             [np.array([7])] + [rng.integers(1, VOCAB, rng.integers(1, 7)) for _ in range(B - 1)],
             2.0 * rng.normal(size=B)) for _ in range(steps)]


def one_file_on(batches, cfg):
    policy, ref = models()
    optimizer = mg.AdamW(policy.named_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng, kl_coef, stats = np.random.default_rng(cfg.seed), cfg.init_kl_coef, []
    for queries, responses, scores in batches:
        step_stats, kl_coef = one_file.ppo_step(policy, ref, optimizer, rng, cfg, kl_coef, queries, responses, scores,
                                                pad_token_id=0)
        stats.append(step_stats)
    return state_of(stats, policy, optimizer), stats


def test_three_steps_of_the_file_equal_the_trainers_stats_weights_and_optimizer_state():
    batches = rollouts()
    ours, stats = one_file_on(batches, SETTINGS)
    theirs = trainer_on(batches, *models(), SETTINGS, pad_token_id=0)
    error, name = worst_relative(ours, theirs)
    print(f"{len(theirs)} tensors, worst relative error {error:.2e} ({name})")
    assert error <= TOL, f"worst tensor {name}: relative error {error:.3e}"
    # the branches were taken: the clip bit on ratios and values, the controller moved
    assert max(s["ppo/policy/clipfrac"] for s in stats) > 0 and max(s["ppo/val/clipfrac"] for s in stats) > 0
    assert stats[-1]["objective/kl_coef"] != SETTINGS.init_kl_coef


@pytest.mark.parametrize("change", [dict(cliprange=0.2), dict(init_kl_coef=0.0), dict(vf_coef=0.2)],
                         ids=["another cliprange", "no KL term", "another vf_coef"])
def test_the_comparison_tells_a_changed_setting_apart(change):
    """Negative controls: the trainer at one other setting leaves tensors the comparison names as different."""
    batches = rollouts()
    ours, _ = one_file_on(batches, SETTINGS)
    theirs = trainer_on(batches, *models(), dataclasses.replace(SETTINGS, **change), pad_token_id=0)
    error, name = worst_relative(ours, theirs)
    print(f"{change}: worst relative error {error:.2e} ({name})")
    assert error > 1e-6, f"{change} went unnoticed: worst {error:.2e} ({name})"


# ---------------------------------------------------------------------------------------------------------
# main on a finished run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished tiny PPO run, a finished tiny GRPO run and a PPO run killed in its third step."""
    tmp = tmp_path_factory.mktemp("one_file")
    corpus = fixture_corpus(tmp / "reviews.csv")
    cli.run_main(tiny_args(tmp, "run", corpus))
    cli.run_main(tiny_args(tmp, "grpo", corpus, "--method", "grpo", "--grpo-group-size", "2"))
    with pytest.MonkeyPatch.context() as mp:
        kill_ppo_in_step(mp, 3)
        with pytest.raises(KeyboardInterrupt):
            cli.run_main(tiny_args(tmp, "killed", corpus))
    return tmp / "runs"


def where(runs_dir, name="run"):
    return ["--runs-dir", str(runs_dir), "--name", name]


def test_main_on_a_float64_policy_equals_the_trainer_on_its_own_rollouts(runs, monkeypatch):
    """main, in-process, with a float64 copy of the run's start: the trainer given the rollouts it sampled and
    scored, at the run's recorded settings, leaves the same stats, weights and optimizer state."""
    seen, real_step = [], one_file.ppo_step

    def recorded(policy, ref_model, optimizer, rng, cfg, kl_coef, queries, responses, scores, pad_token_id):
        seen.append(((list(queries), list(responses), np.array(scores)), optimizer, cfg, pad_token_id))
        return real_step(policy, ref_model, optimizer, rng, cfg, kl_coef, queries, responses, scores, pad_token_id)

    monkeypatch.setattr(one_file, "ppo_step", recorded)
    run = FinishedRun.open(str(runs / "run"))
    policy = as_float64(run.policy_start())
    history = one_file.main(where(runs) + ["--steps", "3"], model=policy)
    (_, optimizer, cfg, pad), rollouts_seen = seen[-1], [s[0] for s in seen]
    assert len(history) == 3 and cfg == run.config.ppo and pad == run.tokenizer.eos_token_id
    ours = state_of(history, policy, optimizer)

    def trainer_at(cfg):   # on the kernels the file ran (the run's own)
        with mg.kernels.using(run.config.kernels):
            return trainer_on(rollouts_seen, as_float64(run.policy_start()), as_float64(run.ref_model), cfg, pad)

    error, name = worst_relative(ours, trainer_at(run.config.ppo))
    print(f"worst relative error {error:.2e} ({name})")
    assert error <= TOL, f"worst tensor {name}: relative error {error:.3e}"
    error, name = worst_relative(ours, trainer_at(dataclasses.replace(run.config.ppo, init_kl_coef=0.0)))
    assert error > 1e-6, f"a dropped KL term went unnoticed: worst {error:.2e} ({name})"


def test_main_repeats_the_runs_log_and_policy_and_writes_only_into_out(runs, tmp_path, capsys):
    """Started from the run's own float32 policy, the file logs what the run's PPO stage logged, every stat but the
    timings and the judges' (gold, lexicon, collapse), and ends on its policy; the run folder is left untouched."""
    before = snapshot(runs / "run")
    out = tmp_path / "out"
    history = one_file.main(where(runs) + ["--out", str(out)])
    assert snapshot(runs / "run") == before
    assert sorted(os.listdir(out)) == ["gpt_ppo.npz", "ppo_log.jsonl"]
    with open(runs / "run" / "ppo_log.jsonl") as f:
        recorded = [json.loads(line) for line in f]
    with open(out / "ppo_log.jsonl") as f:
        assert [json.loads(line) for line in f] == history
    trainer_keys = {k for k in recorded[0] if k.startswith(("objective/", "ppo/"))}
    assert set(history[0]) == trainer_keys | {"env/reward_mean", "env/reward_positive", "step"}
    assert len(history) == len(recorded) == 4
    logged = {f"step {s['step']}: {k}": v for s in history for k, v in s.items()}
    error, name = worst_relative(logged, {f"step {s['step']}: {k}": s[k] for s in recorded for k in history[0]})
    weights = worst_relative(mg.load_checkpoint(str(out / "gpt_ppo.npz")).state_dict(),
                             mg.load_checkpoint(str(runs / "run" / "gpt_ppo.npz")).state_dict())
    print(f"log: {error:.2e} ({name}); weights: {weights[0]:.2e} ({weights[1]})")
    assert error <= TOL and weights[0] <= TOL, (name, weights[1])
    assert "largest relative difference 0 " in capsys.readouterr().out


def test_an_unfinished_run_a_run_of_another_method_and_bad_options_are_refused_in_one_line(runs, tmp_path, capsys):
    folders = {name: snapshot(runs / name) for name in ("run", "grpo", "killed")}
    status, err = run_cli(capsys, where(runs, "killed"), one_file.main)
    assert_one_line_refusal(status, err, 1, "is not a finished run", "ppo", "run minichatgpt", "--name killed")
    status, err = run_cli(capsys, where(runs, "grpo"), one_file.main)
    assert_one_line_refusal(status, err, 1, "is a finished grpo run", "--name grpo-ppo --method ppo")
    status, err = run_cli(capsys, where(runs, "missing"), one_file.main)
    assert_one_line_refusal(status, err, 1, "no such run folder", "--name of a run of minichatgpt")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    for argv, fragment in ((["--steps", "0"], "--steps must be a positive integer"),
                           (["--steps", "two"], "invalid int value"),
                           (["--lr", "1"], "unrecognized arguments"),
                           (["--out", str(runs / "run" / "mine")], "lies inside the run folder"),
                           (["--out", str(tmp_path / "full")], "is not an empty folder")):
        status, err = run_cli(capsys, where(runs) + argv, one_file.main)
        assert_one_line_refusal(status, err, 2, fragment)
    status, err = run_cli(capsys, ["--runs-dir", str(runs), "--name", "a/b"], one_file.main)
    assert_one_line_refusal(status, err, 2, "--name must be one folder name")
    assert {name: snapshot(runs / name) for name in folders} == folders


def test_the_file_names_every_section_of_docs_ppo_from_1_to_14_and_only_those():
    """Each equation sits beside a comment naming its section of docs/ppo.md: every section named exists there, with
    the title "Value term" the value gradient's comment sends the reader to, and sections 1 to 14 are all named."""
    doc = (ROOT / "docs" / "ppo.md").read_text()
    titles = dict(re.findall(r"^## (\d+)\. (.+)$", doc, flags=re.M))
    named = {int(n) for n in re.findall(r"[Ss]ection (\d+)", SCRIPT.read_text())}
    assert named == set(range(1, 15)) and named <= {int(n) for n in titles}, (sorted(named), sorted(titles))
    assert '"Value term"' in SCRIPT.read_text() and "### Value term" in doc
