"""ppo_np.grpo against torch autograd of TRL 0.19.1's GRPO code (and 0.14.0's, at ratio 1), GRPO's zero loss at the
first step, groups of equal rewards, the two biases Dr. GRPO removes, the edge cases, and the GRPOTrainer: the
gradient it applies against finite differences through the whole GPT, its checks, learning."""
import numpy as np
import pytest
import torch

import minigpt_np as mg
from policy_gradcheck import (assert_matches_finite_differences, capture_gradients, group_batch, learn_token_reward,
                              make_models, perturb)
from ppo_np.batch import layout, response_logprobs
from ppo_np.grpo import (GRPOConfig, GRPOTrainer, group_reward_std, grpo_advantages, grpo_loss, grpo_loss_backward,
                         grpo_stats)

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


def test_bad_inputs_raise_value_error():
    good = np.zeros((4, 3))
    kw = dict(beta=BETA, epsilon=EPSILON)
    cases = {
        "G = 1": (lambda: grpo_advantages(np.ones(4), 1), "integer >= 2"),
        "not whole groups": (lambda: grpo_advantages(np.ones(5), 2), "multiple of group_size"),
        "nan score": (lambda: grpo_advantages(np.array([0.0, np.nan]), 2), "finite"),
        "unknown loss_type": (lambda: grpo_loss(good, good, good, np.zeros(4), loss_type="sum", **kw), "loss_type"),
        "dr_grpo without T_max": (lambda: grpo_loss(good, good, good, np.zeros(4), loss_type="dr_grpo", **kw),
                                  "max_completion_length"),
        "T_max too small": (lambda: grpo_loss(good, good, good, np.zeros(4), loss_type="dr_grpo",
                                              max_completion_length=2, **kw), "longest response"),
        "empty response": (lambda: grpo_loss(good, good, good, np.zeros(4), np.array([[1, 0, 0]] * 3 + [[0, 0, 0]]),
                                             **kw), "no valid token"),
        "negative beta": (lambda: grpo_loss(good, good, good, np.zeros(4), beta=-1.0, epsilon=0.2), "beta"),
    }
    for name, (call, message) in cases.items():
        with pytest.raises(ValueError, match=message):
            call()
            pytest.fail(f"{name}: no ValueError")


# ---------------------------------------------------------------------------------------------------------
# the trainer


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo"])
def test_gradient_applied_by_the_trainer_matches_finite_differences_of_the_grpo_loss(loss_type):
    policy, ref = make_models()
    cfg = GRPOConfig(lr=1e-2, batch_size=8, forward_batch_size=8, mini_batch_size=8, group_size=4, beta=0.5,
                     epsilon=0.05, loss_type=loss_type, max_completion_length=6)
    trainer = GRPOTrainer(policy, ref, cfg)
    queries, responses, scores = group_batch(2, 4)
    batch = layout(queries, responses)
    old = response_logprobs(policy, batch, 8)
    perturb(policy)
    ref_logprobs = response_logprobs(ref, batch, 8)
    advantages = grpo_advantages(scores, 4)
    captured = capture_gradients(trainer)
    stats = trainer.train_minibatch(batch, old, ref_logprobs, advantages)
    assert 0 < stats["policy/clipfrac"] < 1 and stats["policy/kl_k3"] > 1e-3

    def objective():
        with mg.no_grad():
            return grpo_loss(response_logprobs(policy, batch, 8), old, ref_logprobs, advantages, batch.mask,
                             beta=cfg.beta, epsilon=cfg.epsilon, loss_type=loss_type, max_completion_length=6)[0]

    assert_matches_finite_differences(policy, captured, objective)


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
    with pytest.raises(ValueError, match="group_size must be an integer >= 2"):
        GRPOConfig(batch_size=8, forward_batch_size=4, mini_batch_size=4, group_size=1)
    with pytest.raises(ValueError, match="max_completion_length"):
        GRPOConfig(batch_size=8, forward_batch_size=4, mini_batch_size=4, group_size=4, loss_type="dr_grpo")
    with pytest.raises(ValueError, match="loss_type"):
        GRPOConfig(loss_type="token")


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
# docs/methods.md as a whole: the defaults it quotes, with the checker of tests/test_docs_numbers.py


def test_methods_doc_quotes_the_code_defaults():
    from test_docs_numbers import ROOT, Quote, check_quotes, code

    from ppo_np.dpo import DPOConfig
    from ppo_np.rloo import RLOOConfig
    rloo, grpo_cfg, dpo = RLOOConfig(), GRPOConfig(), DPOConfig()
    quotes = [
        Quote("`kl_coef` @, `cliprange` @, `rloo_k` @, `num_ppo_epochs` @",
              code("RLOOConfig()", rloo, "kl_coef", "cliprange", "rloo_k", "ppo_epochs")),
        Quote("its mini-batches have @ rows", code("RLOOConfig()", rloo, "mini_batch_size")),
        Quote("`group_size` @, `beta` @ (0.14.0's", code("GRPOConfig()", grpo_cfg, "group_size", "beta")),
        Quote("`epsilon` @, `num_iterations` @, `loss_type` `\"grpo\"`",
              code("GRPOConfig()", grpo_cfg, "epsilon", "num_iterations")),
        Quote("Our `beta` @ is TRL 0.13.0's", code("DPOConfig()", dpo, "beta")),
    ]
    problems = check_quotes(ROOT / "docs" / "methods.md", quotes)
    assert grpo_cfg.loss_type == "grpo" and grpo_cfg.scale_rewards is True
    assert not problems, "\n".join(problems)
