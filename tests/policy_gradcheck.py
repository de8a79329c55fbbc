"""Shared by the RLOO, GRPO and DPO trainer tests: tiny float64 models, batches of response groups, the
finite-difference check of the gradient a trainer applies (as tests/methods/test_ppo_trainer.py does for PPO), and the
token-level toy reward every trainer must learn."""
import time

import numpy as np

import minigpt_np as mg
from ppo_np.rollout import generate_responses

CFG = mg.GPTConfig(vocab_size=13, block_size=12, n_layer=2, n_head=2, n_embd=8)


def make_models(seed=0):
    """policy and reference: the same tiny GPT, float64 (the finite differences need it)."""
    return mg.GPT(CFG, dtype=np.float64, seed=seed), mg.GPT(CFG, dtype=np.float64, seed=seed)


def group_batch(n_groups, k, seed=0):
    """k consecutive responses (lengths 1 to 5) to each of n_groups queries (lengths 1 to 4), random scores."""
    rng = np.random.default_rng(seed)
    queries = [q for q in (rng.integers(1, 13, rng.integers(1, 5)) for _ in range(n_groups)) for _ in range(k)]
    responses = [rng.integers(1, 13, rng.integers(1, 6)) for _ in range(n_groups * k)]
    return queries, responses, rng.normal(size=n_groups * k)


def perturb(model, scale=0.05, seed=1):
    """Move the policy away from the rollout weights, so that ratios leave the clip range."""
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.data += rng.normal(scale=scale, size=p.data.shape)


def capture_gradients(trainer):
    """Replace the trainer's optimizer step by a copy of the gradients it would apply -> the dict they land in."""
    captured = {}
    trainer.optimizer.step = lambda *a, **k: captured.update(
        {n: p.grad.copy() for n, p in trainer.model.named_parameters()})
    return captured


def assert_matches_finite_differences(model, captured, objective, entries_per_parameter=3, eps=1e-6, tol=1e-5):
    """Every parameter: a few entries of the captured gradient against central differences of objective().

    The relative error's denominator has a floor of 1e-4: central differences of a loss of order 1 carry ~1e-10 of
    rounding noise, which entries whose true gradient is 0 (the key biases of attention) would otherwise turn into
    a large relative error."""
    rng = np.random.default_rng(2)
    worst, worst_if_off_by_1_percent = (0.0, ""), 0.0
    for name, p in model.named_parameters():
        flat = p.data.reshape(-1)
        for j in rng.choice(flat.size, size=min(entries_per_parameter, flat.size), replace=False):
            saved = flat[j]
            flat[j] = saved + eps
            up = objective()
            flat[j] = saved - eps
            down = objective()
            flat[j] = saved
            numeric, analytic = (up - down) / (2 * eps), captured[name].reshape(-1)[j]
            err = abs(numeric - analytic) / max(abs(numeric) + abs(analytic), 1e-4)
            worst = max(worst, (err, f"{name}[{j}]: analytic {analytic:.6g} numeric {numeric:.6g}"))
            off = abs(numeric - 1.01 * analytic) / max(abs(numeric) + abs(1.01 * analytic), 1e-4)
            worst_if_off_by_1_percent = max(worst_if_off_by_1_percent, off)
    assert worst[0] < tol, f"worst relative error {worst[0]:.3g} at {worst[1]}"
    # negative control: the same comparison rejects a gradient 1% too large
    assert worst_if_off_by_1_percent > tol, "the check cannot tell a 1% error in the gradient"
    return worst[0]


def learn_token_reward(trainer, k, steps, n_prompts, seed=0):
    """Reward = fraction of response tokens equal to 7, k samples per prompt -> (first, last, seconds): the mean
    reward of the first 3 and of the last 5 steps."""
    rng = np.random.default_rng(seed)
    start, history = time.perf_counter(), []
    for _ in range(steps):
        queries = [q for q in (rng.integers(1, 13, rng.integers(1, 4)) for _ in range(n_prompts)) for _ in range(k)]
        responses = generate_responses(trainer.model, queries, 6, forward_batch_size=16, rng=rng)
        scores = np.array([np.mean(r == 7) for r in responses])
        history.append(scores.mean())
        trainer.step(queries, responses, scores)
    return np.mean(history[:3]), np.mean(history[-5:]), time.perf_counter() - start
