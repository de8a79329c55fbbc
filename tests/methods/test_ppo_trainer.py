"""PPOTrainer: chunk-size invariance, determinism, the gradient it applies, config and input errors, and learning."""
import time

import numpy as np
import pytest

import minigpt_np as mg
from ppo_np import PPOConfig, PPOTrainer, core
from ppo_np.rollout import generate_responses
from ppo_np.batch import layout

CFG = mg.GPTConfig(vocab_size=13, block_size=12, n_layer=2, n_head=2, n_embd=8)


def make_models(dtype=np.float64, seed=0):
    ref = mg.GPT(CFG, dtype=dtype, seed=seed)
    policy = mg.GPT(CFG, dtype=dtype, seed=seed)
    policy.add_value_head(seed=seed + 1)
    return policy, ref


def make_batch(B=8, seed=0):
    """Queries and responses of different lengths, random scores."""
    rng = np.random.default_rng(seed)
    queries = [rng.integers(1, 13, rng.integers(1, 5)) for _ in range(B)]
    responses = [rng.integers(1, 13, rng.integers(1, 6)) for _ in range(B)]
    return queries, responses, rng.normal(size=B)


def run_step(forward_batch_size=8, mini_batch_size=4, seed=0, **kw):
    policy, ref = make_models()
    cfg = PPOConfig(lr=1e-2, batch_size=8, forward_batch_size=forward_batch_size,
                    mini_batch_size=mini_batch_size, ppo_epochs=2, seed=seed, **kw)
    trainer = PPOTrainer(policy, ref, cfg)
    stats = trainer.step(*make_batch())
    return stats, policy.state_dict()


def assert_same_run(a, b, tol):
    (stats_a, weights_a), (stats_b, weights_b) = a, b
    worst_stat = max((abs(stats_a[k] - stats_b[k]), k) for k in stats_a
                     if not k.startswith("time/") and np.isfinite(stats_a[k]))
    worst_weight = max((np.abs(weights_a[k] - weights_b[k]).max(), k) for k in weights_a)
    assert worst_stat[0] <= tol, f"stat {worst_stat[1]} differs by {worst_stat[0]:.3g}"
    assert worst_weight[0] <= tol, f"weight {worst_weight[1]} differs by {worst_weight[0]:.3g}"


def test_step_results_do_not_depend_on_forward_batch_size():
    reference = run_step(forward_batch_size=8)
    for fbs in (1, 2, 4):
        assert_same_run(run_step(forward_batch_size=fbs), reference, tol=1e-12)


def test_same_seed_same_step_and_different_seed_different_shuffle():
    assert_same_run(run_step(seed=3), run_step(seed=3), tol=0.0)
    with pytest.raises(AssertionError):
        assert_same_run(run_step(seed=3), run_step(seed=4), tol=1e-9)


def test_batched_forward_pass_gives_each_row_what_it_gives_alone():
    policy, ref = make_models()
    trainer = PPOTrainer(policy, ref, PPOConfig(batch_size=8, forward_batch_size=4))
    queries, responses, _ = make_batch()
    together = trainer.batched_forward_pass(layout(queries, responses))
    for i in range(len(queries)):
        alone = trainer.batched_forward_pass(layout(queries[i:i + 1], responses[i:i + 1]))
        n = len(responses[i])
        for name, a, b in zip(("logprobs", "ref_logprobs", "values"), together, alone):
            err = np.abs(a[i, :n] - b[0, :n]).max()
            assert err < 1e-12, f"row {i} {name} differs by {err:.3g} in a batch"
            assert np.all(a[i, n:] == 0), f"row {i} {name} is not zero on padding"


def ppo_objective(policy, batch, old, advantages, returns, cfg):
    """The scalar loss of one mini-batch as a plain function of the weights (for finite differences)."""
    cols = slice(batch.Q - 1, batch.input_ids.shape[1] - 1)
    with mg.no_grad():
        logits, values = policy.logits_and_values(batch.input_ids, batch.attention_mask)
    logprobs = core.logprobs_from_logits(logits.data[:, cols], batch.input_ids[:, batch.Q:])
    loss, _ = core.ppo_loss(logprobs, old[0], values.data[:, cols], old[2], advantages, returns,
                               cliprange=cfg.cliprange, cliprange_value=cfg.cliprange_value,
                               vf_coef=cfg.vf_coef, mask=batch.mask)
    return loss


def test_gradient_applied_by_the_trainer_matches_finite_differences_of_the_ppo_loss():
    policy, ref = make_models()
    cfg = PPOConfig(lr=1e-2, batch_size=8, forward_batch_size=8, mini_batch_size=8, ppo_epochs=1,
                    cliprange=0.05, cliprange_value=0.05)
    trainer = PPOTrainer(policy, ref, cfg)
    queries, responses, scores = make_batch()
    batch = layout(queries, responses)
    # move the policy away from the rollout weights so that ratios leave the clip range
    rng = np.random.default_rng(1)
    old = trainer.batched_forward_pass(batch)
    for p in policy.parameters():
        p.data += rng.normal(scale=0.05, size=p.data.shape)
    rewards, _ = core.compute_rewards(scores, old[0], old[1], 0.2, batch.mask)
    advantages, returns = core.compute_advantages(old[2], rewards, 1.0, 0.95, batch.mask)
    advantages = core.whiten(advantages, batch.mask) * batch.mask

    captured = {}
    trainer.optimizer.step = lambda *a, **k: captured.update({n: p.grad.copy() for n, p in policy.named_parameters()})
    stats = trainer.train_minibatch(batch, old[0], old[2], advantages, returns)
    assert stats["policy/clipfrac"] > 0 and stats["val/clipfrac"] > 0, "the clipped branches were not exercised"

    eps, worst = 1e-6, (0.0, "")
    for name, p in policy.named_parameters():
        flat = p.data.reshape(-1)
        for j in rng.choice(flat.size, size=min(3, flat.size), replace=False):
            saved = flat[j]
            flat[j] = saved + eps
            up = ppo_objective(policy, batch, old, advantages, returns, cfg)
            flat[j] = saved - eps
            down = ppo_objective(policy, batch, old, advantages, returns, cfg)
            flat[j] = saved
            numeric = (up - down) / (2 * eps)
            analytic = captured[name].reshape(-1)[j]
            err = abs(numeric - analytic) / max(abs(numeric) + abs(analytic), 1e-8)
            worst = max(worst, (err, f"{name}[{j}]: analytic {analytic:.6g} numeric {numeric:.6g}"))
    assert worst[0] < 1e-5, f"worst relative error {worst[0]:.3g} at {worst[1]}"


def test_a_nan_loss_stops_before_the_weights_change():
    policy, ref = make_models()
    trainer = PPOTrainer(policy, ref, PPOConfig(batch_size=8, forward_batch_size=8, mini_batch_size=8))
    queries, responses, scores = make_batch()
    before = policy.state_dict()
    policy.params["v_head.bias"].data[:] = np.nan          # values become NaN: so do returns and the loss
    with pytest.raises(FloatingPointError, match="NaN"):
        trainer.step(queries, responses, scores)
    after = policy.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before if k != "v_head.bias")


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=10, forward_batch_size=4), "multiple of forward_batch_size"),
    (dict(batch_size=8, forward_batch_size=4, mini_batch_size=3), "multiple of mini_batch_size"),
    (dict(batch_size=8, forward_batch_size=0), "positive integer"),
    (dict(lr=0.0), "lr must be a finite number > 0"),
    (dict(init_kl_coef=float("nan")), "init_kl_coef"),
    (dict(lam=1.5), "lam"),
    (dict(gamma=-0.1), "PPOConfig.gamma must lie in"),
    (dict(cliprange=-0.1), "PPOConfig.cliprange must be a finite number > 0"),
    (dict(cliprange_value=0.0), "PPOConfig.cliprange_value must be a finite number > 0"),
    (dict(target=0), "PPOConfig.target must be a finite number > 0"),
    (dict(horizon=float("inf")), "PPOConfig.horizon must be a finite number > 0"),
    (dict(score_clip=0.0), "PPOConfig.score_clip"),
])
def test_bad_config_is_refused_with_a_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PPOConfig(**kwargs)


def test_forward_batch_size_error_names_the_values_and_a_fix():
    with pytest.raises(ValueError) as err:
        PPOConfig(batch_size=10, forward_batch_size=4)
    assert "10" in str(err.value) and "4" in str(err.value) and "forward_batch_size=2" in str(err.value)


def test_bad_step_inputs_are_refused():
    """What core's equations need of their arrays (one score per row, finite; at least one response token per row,
    so that every row of the mask is 1...1 0...0 with a last token; labels in [0, V); two tokens to whiten) is
    refused here, where the rows enter: past Trainer.step the arrays are built by the layout and the model."""
    policy, ref = make_models()
    trainer = PPOTrainer(policy, ref, PPOConfig(batch_size=8, forward_batch_size=4))
    queries, responses, scores = make_batch()
    with pytest.raises(ValueError, match=r"response 7 has token ids outside \[0, 13\)"):
        trainer.step(queries, responses[:7] + [np.array([3, 13])], scores)
    one = PPOTrainer(policy, ref, PPOConfig(batch_size=1, forward_batch_size=1, mini_batch_size=1))
    with pytest.raises(ValueError, match="holds 1 response token; PPO whitens"):
        one.step(queries[:1], [np.array([3])], scores[:1])
    with pytest.raises(ValueError, match="scores must be a 1-D array"):
        trainer.step(queries, responses, scores[:, None])
    with pytest.raises(ValueError, match="batch_size"):
        trainer.step(queries[:7], responses[:7], scores[:7])
    with pytest.raises(ValueError, match="7 scores"):
        trainer.step(queries, responses, scores[:7])
    with pytest.raises(ValueError, match="empty response"):
        trainer.step(queries, responses[:7] + [np.array([], dtype=int)], scores)
    with pytest.raises(ValueError, match="block_size"):
        trainer.step(queries, responses[:7] + [np.ones(11, dtype=int)], scores)
    for bad in (np.nan, np.inf):
        with pytest.raises(ValueError, match="finite"):
            trainer.step(queries, responses, np.r_[scores[:7], bad])
    with pytest.raises(ValueError, match="value head"):
        PPOTrainer(ref, ref)


def test_rollouts_warn_when_not_sampling_the_full_distribution():
    policy, _ = make_models()
    with pytest.warns(UserWarning, match="full distribution"):
        generate_responses(policy, [np.array([1, 2])], 3, forward_batch_size=1,
                           rng=np.random.default_rng(0), temperature=0.7)


def test_ppo_learns_a_token_level_reward_quickly():
    """Reward = fraction of response tokens equal to 7: PPO must raise it well above the reference's 1/13."""
    cfg = mg.GPTConfig(vocab_size=13, block_size=12, n_layer=2, n_head=2, n_embd=16)
    ref = mg.GPT(cfg, seed=0)
    policy = mg.GPT(cfg, seed=0)
    policy.add_value_head()
    trainer = PPOTrainer(policy, ref, PPOConfig(lr=3e-3, batch_size=32, forward_batch_size=16,
                                                mini_batch_size=8, ppo_epochs=4, init_kl_coef=0.05, seed=0))
    rng = np.random.default_rng(0)
    start, history = time.perf_counter(), []
    for _ in range(40):
        queries = [rng.integers(1, 13, rng.integers(1, 4)) for _ in range(32)]
        responses = generate_responses(policy, queries, 6, forward_batch_size=16, rng=rng)
        scores = np.array([np.mean(r == 7) for r in responses])
        history.append(scores.mean())
        trainer.step(queries, responses, scores)
    elapsed = time.perf_counter() - start
    first, last = np.mean(history[:3]), np.mean(history[-5:])
    print(f"reward {first:.3f} -> {last:.3f} in {elapsed:.1f} s")
    assert first < 0.2 and last > 0.6, f"reward went from {first:.3f} to {last:.3f}"
    assert elapsed < 60


def test_score_clip_is_the_same_as_clipping_the_scores_first():
    queries, responses, scores = make_batch()
    scores = scores * 4.0                                           # some beyond +-2
    assert np.abs(scores).max() > 2
    results = []
    for clip, given in ((2.0, scores), (None, np.clip(scores, -2.0, 2.0)), (None, scores)):
        policy, ref = make_models()
        trainer = PPOTrainer(policy, ref, PPOConfig(lr=1e-2, batch_size=8, forward_batch_size=8, mini_batch_size=4,
                                                    ppo_epochs=1, score_clip=clip))
        trainer.step(queries, responses, given)
        results.append(policy.state_dict())
    clipped, pre_clipped, unclipped = results
    assert all(np.array_equal(clipped[k], pre_clipped[k]) for k in clipped)
    assert any(not np.array_equal(clipped[k], unclipped[k]) for k in clipped), "score_clip changed nothing"
    with pytest.raises(ValueError, match="score_clip"):
        PPOConfig(score_clip=0.0)
