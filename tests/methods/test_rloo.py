"""ppo_np.rloo against torch autograd of TRL 0.13.0's RLOO code, the leave-one-out identities, the edge cases, and
the RLOOTrainer: the gradient it applies against finite differences through the whole GPT, its checks, learning."""
import numpy as np
import pytest
import torch

import minigpt_np as mg
from policy_gradcheck import (assert_matches_finite_differences, capture_gradients, group_batch, learn_token_reward,
                              make_models, perturb)
from ppo_np import grpo
from ppo_np.batch import layout, response_logprobs
from ppo_np.rloo import (RLOOConfig, RLOOTrainer, rloo_advantages, rloo_loss, rloo_loss_backward, rloo_rewards,
                         rloo_stats)

CLIPRANGE, KL_COEF = 0.2, 0.05


# ---------------------------------------------------------------------------------------------------------
# torch reference: TRL 0.13.0, trl/trainer/rloo_trainer.py, RLOOTrainer.train (lines 69, 380-396, 398-447 of the
# wheel trl-0.13.0-py3-none-any.whl), copied with the tensors passed in as arguments


INVALID_LOGPROB = 1.0


def trl_rloo_advantages(scores, logprobs, ref_logprobs, padding_mask, kl_coef, rloo_k):
    """TRL's interleaved layout: completion j of prompt g is row j * (B / k) + g."""
    logprobs = torch.masked_fill(logprobs, padding_mask, INVALID_LOGPROB)
    ref_logprobs = torch.masked_fill(ref_logprobs, padding_mask, INVALID_LOGPROB)

    # 4. compute rewards
    kl = logprobs - ref_logprobs
    non_score_reward = (-kl_coef * kl).sum(1)
    rlhf_reward = scores + non_score_reward

    # vectorized RLOO advantages implementation
    rlhf_reward = rlhf_reward.reshape(rloo_k, -1)
    baseline = (rlhf_reward.sum(0) - rlhf_reward) / (rloo_k - 1)
    advantages = rlhf_reward - baseline
    advantages = advantages.flatten()
    return non_score_reward, rlhf_reward.flatten(), advantages


def trl_rloo_loss(new_logprobs, mb_logprobs, mb_advantage, padding_mask, cliprange):
    """mb_logprobs are the rollout's logprobs after TRL's masked_fill (1.0 on padding)."""
    new_logprobs = torch.masked_fill(new_logprobs, padding_mask, INVALID_LOGPROB)
    new_ratio = (new_logprobs - mb_logprobs).exp()  # noqa: F841 (TRL logs its mean as val/ratio)
    new_logprobs = new_logprobs.sum(1)
    mb_logprobs = mb_logprobs.sum(1)
    logprobs_diff = new_logprobs - mb_logprobs
    ratio = torch.exp(logprobs_diff)
    pg_losses = -mb_advantage * ratio
    pg_losses2 = -mb_advantage * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    pg_loss_max = torch.max(pg_losses, pg_losses2)
    pg_loss = pg_loss_max.mean()
    pg_clipfrac = (pg_losses2 > pg_losses).float().mean()
    approxkl = 0.5 * (logprobs_diff**2).mean()
    return pg_loss, {"loss/policy": pg_loss, "policy/clipfrac": pg_clipfrac, "policy/approxkl": approxkl}


def to_trl_layout(B, k):
    """Row order that turns our consecutive groups (row g*k + j) into TRL's interleaved ones (row j*(B/k) + g)."""
    return np.arange(B).reshape(B // k, k).T.reshape(-1)


def right_padded_mask(lengths, T):
    return (np.arange(T)[None, :] < np.asarray(lengths)[:, None]).astype(np.float64)


def t64(x):
    return torch.tensor(np.asarray(x), dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------------
# rewards and advantages


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("k", [2, 4])
def test_rewards_and_advantages_match_trl(k, masked):
    rng = np.random.default_rng(k)
    B, T = 8, 6
    mask = right_padded_mask(rng.integers(1, T + 1, B), T) if masked else np.ones((B, T))
    old_logprobs, ref_logprobs, scores = -rng.uniform(0, 3, (B, T)), -rng.uniform(0, 3, (B, T)), rng.normal(size=B)
    old_logprobs[mask == 0] = np.nan                         # padding may hold anything
    rewards, non_score = rloo_rewards(scores, old_logprobs, ref_logprobs, KL_COEF, mask if masked else None)
    advantages = rloo_advantages(rewards, k)
    perm = to_trl_layout(B, k)
    ref = trl_rloo_advantages(t64(scores[perm]), t64(old_logprobs[perm]), t64(ref_logprobs[perm]),
                              torch.tensor(mask[perm] == 0), KL_COEF, k)
    for name, ours, theirs in zip(("non_score_reward", "rlhf_reward", "advantages"), (non_score, rewards, advantages),
                                  ref):
        err = np.abs(ours[perm] - theirs.numpy()).max()
        assert err < 1e-13, f"{name}: worst error {err:.2e}"


def test_leave_one_out_advantage_is_the_centred_reward_scaled_by_k_over_k_minus_1():
    rewards = np.array([1.0, 2.0, 6.0, 0.5, 0.5, 0.5, -1.0, 4.0, 3.0])    # three groups of 3; the middle one all equal
    advantages = rloo_advantages(rewards, 3)
    # by hand, group 1: 1 - (2 + 6)/2 = -3, 2 - (1 + 6)/2 = -1.5, 6 - (1 + 2)/2 = 4.5
    assert np.allclose(advantages[:3], [-3.0, -1.5, 4.5], atol=1e-15)
    assert np.all(advantages[3:6] == 0.0), "a group of equal rewards must give zero advantages"
    centred = rewards.reshape(3, 3) - rewards.reshape(3, 3).mean(axis=1, keepdims=True)
    assert np.allclose(advantages, 1.5 * centred.reshape(-1), atol=1e-14)
    # the same as GRPO's advantage without the std (Dr. GRPO), times k/(k-1)
    assert np.allclose(advantages, 1.5 * grpo.grpo_advantages(rewards, 3, scale_rewards=False), atol=1e-14)


def test_groups_of_equal_rewards_give_no_policy_gradient():
    rng = np.random.default_rng(3)
    rewards = np.array([0.7, 0.7, 0.7, 0.1, 0.9, 0.3])               # 0.7 * 3 is one of the sums that round
    advantages = rloo_advantages(rewards, 3)
    assert np.abs(advantages[:3]).max() < 1e-15 and np.abs(advantages[3:]).min() > 0.1
    logprobs, old = -rng.uniform(0, 2, (6, 4)), -rng.uniform(0, 2, (6, 4))
    dlogprobs = rloo_loss_backward(rloo_loss(logprobs, old, advantages, cliprange=CLIPRANGE)[1])
    assert np.abs(dlogprobs[:3]).max() < 1e-15 and np.abs(dlogprobs[3:]).max() > 1e-3


# ---------------------------------------------------------------------------------------------------------
# the loss


def region_inputs(seed, B=10, T=6, mask=None):
    """Per-token logprobs whose SEQUENCE log-ratios fall far below, inside, at 0, inside, far above the clip range,
    each with both signs of the advantage."""
    rng = np.random.default_rng(seed)
    mask = np.ones((B, T)) if mask is None else mask
    old = -rng.uniform(0.5, 3.0, (B, T))
    target = np.array([-0.6, -0.05, 0.0, 0.05, 0.6])[np.arange(B) % 5]     # log rho of each response
    split = rng.dirichlet(np.ones(T), size=B) * mask
    split /= split.sum(axis=1, keepdims=True)
    logprobs = old + target[:, None] * split
    advantages = np.where((np.arange(B) // 5) % 2 == 0, 1.0, -1.0) * rng.uniform(0.2, 2.0, B)
    return logprobs, old, advantages


def assert_every_region_occurs(ratio, advantages):
    regions = {"inside": (ratio >= 1 - CLIPRANGE) & (ratio <= 1 + CLIPRANGE), "ratio 1": ratio == 1,
               "above, A > 0 (clipped)": (ratio > 1 + CLIPRANGE) & (advantages > 0),
               "above, A < 0": (ratio > 1 + CLIPRANGE) & (advantages < 0),
               "below, A > 0": (ratio < 1 - CLIPRANGE) & (advantages > 0),
               "below, A < 0 (clipped)": (ratio < 1 - CLIPRANGE) & (advantages < 0)}
    counts = {name: int(r.sum()) for name, r in regions.items()}
    assert min(counts.values()) > 0, f"a region has no response: {counts}"


@pytest.mark.parametrize("cliprange", [CLIPRANGE, None])
@pytest.mark.parametrize("masked", [False, True])
def test_loss_and_gradient_match_torch_autograd_of_trl(masked, cliprange):
    B, T = 10, 6
    mask = right_padded_mask([6, 1, 4, 6, 2, 3, 6, 5, 1, 6], T) if masked else None
    logprobs, old, advantages = region_inputs(0, B, T, mask)
    loss, terms = rloo_loss(logprobs, old, advantages, mask, cliprange)
    dlogprobs = rloo_loss_backward(terms)
    stats = rloo_stats(terms)
    assert_every_region_occurs(terms.ratio, advantages)

    padding = torch.tensor(np.zeros((B, T), dtype=bool) if mask is None else mask == 0)
    new = t64(logprobs).requires_grad_(True)
    mb_logprobs = torch.masked_fill(t64(old), padding, INVALID_LOGPROB)
    ref_loss, ref_stats = trl_rloo_loss(new, mb_logprobs, t64(advantages), padding,
                                        CLIPRANGE if cliprange is not None else float("inf"))
    ref_loss.backward()
    errors = {"loss": abs(loss - ref_loss.item()), "dlogprobs": np.abs(dlogprobs - new.grad.numpy()).max(),
              **{key: abs(stats[key] - ref_stats[key].item()) for key in ref_stats}}
    # TRL's clipfrac is `.float()`: float32
    errors["policy/clipfrac"] = abs(np.float32(stats["policy/clipfrac"]) - ref_stats["policy/clipfrac"].item())
    print({k: f"{v:.1e}" for k, v in errors.items()})
    assert max(errors.values()) < 1e-12, errors
    if cliprange is not None:
        assert stats["policy/clipfrac"] > 0
        # negative control: a gradient that ignores the clip is told apart on these inputs
        naive = rloo_loss_backward(rloo_loss(logprobs, old, advantages, mask, None)[1])
        assert np.abs(naive - dlogprobs).max() > 1e-3
    if masked:
        assert np.all(dlogprobs[mask == 0] == 0.0)


def test_at_ratio_one_the_gradient_is_reinforce_with_the_leave_one_out_baseline():
    rng = np.random.default_rng(4)
    mask = right_padded_mask([3, 1, 4, 2], 4)
    old, advantages = -rng.uniform(0, 2, (4, 4)), rng.normal(size=4)
    loss, terms = rloo_loss(old.copy(), old, advantages, mask, CLIPRANGE)
    assert abs(loss - -advantages.mean()) < 1e-15 and rloo_stats(terms)["policy/clipfrac"] == 0
    assert np.abs(rloo_loss_backward(terms) - -advantages[:, None] * mask / 4).max() < 1e-16


def test_the_equations_assert_their_shapes_and_leave_values_to_the_boundaries():
    """Shapes that would broadcast into a wrong answer stop at one line of assertion; every value condition is refused
    where it enters, by RLOOConfig or RLOOTrainer.step (test_step_refuses_bad_groups_and_configs)."""
    good = np.zeros((4, 3))
    with pytest.raises(AssertionError):
        rloo_advantages(np.ones(5), 2)
    with pytest.raises(AssertionError):
        rloo_loss(good, good, good)                               # one advantage per token instead of per response
    with pytest.raises(AssertionError):
        rloo_rewards(np.zeros(3), good, good, 0.1)


# ---------------------------------------------------------------------------------------------------------
# the trainer


def test_gradient_applied_by_the_trainer_matches_finite_differences_of_the_rloo_loss():
    policy, ref = make_models()
    cfg = RLOOConfig(lr=1e-2, batch_size=8, forward_batch_size=8, mini_batch_size=8, ppo_epochs=1, rloo_k=2,
                     cliprange=0.05)
    trainer = RLOOTrainer(policy, ref, cfg)
    queries, responses, scores = group_batch(4, 2)
    batch = layout(queries, responses)
    old = response_logprobs(policy, batch, 8)
    perturb(policy)
    rewards, _ = rloo_rewards(scores, old, response_logprobs(ref, batch, 8), cfg.kl_coef, batch.mask)
    advantages = rloo_advantages(rewards, 2)
    captured = capture_gradients(trainer)
    stats = trainer.train_minibatch(batch, old, advantages)
    assert 0 < stats["policy/clipfrac"] < 1, "both the clipped and the unclipped branch must occur"

    def objective():
        with mg.no_grad():
            return rloo_loss(response_logprobs(policy, batch, 8), old, advantages, batch.mask, cfg.cliprange)[0]

    assert_matches_finite_differences(policy, captured, objective)


def test_step_refuses_bad_groups_and_configs():
    policy, ref = make_models()
    trainer = RLOOTrainer(policy, ref, RLOOConfig(batch_size=8, forward_batch_size=4, mini_batch_size=4, rloo_k=2))
    queries, responses, scores = group_batch(4, 2)
    with pytest.raises(ValueError, match="query 3 differs from query 2"):
        trainer.step(queries[:3] + [queries[0]] + queries[4:], responses, scores)
    with pytest.raises(ValueError, match="empty response"):
        trainer.step(queries, responses[:7] + [np.array([], dtype=int)], scores)
    with pytest.raises(ValueError, match=r"scores at rows \[7\] are nan or inf"):
        trainer.step(queries, responses, np.r_[scores[:7], np.inf])
    with pytest.raises(ValueError, match="RLOOConfig.cliprange must be a finite number > 0"):
        RLOOConfig(cliprange=-1.0)
    with pytest.raises(ValueError, match="RLOOConfig.kl_coef must be a finite number >= 0"):
        RLOOConfig(kl_coef=float("nan"))
    with pytest.raises(ValueError, match="rloo_k must be an integer >= 2"):
        RLOOConfig(batch_size=8, forward_batch_size=4, mini_batch_size=4, rloo_k=1)
    with pytest.raises(ValueError, match=r"multiple of rloo_k \(3\)"):
        RLOOConfig(batch_size=8, forward_batch_size=4, mini_batch_size=4, rloo_k=3)
    with pytest.raises(ValueError, match="mini_batch_size=4"):
        RLOOConfig(batch_size=8, forward_batch_size=4, mini_batch_size=5)


def test_step_results_do_not_depend_on_forward_batch_size():
    def run(fbs):
        policy, ref = make_models()
        trainer = RLOOTrainer(policy, ref, RLOOConfig(lr=1e-2, batch_size=8, forward_batch_size=fbs,
                                                      mini_batch_size=4, ppo_epochs=2))
        stats = trainer.step(*group_batch(4, 2))
        return stats, policy.state_dict()
    (stats_a, weights_a), (stats_b, weights_b) = run(8), run(2)
    assert max(abs(stats_a[k] - stats_b[k]) for k in stats_a if not k.startswith("time/")) < 1e-12
    assert max(np.abs(weights_a[k] - weights_b[k]).max() for k in weights_a) < 1e-12


def test_rloo_learns_a_token_level_reward_up_to_its_kl_regularised_optimum():
    """Reward = fraction of response tokens equal to 7. RLOO must raise it from the reference's 1/13 to near the
    optimum of score - beta KL, which is pi*(y) proportional to pi_ref(y) exp(score(y) / beta): with beta = 0.05 and
    six tokens each 7 multiplies the odds by e^(1 / 0.3) = 28, so pi*(7) = 28 / (28 + 12) = 0.70 for a uniform
    reference (the tiny GPT's is nearly uniform). Without the KL penalty the same run goes to 1.0: the upper bound
    shows the sequence KL in the reward at work."""
    cfg = mg.GPTConfig(vocab_size=13, block_size=12, n_layer=2, n_head=2, n_embd=16)
    trainer = RLOOTrainer(mg.GPT(cfg, seed=0), mg.GPT(cfg, seed=0),
                          RLOOConfig(lr=3e-3, batch_size=32, forward_batch_size=16, mini_batch_size=8, ppo_epochs=4,
                                     rloo_k=2, kl_coef=0.05))
    first, last, elapsed = learn_token_reward(trainer, k=2, steps=30, n_prompts=16)
    print(f"reward {first:.3f} -> {last:.3f} in {elapsed:.1f} s")
    assert first < 0.2 and 0.6 < last < 0.85, f"reward went from {first:.3f} to {last:.3f}"
