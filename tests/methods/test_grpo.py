"""ppo_np.grpo against torch autograd of TRL 0.19.1's GRPO code (and 0.14.0's, at ratio 1) and of trl 1.16.0's
equations (dapo, epsilon_high, GSPO's sequence-level ratio, the bias-corrected k3, the normalisation of a mini-batch
inside an accumulated step), GRPO's zero loss at the first step, groups of equal rewards, the two biases Dr. GRPO
removes, the edge cases, and the GRPOTrainer: one AdamW step per batch with every ratio exactly 1, the gradient it
applies against finite differences through the whole GPT, its checks, learning."""
import dataclasses

import numpy as np
import pytest
import torch

import minigpt_np as mg
from policy_gradcheck import (assert_matches_finite_differences, capture_gradients, group_batch, learn_token_reward,
                              make_models, perturb)
from ppo_np import Trainer
from ppo_np.batch import layout, response_logprobs
from ppo_np.grpo import (GRPO, GRPOConfig, GRPOTrainer, group_reward_std, grpo_advantages, grpo_loss,
                         grpo_loss_backward, grpo_stats)

EPSILON, BETA = 0.2, 0.04


# ---------------------------------------------------------------------------------------------------------
# torch references, copied from the wheels with `self.` settings passed in as arguments


def trl_0_19_1_advantages(rewards, num_generations, scale_rewards):
    """TRL 0.19.1, trl/trainer/grpo_trainer.py lines 1253-1263."""
    # Compute grouped-wise rewards
    mean_grouped_rewards = rewards.view(-1, num_generations).mean(dim=1)
    std_grouped_rewards = rewards.view(-1, num_generations).std(dim=1)
    is_std_zero = torch.isclose(std_grouped_rewards, torch.zeros_like(std_grouped_rewards))

    # Normalize the rewards to compute the advantages
    mean_grouped_rewards = mean_grouped_rewards.repeat_interleave(num_generations, dim=0)
    std_grouped_rewards = std_grouped_rewards.repeat_interleave(num_generations, dim=0)
    advantages = rewards - mean_grouped_rewards
    if scale_rewards:
        advantages = advantages / (std_grouped_rewards + 1e-4)
    return advantages, is_std_zero


def trl_0_19_1_loss(per_token_logps, old_per_token_logps, ref_per_token_logps, advantages, completion_mask, beta,
                    epsilon, loss_type, max_completion_length):
    """TRL 0.19.1, GRPOTrainer._compute_loss (lines 1374-1437), epsilon_low = epsilon_high = epsilon, delta None."""
    # Compute the KL divergence between the model and the reference model
    if beta != 0.0:
        per_token_kl = (
            torch.exp(ref_per_token_logps - per_token_logps) - (ref_per_token_logps - per_token_logps) - 1
        )
    coef_1 = torch.exp(per_token_logps - old_per_token_logps)
    coef_2 = torch.clamp(coef_1, 1 - epsilon, 1 + epsilon)
    per_token_loss1 = coef_1 * advantages.unsqueeze(1)
    per_token_loss2 = coef_2 * advantages.unsqueeze(1)
    per_token_loss = -torch.min(per_token_loss1, per_token_loss2)
    if beta != 0.0:
        per_token_loss = per_token_loss + beta * per_token_kl

    if loss_type == "grpo":
        loss = ((per_token_loss * completion_mask).sum(-1) / completion_mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per_token_loss * completion_mask).sum() / completion_mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        loss = (per_token_loss * completion_mask).sum() / (per_token_loss.size(0) * max_completion_length)

    mean_kl = (per_token_kl * completion_mask).sum() / completion_mask.sum()
    is_low_clipped = (coef_1 < 1 - epsilon) & (advantages.unsqueeze(1) < 0)
    is_high_clipped = (coef_1 > 1 + epsilon) & (advantages.unsqueeze(1) > 0)
    is_region_clipped = is_low_clipped | is_high_clipped
    clip_ratio = (is_region_clipped * completion_mask).sum() / completion_mask.sum()
    return loss, {"kl": mean_kl, "clip_ratio/region_mean": clip_ratio}


def trl_0_14_0_loss(per_token_logps, ref_per_token_logps, advantages, completion_mask, beta):
    """TRL 0.14.0, GRPOTrainer.compute_loss (lines 454 and 510-512): no old policy, ratio exp(x - x.detach()) = 1."""
    per_token_kl = torch.exp(ref_per_token_logps - per_token_logps) - (ref_per_token_logps - per_token_logps) - 1
    # x - x.detach() allows for preserving gradients from x
    per_token_loss = torch.exp(per_token_logps - per_token_logps.detach()) * advantages.unsqueeze(1)
    per_token_loss = -(per_token_loss - beta * per_token_kl)
    loss = ((per_token_loss * completion_mask).sum(dim=1) / completion_mask.sum(dim=1)).mean()
    return loss


def t64(x):
    return torch.tensor(np.asarray(x), dtype=torch.float64)


def right_padded_mask(lengths, T):
    return (np.arange(T)[None, :] < np.asarray(lengths)[:, None]).astype(np.float64)


# ---------------------------------------------------------------------------------------------------------
# advantages


@pytest.mark.parametrize("scale_rewards", [True, False])
def test_advantages_match_trl(scale_rewards):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=12)
    scores[4:8] = 0.7                                            # one group of equal rewards (G = 4)
    ours = grpo_advantages(scores, 4, scale_rewards)
    theirs, is_std_zero = trl_0_19_1_advantages(t64(scores), 4, scale_rewards)
    err = np.abs(ours - theirs.numpy()).max()
    assert err < 1e-12, f"worst error {err:.2e}"
    assert np.array_equal(np.isclose(group_reward_std(scores, 4), 0.0), is_std_zero.numpy())


def test_a_group_of_equal_rewards_gives_zero_advantage_thanks_to_the_1e_4():
    scores = np.array([0.7, 0.7, 0.7, 0.1, 0.4, 0.9])           # 0.7 * 3 / 3 rounds: s - mean is 1e-16, not 0
    advantages = grpo_advantages(scores, 3)
    assert np.abs(advantages[:3]).max() < 1e-11 and np.abs(advantages[3:]).min() > 0.1
    # without the 1e-4, rounding noise divided by rounding noise: an advantage of order 1 from nothing
    s = scores[:3]
    naive = (s - s.mean()) / s.std(ddof=1)
    assert np.abs(naive).max() > 0.1, naive
    # its tokens then feel only the KL term, which is 0 where pi = pi_ref
    logprobs = np.log(np.full((6, 3), 0.2))
    loss, terms = grpo_loss(logprobs, logprobs, logprobs, advantages, beta=BETA, epsilon=EPSILON)
    dlogprobs = grpo_loss_backward(terms)
    assert np.abs(dlogprobs[:3]).max() < 1e-12 and np.abs(dlogprobs[3:]).min() > 1e-3


def test_std_scaling_gives_near_identical_scores_full_size_advantages_the_difficulty_bias():
    scores = np.array([0.50, 0.51, 0.0, 1.0])        # a prompt whose two responses score alike, one where they differ
    scaled, unscaled = grpo_advantages(scores, 2, True), grpo_advantages(scores, 2, False)
    # scaled: both groups get +-(1/2 d) / (d / sqrt 2 + 1e-4), about +-0.70, whatever their spread d
    assert np.allclose(np.abs(scaled), 0.70, atol=0.01)
    # unscaled (Dr. GRPO): the advantage is in reward units, 0.005 against 0.5
    assert np.allclose(unscaled, [-0.005, 0.005, -0.5, 0.5], atol=1e-12)


# ---------------------------------------------------------------------------------------------------------
# the loss


def region_inputs(seed, B=8, T=10):
    """Per-token ratios far below, inside, at 1, inside, far above the clip range, advantages of both signs."""
    rng = np.random.default_rng(seed)
    k = np.arange(B * T).reshape(B, T)
    old = -rng.uniform(0.5, 3.0, (B, T))
    logratio = np.array([-0.6, -0.05, 0.0, 0.05, 0.6])[k % 5] + rng.uniform(-0.02, 0.02, (B, T)) * (k % 5 != 2)
    ref = old + rng.normal(scale=0.3, size=(B, T))
    advantages = np.where(np.arange(B) % 2 == 0, 1.0, -1.0) * rng.uniform(0.2, 2.0, B)
    return old + logratio, old, ref, advantages


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo"])
@pytest.mark.parametrize("masked", [False, True])
def test_loss_and_gradient_match_torch_autograd_of_trl(loss_type, masked):
    B, T = 8, 10
    logprobs, old, ref, advantages = region_inputs(1, B, T)
    mask = right_padded_mask([10, 3, 7, 1, 10, 6, 2, 9], T) if masked else None
    m = np.ones((B, T)) if mask is None else mask
    ratio = np.exp(logprobs - old)
    A = advantages[:, None] * np.ones(T)
    assert ((ratio > 1 + EPSILON) & (A > 0) & (m > 0)).any() and ((ratio < 1 - EPSILON) & (A < 0) & (m > 0)).any()
    assert ((ratio > 1 + EPSILON) & (A < 0) & (m > 0)).any() and ((ratio == 1) & (m > 0)).any()
    max_completion_length = T + 2                 # a constant above the longest response, as TRL's setting is

    loss, terms = grpo_loss(logprobs, old, ref, advantages, mask, beta=BETA, epsilon=EPSILON, loss_type=loss_type,
                            max_completion_length=max_completion_length)
    dlogprobs = grpo_loss_backward(terms)
    stats = grpo_stats(terms)
    lp = t64(logprobs).requires_grad_(True)
    ref_loss, ref_stats = trl_0_19_1_loss(lp, t64(old), t64(ref), t64(advantages), t64(m), BETA, EPSILON, loss_type,
                                          max_completion_length)
    ref_loss.backward()
    errors = {"loss": abs(loss - ref_loss.item()), "dlogprobs": np.abs(dlogprobs - lp.grad.numpy()).max(),
              "kl": abs(stats["policy/kl_k3"] - ref_stats["kl"].item()),
              "clipfrac": abs(stats["policy/clipfrac"] - ref_stats["clip_ratio/region_mean"].item())}
    print(loss_type, {k: f"{v:.1e}" for k, v in errors.items()})
    assert max(errors.values()) < 1e-12, errors
    # negative control: the same loss without the k3 gradient is told apart
    no_kl = grpo_loss_backward(grpo_loss(logprobs, old, ref, advantages, mask, beta=0.0, epsilon=EPSILON,
                                         loss_type=loss_type, max_completion_length=max_completion_length)[1])
    assert np.abs(no_kl - dlogprobs).max() > 1e-4
    if masked:
        assert np.all(dlogprobs[m == 0] == 0.0)


def test_at_ratio_one_the_loss_and_gradient_match_trl_0_14_0():
    rng = np.random.default_rng(2)
    mask = right_padded_mask([5, 2, 4, 1], 5)
    logprobs, ref, advantages = -rng.uniform(0.5, 3, (4, 5)), -rng.uniform(0.5, 3, (4, 5)), rng.normal(size=4)
    loss, terms = grpo_loss(logprobs, logprobs, ref, advantages, mask, beta=BETA, epsilon=EPSILON)
    lp = t64(logprobs).requires_grad_(True)
    ref_loss = trl_0_14_0_loss(lp, t64(ref), t64(advantages), t64(mask), BETA)
    ref_loss.backward()
    assert abs(loss - ref_loss.item()) < 1e-15
    assert np.abs(grpo_loss_backward(terms) - lp.grad.numpy()).max() < 1e-15


def test_the_loss_is_zero_at_the_first_step_but_its_gradient_is_not():
    """pi = pi_old = pi_ref: every ratio is 1 and every k3 is 0, so with loss_type "grpo" the loss is
    -1/B sum_i A_i = 0 (advantages sum to 0 in each group); the gradient -A_i / (B L_i) per token is not 0."""
    rng = np.random.default_rng(3)
    mask = right_padded_mask([4, 2, 3, 1, 4, 4], 4)
    logprobs, scores = -rng.uniform(0.5, 3, (6, 4)), rng.normal(size=6)
    advantages = grpo_advantages(scores, 3)
    loss, terms = grpo_loss(logprobs, logprobs, logprobs, advantages, mask, beta=BETA, epsilon=EPSILON)
    dlogprobs = grpo_loss_backward(terms)
    assert abs(loss) < 1e-15, loss
    expected = -advantages[:, None] * mask / (6 * mask.sum(axis=1, keepdims=True))
    assert np.abs(dlogprobs - expected).max() < 1e-16 and np.abs(dlogprobs).max() > 0.05
    # over all tokens ("bnpo"), the same batch has a loss -sum_i L_i A_i / N, not 0: the responses differ in length
    bnpo_loss, _ = grpo_loss(logprobs, logprobs, logprobs, advantages, mask, beta=BETA, epsilon=EPSILON,
                             loss_type="bnpo")
    assert abs(bnpo_loss - -(mask.sum(axis=1) * advantages).sum() / mask.sum()) < 1e-15 and abs(bnpo_loss) > 1e-3


def test_per_response_length_normalisation_weighs_a_short_responses_tokens_more_the_length_bias():
    lengths = [1, 4]                                              # two responses to one prompt
    mask = right_padded_mask(lengths, 4)
    logprobs = np.log(np.full((2, 4), 0.25))
    advantages = np.array([1.0, 1.0])
    per_token = {}
    for loss_type in ("grpo", "dr_grpo"):
        terms = grpo_loss(logprobs, logprobs, logprobs, advantages, mask, beta=0.0, epsilon=EPSILON,
                          loss_type=loss_type, max_completion_length=4)[1]
        per_token[loss_type] = -grpo_loss_backward(terms)[:, 0]   # the push on each response's first token
    # "grpo": 1 / (B L_i): the one-token response's token is pushed 4 times harder; "dr_grpo": 1 / (B T_max) for both
    assert np.allclose(per_token["grpo"], [1 / 2, 1 / 8], atol=1e-16)
    assert np.allclose(per_token["dr_grpo"], [1 / 8, 1 / 8], atol=1e-16)


def test_the_equations_assert_their_shapes_and_leave_values_to_the_boundaries():
    """Shapes that would broadcast into a wrong answer stop at one line of assertion; every value condition is refused
    where it enters, by GRPOConfig or GRPOTrainer.step (test_step_refuses_bad_groups_and_configs)."""
    good = np.zeros((4, 3))
    with pytest.raises(AssertionError):
        grpo_advantages(np.ones(5), 2)
    with pytest.raises(AssertionError):
        grpo_loss(good, good[:, :2], good, np.zeros(4), beta=BETA, epsilon=EPSILON)
    with pytest.raises(AssertionError):
        grpo_loss(good, good, good, np.zeros(3), beta=BETA, epsilon=EPSILON)


# ---------------------------------------------------------------------------------------------------------
# trl 1.16.0: the loss written from its equations, trl/trainer/grpo_trainer.py of the wheel
# trl-1.16.0-py3-none-any.whl (sha256 c4726e139dd40e1a41661511c639c8a68416782b2e3e8c0befebd77bb7ba0396),
# GRPOTrainer._compute_loss (lines 3020-3292): one process, training mode, the loss types grpo, bnpo, dr_grpo and
# dapo, with delta, the off-policy mask, the entropy mask and vLLM's importance sampling off (their defaults)


def trl_1_16_0_loss(per_token_logps, old_per_token_logps, ref_per_token_logps, advantages, mask, *, beta, epsilon,
                    epsilon_high, loss_type, max_completion_length, importance_sampling_level,
                    use_bias_correction_kl, num_items_in_batch, gradient_accumulation_steps, steps_per_generation,
                    detach_ratio=False):
    """old_per_token_logps None: the trainer computed none, and per_token_logps.detach() stands in (line 3066).
    detach_ratio=True is not trl's: the negative control that detaches coef_1, to show the test tells it apart."""
    advantages = advantages.unsqueeze(1)                                                       # 3058-3059
    if old_per_token_logps is None:                                                            # 3066
        old_per_token_logps = per_token_logps.detach()
    log_ratio = per_token_logps - old_per_token_logps                                          # 3083
    if importance_sampling_level == "token":                                                   # 3084-3085
        log_importance_weights = log_ratio
    else:                                                                                      # 3086-3088
        log_importance_weights = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    coef_1 = torch.exp(log_importance_weights)                                                 # 3095
    if detach_ratio:
        coef_1 = coef_1.detach()
    if beta != 0.0:                                                                            # 3098-3105
        per_token_kl = torch.exp(ref_per_token_logps - per_token_logps) - (ref_per_token_logps - per_token_logps) - 1
        if use_bias_correction_kl:
            per_token_kl = per_token_kl * coef_1
    epsilon_high = epsilon if epsilon_high is None else epsilon_high                           # 945-946
    coef_2 = torch.clamp(coef_1, 1 - epsilon, 1 + epsilon_high)                                # 3113
    per_token_loss = -torch.min(coef_1 * advantages, coef_2 * advantages)                      # 3118-3120
    if beta != 0.0:                                                                            # 3149-3150
        per_token_loss = per_token_loss + beta * per_token_kl
    ga = gradient_accumulation_steps                                                           # its normalizer
    if loss_type == "grpo":                                                                    # 3153-3157
        loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean() / ga
    elif loss_type == "bnpo":                                                                  # 3158-3162
        loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0) / ga
    elif loss_type == "dr_grpo":                                                               # 3163-3167
        loss = (per_token_loss * mask).sum() / (per_token_loss.size(0) * max_completion_length) / ga
    else:                                                                                      # 3168-3173, "dapo"
        normalizer = num_items_in_batch.clamp(min=1.0) / 1 * ga / steps_per_generation         # 1 process
        loss = (per_token_loss * mask).sum() / normalizer

    def global_masked_mean(x):                                                                 # 3259-3265
        if x.shape[1] == 1:
            return x.sum() / x.shape[0]
        return (x * mask).sum() / mask.sum().clamp(min=1.0)

    is_low_clipped = (coef_1 < 1 - epsilon) & (advantages < 0)                                 # 3274
    is_high_clipped = (coef_1 > 1 + epsilon_high) & (advantages > 0)                           # 3275
    metrics = {"clip_ratio/low_mean": global_masked_mean(is_low_clipped.double()),             # 3277-3279
               "clip_ratio/high_mean": global_masked_mean(is_high_clipped.double()),
               "clip_ratio/region_mean": global_masked_mean((is_low_clipped | is_high_clipped).double())}
    if beta != 0.0:
        metrics["kl"] = global_masked_mean(per_token_kl)                                       # 3268
    return loss, metrics


def sequence_region_inputs(seed, B=12, T=8):
    """Ratios, per token and per response alike, far below, just below, exactly at, just above, between 1 + 0.2 and
    1 + 0.28, and far above 1 (rows 0-5 with A > 0, rows 6-11 the same with A < 0): every row's log-ratio is its
    offset plus token noise whose mean over the row's valid tokens is 0, and exactly 0 on the rows at 1."""
    rng = np.random.default_rng(seed)
    lengths = np.array([8, 3, 5, 1, 8, 6, 2, 7, 8, 4, 8, 5])
    mask = right_padded_mask(lengths, T)
    offsets = np.tile([-0.6, -0.1, 0.0, 0.1, 0.22, 0.6], 2)[:, None]
    noise = rng.uniform(-0.03, 0.03, (B, T)) * mask
    noise -= mask * noise.sum(axis=1, keepdims=True) / lengths[:, None]
    logratio = (offsets + noise) * (offsets != 0)
    old = -rng.uniform(0.5, 3.0, (B, T))
    ref = old + rng.normal(scale=0.3, size=(B, T))
    advantages = np.where(np.arange(B) < 6, 1.0, -1.0) * rng.uniform(0.2, 2.0, B)
    return old + logratio, old, ref, advantages, mask


TRL_1_16_0_CASES = [(loss_type, level, correction, epsilon_high)
                    for loss_type in ("grpo", "bnpo", "dr_grpo", "dapo") for level in ("token", "sequence")
                    for correction in (False, True) for epsilon_high in (None, 0.28)]


@pytest.mark.parametrize("loss_type, level, correction, epsilon_high", TRL_1_16_0_CASES)
@pytest.mark.parametrize("inside_a_step", [False, True])
def test_loss_gradient_and_stats_match_torch_autograd_of_trl_1_16_0(loss_type, level, correction, epsilon_high,
                                                                     inside_a_step):
    """Every option of trl 1.16.0's loss, alone (one call is the whole step) or as one of K = 3 mini-batches of an
    accumulated step over S = 3 (num_items_in_batch counts the whole batch's tokens)."""
    logprobs, old, ref, advantages, mask = sequence_region_inputs(1)
    context = (dict(num_items_in_batch=int(3.5 * mask.sum()), gradient_accumulation_steps=3, steps_per_generation=3)
               if inside_a_step else dict(num_items_in_batch=None, gradient_accumulation_steps=1,
                                          steps_per_generation=1))
    options = dict(beta=BETA, epsilon=EPSILON, epsilon_high=epsilon_high, loss_type=loss_type, max_completion_length=9,
                   importance_sampling_level=level, use_bias_correction_kl=correction, **context)
    loss, terms = grpo_loss(logprobs, old, ref, advantages, mask, **options)
    dlogprobs, stats = grpo_loss_backward(terms), grpo_stats(terms)

    lp = t64(logprobs).requires_grad_(True)
    theirs = {**options, "num_items_in_batch": t64(context["num_items_in_batch"] or mask.sum())}
    ref_loss, ref_metrics = trl_1_16_0_loss(lp, t64(old), t64(ref), t64(advantages), t64(mask), **theirs)
    ref_loss.backward()
    K = context["gradient_accumulation_steps"]
    errors = {"loss": abs(loss - ref_loss.item()), "dlogprobs": np.abs(dlogprobs - lp.grad.numpy()).max(),
              "kl": abs(stats["policy/kl_k3"] - ref_metrics["kl"].item()),
              "loss stat": abs(stats["loss/total"] - K * ref_loss.item())}
    for ours, trl in (("clipfrac", "region_mean"), ("clipfrac_low", "low_mean"), ("clipfrac_high", "high_mean")):
        errors[ours] = abs(stats[f"policy/{ours}"] - ref_metrics[f"clip_ratio/{trl}"].item())
    print(loss_type, level, correction, epsilon_high, inside_a_step, {k: f"{v:.1e}" for k, v in errors.items()})
    assert max(errors.values()) < 1e-13, errors
    assert np.all(dlogprobs[mask == 0] == 0.0)
    # every clip region is met, at the level of the ratio
    assert 0 < stats["policy/clipfrac_low"] and 0 < stats["policy/clipfrac_high"] and stats["policy/clipfrac"] < 1

    # negative controls: with rho detached (a constant weight, as the gradient would be if trl detached coef_1),
    # the sequence level and the corrected KL are told apart; so is a symmetric clip where epsilon_high is set
    lp.grad = None
    trl_1_16_0_loss(lp, t64(old), t64(ref), t64(advantages), t64(mask), **theirs, detach_ratio=True)[0].backward()
    if level == "sequence" or correction:
        assert np.abs(lp.grad.numpy() - dlogprobs).max() > 1e-4
    if epsilon_high is not None:
        symmetric = grpo_loss_backward(grpo_loss(logprobs, old, ref, advantages, mask,
                                                 **{**options, "epsilon_high": None})[1])
        assert np.abs(symmetric - dlogprobs).max() > 1e-4


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("correction", [False, True])
def test_at_ratio_one_with_no_old_logprobs_the_gradient_matches_trl_1_16_0s_detach(level, correction):
    """trl 1.16.0 at its defaults computes no logpi_old and uses per_token_logps.detach() (line 3066): rho = 1 with
    the gradient of exp(logpi - logpi.detach()). Ours: old_logprobs = logprobs, held constant by the backward."""
    logprobs, _, ref, advantages, mask = sequence_region_inputs(2)
    options = dict(beta=BETA, epsilon=EPSILON, epsilon_high=0.28, loss_type="dapo", max_completion_length=None,
                   importance_sampling_level=level, use_bias_correction_kl=correction, num_items_in_batch=None,
                   gradient_accumulation_steps=1, steps_per_generation=1)
    loss, terms = grpo_loss(logprobs, logprobs, ref, advantages, mask, **options)
    assert np.all(terms.ratio == 1.0)
    lp = t64(logprobs).requires_grad_(True)
    ref_loss, _ = trl_1_16_0_loss(lp, None, t64(ref), t64(advantages), t64(mask),
                                  **{**options, "num_items_in_batch": t64(mask.sum())})
    ref_loss.backward()
    err = max(abs(loss - ref_loss.item()), np.abs(grpo_loss_backward(terms) - lp.grad.numpy()).max())
    assert err < 1e-15, err


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_mini_batches_of_one_step_add_up_to_the_whole_batch_loss_except_bnpo(loss_type):
    """K = S = 3 mini-batches of 4 rows: their losses and gradients add up to the whole batch's (one call), for every
    loss_type but "bnpo", whose step is the mean of each mini-batch's own token mean, as in trl 1.16.0."""
    logprobs, old, ref, advantages, mask = sequence_region_inputs(3)
    options = dict(beta=BETA, epsilon=EPSILON, loss_type=loss_type, max_completion_length=9,
                   importance_sampling_level="sequence", use_bias_correction_kl=True)
    whole, whole_terms = grpo_loss(logprobs, old, ref, advantages, mask, **options)
    order = np.random.default_rng(0).permutation(12)
    parts, dlogprobs, local_means = 0.0, np.zeros_like(logprobs), 0.0
    for rows in np.split(order, 3):
        loss, terms = grpo_loss(logprobs[rows], old[rows], ref[rows], advantages[rows], mask[rows], **options,
                                num_items_in_batch=int(mask.sum()), gradient_accumulation_steps=3,
                                steps_per_generation=3)
        parts += loss
        dlogprobs[rows] = grpo_loss_backward(terms)
        local_means += grpo_loss(logprobs[rows], old[rows], ref[rows], advantages[rows], mask[rows],
                                 **{**options, "loss_type": "bnpo"})[0] / 3
    gap = max(abs(parts - whole), np.abs(dlogprobs - grpo_loss_backward(whole_terms)).max())
    if loss_type == "bnpo":
        assert abs(parts - local_means) < 1e-15 and gap > 1e-3, (parts, local_means, gap)
    else:
        assert gap < 1e-15, gap


def test_the_bias_corrected_k3s_expected_gradient_is_the_kls_on_one_distribution():
    """One token y ~ pi_old, pi = softmax(theta), V outcomes, by exact enumeration. With rho = pi/pi_old, the
    corrected term rho k3 has E_{pi_old}[d(rho k3)/dtheta] = grad KL(pi || pi_ref), even off-policy (pi_old != pi):
    its per-token gradient is rho (logpi - logpi_ref). Uncorrected k3 gives E_{pi_old}[(1 - pi_ref/pi) grad logpi],
    the reverse KL's gradient only on-policy. TRL's help text calls KL(pi || pi_ref) "the reverse KL"; ours does not."""
    rng = np.random.default_rng(4)
    V = 5
    theta = rng.normal(size=V)
    pi, pi_old, pi_ref = np.exp(theta) / np.exp(theta).sum(), rng.dirichlet(np.ones(V)), rng.dirichlet(np.ones(V))
    jacobian = np.diag(pi) - np.outer(pi, pi)                  # d pi_y / d theta_j; d logpi_y/d theta = row y / pi_y
    dlogpi_dtheta = jacobian / pi[:, None]

    def expected_gradient(behaviour, correction):
        """E_{y ~ behaviour}[dl/dlogpi(y) dlogpi(y)/dtheta] of beta kl with beta = 1, from grpo_loss_backward:
        each outcome is one response of one token, "bnpo" weighs each by 1/V, so V * dlogprobs is dl/dlogpi."""
        logpi, old = np.log(pi)[:, None], np.log(behaviour)[:, None]
        terms = grpo_loss(logpi, old, np.log(pi_ref)[:, None], np.zeros(V), beta=1.0, epsilon=np.inf,
                          loss_type="bnpo", use_bias_correction_kl=correction)[1]
        per_outcome = V * grpo_loss_backward(terms)[:, 0]
        return (behaviour * per_outcome) @ dlogpi_dtheta

    kl = pi @ (np.log(pi) - np.log(pi_ref))
    grad_kl = pi * (np.log(pi) - np.log(pi_ref) - kl)                               # grad KL(pi || pi_ref)
    grad_reverse_kl = -pi_ref + pi                                                   # grad KL(pi_ref || pi)
    assert np.abs(expected_gradient(pi_old, True) - grad_kl).max() < 1e-15
    assert np.abs(expected_gradient(pi, False) - grad_reverse_kl).max() < 1e-15
    # off-policy without the correction: neither KL's gradient
    off = expected_gradient(pi_old, False)
    assert min(np.abs(off - grad_kl).max(), np.abs(off - grad_reverse_kl).max()) > 1e-2


# ---------------------------------------------------------------------------------------------------------
# the trainer


GRADCHECK_CASES = [("grpo", "token", False), ("bnpo", "token", False), ("dr_grpo", "token", False),
                   ("dapo", "token", True), ("grpo", "sequence", True), ("dapo", "sequence", False)]


@pytest.mark.parametrize("loss_type, level, correction", GRADCHECK_CASES)
def test_gradient_applied_by_the_trainer_matches_finite_differences_of_the_grpo_loss(loss_type, level, correction):
    """num_iterations 2, so that the loss takes the rollout's logpi_old and the ratios of the moved policy meet the
    (asymmetric) clip; the batch is one mini-batch, one AdamW step."""
    policy, ref = make_models()
    options = dict(beta=0.5, epsilon=0.05, epsilon_high=0.08, loss_type=loss_type, max_completion_length=6,
                   importance_sampling_level=level, use_bias_correction_kl=correction)
    cfg = GRPOConfig(lr=1e-2, batch_size=8, forward_batch_size=8, mini_batch_size=8, num_iterations=2, group_size=4,
                     **options)
    trainer = GRPOTrainer(policy, ref, cfg)
    queries, responses, scores = group_batch(2, 4)
    batch = layout(queries, responses)
    old = response_logprobs(policy, batch, 8)
    perturb(policy)
    ref_logprobs = response_logprobs(ref, batch, 8)
    advantages = grpo_advantages(scores, 4)
    captured = capture_gradients(trainer)
    stats = trainer.train_minibatch(batch, old, ref_logprobs, advantages, np.full(8, int(batch.mask.sum())))
    assert 0 < stats["policy/clipfrac"] < 1 and stats["policy/kl_k3"] > 1e-3

    def objective():
        with mg.no_grad():
            return grpo_loss(response_logprobs(policy, batch, 8), old, ref_logprobs, advantages, batch.mask,
                             **options)[0]

    assert_matches_finite_differences(policy, captured, objective)


def one_grpo_step(cfg):
    """One GRPO step on fresh tiny models, the reference moved away so that the KL pulls -> (every loss call's terms,
    the gradients each AdamW step applied, the weights after, the stats)."""
    policy, ref = make_models()
    perturb(ref, scale=0.1)
    seen = []

    def loss(*args):
        value, terms = GRPO.loss(*args)
        seen.append(terms)
        return value, terms

    trainer = Trainer(dataclasses.replace(GRPO, loss=loss), policy, ref, cfg)
    steps, adamw_step = [], trainer.optimizer.step

    def recorded_step(*args, **kwargs):
        steps.append({n: p.grad.copy() for n, p in policy.named_parameters()})
        adamw_step(*args, **kwargs)

    trainer.optimizer.step = recorded_step
    stats = trainer.step(*group_batch(2, 4))
    return seen, steps, policy.state_dict(), stats


def relative_gap(a, b):
    """max over the tensors of max |a - b| / max |b|."""
    return max(np.abs(a[n] - b[n]).max() / np.abs(b[n]).max() for n in b if np.abs(b[n]).max() > 0)


ONE_STEP = dict(lr=1e-2, batch_size=8, forward_batch_size=4, group_size=4, beta=0.5, epsilon_high=0.28,
                max_completion_length=6, use_bias_correction_kl=True)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo"])
def test_at_one_iteration_every_ratio_is_exactly_1_and_the_step_is_one_adamw_step_on_the_whole_batch_loss(loss_type):
    """4 mini-batches of 2 rows (groups of 4 split) against the whole batch in one mini-batch: the same single AdamW
    step, from the same gradient. "bnpo" is the control that the comparison can fail: its step averages each
    mini-batch's own token mean, as trl 1.16.0's does."""
    seen, steps, weights, stats = one_grpo_step(GRPOConfig(mini_batch_size=2, loss_type=loss_type, **ONE_STEP))
    _, whole_steps, whole_weights, whole_stats = one_grpo_step(GRPOConfig(mini_batch_size=8, loss_type=loss_type,
                                                                          **ONE_STEP))
    assert len(seen) == 4 and len(steps) == 1 and len(whole_steps) == 1
    assert all(np.all(t.ratio == 1.0) for t in seen) and stats["grpo/policy/clipfrac"] == 0.0
    gaps = {"gradient": relative_gap(steps[0], whole_steps[0]), "weights": relative_gap(weights, whole_weights),
            "loss": abs(stats["grpo/loss/total"] - whole_stats["grpo/loss/total"])}
    print(loss_type, {k: f"{v:.1e}" for k, v in gaps.items()})
    if loss_type == "bnpo":
        assert gaps["gradient"] > 1e-3, gaps
    else:
        assert max(gaps.values()) < 1e-12, gaps


def test_a_step_per_mini_batch_splits_groups_and_leaves_ratio_1_after_the_first():
    """gradient_accumulation_steps=1, a step per mini-batch: four AdamW steps, the rollout's logpi_old, and
    every mini-batch after the first sees weights already moved: rho != 1, a different update from the whole batch's."""
    seen, steps, weights, _ = one_grpo_step(GRPOConfig(mini_batch_size=2, gradient_accumulation_steps=1, **ONE_STEP))
    _, _, whole_weights, _ = one_grpo_step(GRPOConfig(mini_batch_size=8, **ONE_STEP))
    drift = [float(np.abs(t.ratio - 1)[t.mask > 0].max()) for t in seen]
    print("max |rho - 1| per mini-batch:", [f"{d:.1e}" for d in drift])
    assert len(steps) == 4 and drift[0] < 1e-12 and min(drift[1:]) > 1e-3
    assert relative_gap(weights, whole_weights) > 1e-3


def test_with_two_iterations_each_pass_is_one_adamw_step_and_the_second_sees_moved_weights():
    seen, steps, _, _ = one_grpo_step(GRPOConfig(mini_batch_size=2, num_iterations=2, **ONE_STEP))
    drift = [float(np.abs(t.ratio - 1)[t.mask > 0].max()) for t in seen]
    assert len(seen) == 8 and len(steps) == 2
    assert max(drift[:4]) < 1e-12 and min(drift[4:]) > 1e-3, drift


def test_step_refuses_bad_groups_and_configs():
    policy, ref = make_models()
    trainer = GRPOTrainer(policy, ref, GRPOConfig(batch_size=8, forward_batch_size=4, mini_batch_size=4, group_size=4,
                                                  loss_type="dr_grpo", max_completion_length=4))
    queries, responses, scores = group_batch(2, 4)
    with pytest.raises(ValueError, match="query 5 differs from query 4"):
        trainer.step(queries[:5] + [queries[0]] + queries[6:], responses, scores)
    with pytest.raises(ValueError, match="max_completion_length = 4"):
        trainer.step(queries, responses[:7] + [np.ones(5, dtype=int)], scores)
    with pytest.raises(ValueError, match="empty response"):
        trainer.step(queries, responses[:7] + [np.array([], dtype=int)], scores)
    with pytest.raises(ValueError, match=r"scores at rows \[3\] are nan or inf"):
        trainer.step(queries, responses, np.r_[scores[:3], np.nan, scores[4:]])
    with pytest.raises(ValueError, match="group_size must be an integer >= 2"):
        GRPOConfig(batch_size=8, forward_batch_size=4, mini_batch_size=4, group_size=1)
    with pytest.raises(ValueError, match=r"GRPOConfig.batch_size \(8\) must be a multiple of group_size \(3\)"):
        GRPOConfig(batch_size=8, forward_batch_size=4, mini_batch_size=4, group_size=3)
    with pytest.raises(ValueError, match="max_completion_length"):
        GRPOConfig(batch_size=8, forward_batch_size=4, mini_batch_size=4, group_size=4, loss_type="dr_grpo")
    with pytest.raises(ValueError, match="loss_type"):
        GRPOConfig(loss_type="token")
    refused = {
        "GRPOConfig.loss_type must be one of": dict(loss_type="cispo"),
        "GRPOConfig.beta must be a finite number >= 0": dict(beta=-1.0),
        "GRPOConfig.epsilon must be a finite number > 0": dict(epsilon=float("nan")),
        "GRPOConfig.importance_sampling_level must be one of": dict(importance_sampling_level="seq"),
        "GRPOConfig.epsilon_high must be a finite number > 0": dict(epsilon_high=-0.1),
        "GRPOConfig.use_bias_correction_kl must be True or False": dict(use_bias_correction_kl="yes"),
        r"gradient_accumulation_steps \(3\) must divide the 2 mini-batches": dict(gradient_accumulation_steps=3),
        "GRPOConfig.gradient_accumulation_steps must be a positive integer": dict(gradient_accumulation_steps=0),
    }
    for message, change in refused.items():
        with pytest.raises(ValueError, match=message):
            GRPOConfig(batch_size=8, forward_batch_size=4, mini_batch_size=4, group_size=4, **change)


def test_a_batch_of_equal_rewards_is_reported_and_without_kl_leaves_the_weights_unchanged():
    policy, ref = make_models()
    perturb(policy, scale=0.2)
    trainer = GRPOTrainer(policy, ref, GRPOConfig(lr=1e-2, batch_size=8, forward_batch_size=8, mini_batch_size=8,
                                                  group_size=4, beta=0.0))
    queries, responses, _ = group_batch(2, 4)
    before = policy.state_dict()
    stats = trainer.step(queries, responses, np.full(8, 0.25))        # a binary fraction: the group means are exact
    assert stats["grpo/frac_reward_zero_std"] == 1.0 and stats["grpo/reward_std"] == 0.0
    # beta = 0 and zero advantages: a zero gradient, and Adam's step from a zero gradient is zero
    assert all(np.array_equal(before[k], v) for k, v in policy.state_dict().items())


def test_grpo_learns_a_token_level_reward_quickly():
    """Reward = fraction of response tokens equal to 7: GRPO must raise it well above the reference's 1/13."""
    cfg = mg.GPTConfig(vocab_size=13, block_size=12, n_layer=2, n_head=2, n_embd=16)
    trainer = GRPOTrainer(mg.GPT(cfg, seed=0), mg.GPT(cfg, seed=0),
                          GRPOConfig(lr=3e-3, batch_size=32, forward_batch_size=16, mini_batch_size=8,
                                     num_iterations=2, group_size=4, beta=0.04))
    first, last, elapsed = learn_token_reward(trainer, k=4, steps=30, n_prompts=8)
    print(f"reward {first:.3f} -> {last:.3f} in {elapsed:.1f} s")
    assert first < 0.2 and last > 0.6, f"reward went from {first:.3f} to {last:.3f}"


# ---------------------------------------------------------------------------------------------------------
# docs/methods.md as a whole: the defaults it quotes, with the checker of tests/docs/test_docs_numbers.py


def test_methods_doc_quotes_the_code_defaults():
    from test_docs_numbers import ROOT, Quote, check_quotes, code

    from ppo_np.dpo import DPOConfig
    from ppo_np.reinforce import REINFORCEConfig
    from ppo_np.rloo import RLOOConfig
    rloo, dpo, reinforce = RLOOConfig(), DPOConfig(), REINFORCEConfig()
    quotes = [
        Quote("`kl_coef` @, `cliprange` @, `rloo_k` @, `num_ppo_epochs` @",
              code("RLOOConfig()", rloo, "kl_coef", "cliprange", "rloo_k", "ppo_epochs")),
        Quote("its mini-batches have @ rows", code("RLOOConfig()", rloo, "mini_batch_size")),
        Quote("Our `beta` @ is TRL 0.13.0's", code("DPOConfig()", dpo, "beta")),
        Quote("`kl_coef` ($\\beta$, RLOOConfig's @)", code("REINFORCEConfig()", reinforce, "kl_coef")),
    ]
    problems = check_quotes(ROOT / "docs" / "methods.md", quotes)
    assert reinforce.kl_coef == rloo.kl_coef
    assert not problems, "\n".join(problems)


def test_methods_doc_lists_our_grpo_defaults_beside_trl_1_16_0s():
    """Each row of section 3's table, | `ours` [/ `trl's`] | `our default` or — | `trl's` | `file:line` | note |,
    against GRPOConfig() and tests/data/trl_1_16_0_fields.json (read from the wheel by scripts/trl_fields.py)."""
    import ast
    import json

    from test_docs_numbers import ROOT
    trl = json.loads((ROOT / "tests" / "data" / "trl_1_16_0_fields.json").read_text())["classes"]["GRPOConfig"]
    ours = GRPOConfig()
    text = (ROOT / "docs" / "methods.md").read_text()
    section = text[text.index("## 3. GRPO"):text.index("## 4. DPO")]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    checked, problems = set(), []
    for row in rows:
        names, our_cell, trl_cell, line, _ = [cell.strip() for cell in row.strip("|").split(" | ")]
        names = [name for name in names.split("`")[1::2]]
        our_name, trl_name = names[0], names[-1]
        field = trl["fields"][trl_name]
        if our_cell == "—":
            if hasattr(ours, our_name):
                problems.append(f"{our_name}: marked not implemented, but GRPOConfig has it")
        elif ast.literal_eval(our_cell.strip("`")) != getattr(ours, our_name):
            problems.append(f"{our_name}: the doc says {our_cell}, GRPOConfig() has {getattr(ours, our_name)!r}")
        if ast.literal_eval(trl_cell.strip("`")) != field["default"] or not field["source"].endswith(line.strip("`")):
            problems.append(f"{trl_name}: the doc says {trl_cell} at {line}, trl 1.16.0 has {field['default']!r} at "
                            f"{field['source']}")
        checked.add(trl_name)
    assert not problems, "\n".join(problems)
    assert {"loss_type", "beta", "use_bias_correction_kl", "epsilon", "epsilon_high", "importance_sampling_level",
            "num_iterations", "steps_per_generation", "num_generations", "scale_rewards"} <= checked, checked
