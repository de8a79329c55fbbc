"""ppo_np.core against PyTorch autograd of TRL 0.1's equations, plus known answers worked by hand.

The torch references below mirror TRL 0.1 (`trl/core.py`, `trl/ppo.py`, PPOTrainer.loss / compute_rewards):
TRL ran one unpadded response at a time, so for padded batches the references either loop over the rows'
valid slices (rewards, GAE) or replace torch.mean by the masked mean (the loss).
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ppo_np.core import (
    AdaptiveKLController,
    FixedKLController,
    clip_by_value,
    compute_advantages,
    compute_rewards,
    entropy_from_logits,
    logprobs_from_logits,
    logprobs_from_logits_backward,
    masked_mean,
    masked_var,
    ppo_loss,
    ppo_loss_backward,
    ppo_stats,
    whiten,
)

CLIPRANGE, CLIPRANGE_VALUE, VF_COEF = 0.2, 0.2, 0.1


def assert_close(name, ours, ref, atol=1e-12, rtol=1e-10):
    ours = np.asarray(ours, dtype=np.float64)
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, f"{name}: shape {ours.shape} != reference {ref.shape}"
    err = np.abs(ours - ref)
    worst = float(np.nanmax(err)) if err.size else 0.0
    ok = np.allclose(ours, ref, atol=atol, rtol=rtol, equal_nan=True)
    assert ok, f"{name}: worst abs error {worst:.3e} (atol {atol:g}, rtol {rtol:g})"


def t64(x):
    return torch.tensor(np.asarray(x), dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------------
# torch references, written as TRL 0.1 wrote them


def trl_logprobs_from_logits(logits, labels):
    logp = F.log_softmax(logits, dim=2)
    return torch.gather(logp, 2, labels.unsqueeze(2)).squeeze(-1)


def trl_entropy_from_logits(logits):
    pd = torch.nn.functional.softmax(logits, dim=-1)
    return torch.logsumexp(logits, axis=-1) - torch.sum(pd * logits, axis=-1)


def trl_whiten(values, shift_mean=True):
    mean, var = torch.mean(values), torch.var(values)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened += mean
    return whitened


def trl_clip_by_value(x, tensor_min, tensor_max):
    return torch.max(torch.min(x, tensor_max), tensor_min)


def trl_compute_rewards_row(score, logprob, ref_logprob, kl_coef):
    non_score_reward = -kl_coef * (logprob - ref_logprob)
    reward = non_score_reward.clone()
    reward[-1] += score
    return reward, non_score_reward


def trl_gae_row(values, rewards, gamma, lam):
    """TRL 0.1's loop in PPOTrainer.loss on one response: values, rewards (1, gen_len)."""
    lastgaelam = 0
    advantages_reversed = []
    gen_len = values.shape[1]
    for t in reversed(range(gen_len)):
        nextvalues = values[:, t + 1] if t < gen_len - 1 else 0.0
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1]).transpose(0, 1)
    return advantages, advantages + values


def trl_ppo_loss(logprob, old_logprobs, vpred, values, advantages, returns, mask=None):
    """TRL 0.1 PPOTrainer.loss from the new logprobs/values on, with torch.mean -> masked mean if mask."""
    if mask is None:
        mean, var = torch.mean, torch.var
    else:
        def mean(x):
            return (x * mask).sum() / mask.sum()

        def var(x):
            return mean((x - mean(x)) ** 2) * mask.sum() / (mask.sum() - 1)

    vpredclipped = trl_clip_by_value(vpred, values - CLIPRANGE_VALUE, values + CLIPRANGE_VALUE)
    vf_losses1 = (vpred - returns) ** 2
    vf_losses2 = (vpredclipped - returns) ** 2
    vf_loss = .5 * mean(torch.max(vf_losses1, vf_losses2))
    vf_clipfrac = mean(torch.gt(vf_losses2, vf_losses1).double())

    ratio = torch.exp(logprob - old_logprobs)
    pg_losses = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - CLIPRANGE, 1.0 + CLIPRANGE)
    pg_loss = mean(torch.max(pg_losses, pg_losses2))
    pg_clipfrac = mean(torch.gt(pg_losses2, pg_losses).double())

    loss = pg_loss + VF_COEF * vf_loss
    stats = {
        "loss/policy": pg_loss, "loss/value": vf_loss, "loss/total": loss,
        "policy/approxkl": .5 * mean((logprob - old_logprobs) ** 2),
        "policy/policykl": mean(logprob - old_logprobs),
        "policy/clipfrac": pg_clipfrac,
        "returns/mean": mean(returns), "returns/var": var(returns),
        "val/vpred": mean(vpred), "val/error": mean((vpred - returns) ** 2),
        "val/clipfrac": vf_clipfrac, "val/mean": mean(values), "val/var": var(values),
    }
    return loss, stats


def torch_ppo_reference(logprobs, old_logprobs, values, old_values, advantages, returns, mask=None):
    """Loss, stats and autograd grads w.r.t. logprobs and values of the TRL loss."""
    lp = t64(logprobs).requires_grad_(True)
    v = t64(values).requires_grad_(True)
    loss, stats = trl_ppo_loss(lp, t64(old_logprobs), v, t64(old_values), t64(advantages), t64(returns),
                               None if mask is None else t64(mask))
    loss.backward()
    return loss, stats, lp.grad, v.grad


# ---------------------------------------------------------------------------------------------------------
# inputs that exercise every region of both clips


def right_padded_mask(lengths, T):
    return (np.arange(T)[None, :] < np.asarray(lengths)[:, None]).astype(np.float64)


def region_inputs(seed, B=6, T=10):
    """Per-token PPO inputs whose tokens fall in every case of the policy and value max/clip."""
    rng = np.random.default_rng(seed)
    # Token k = b*T + t takes case k % 5 of the move and sign (k // 5) % 2 of the advantage and of the
    # return's side, so every combination occurs within the first 10 tokens of each full row.
    k = np.arange(B * T).reshape(B, T)
    move, side = k % 5, np.where((k // 5) % 2 == 0, 1.0, -1.0)
    old_logprobs = -rng.uniform(0.5, 4.0, size=(B, T))
    # log-ratios far below, inside, exactly 0 (ratio == 1), inside, far above the clip range
    logratio = np.array([-0.6, -0.05, 0.0, 0.05, 0.6])[move] + rng.uniform(-0.02, 0.02, (B, T)) * (move != 2)
    logprobs = old_logprobs + logratio
    advantages = side * rng.uniform(0.2, 2.0, size=(B, T))
    if T > 4:
        advantages[0, 4] = 0.0  # ratio far above the range, but A = 0: both branches 0, a tie outside the clip
    old_values = rng.normal(size=(B, T))
    # values moved far down, a little, not at all, a little, far up; the return lies up (side +1) or down
    dv = np.array([-0.5, -0.1, 0.0, 0.1, 0.5])[move] + rng.uniform(-0.05, 0.05, (B, T)) * (move != 2)
    values = old_values + dv
    returns = old_values + side * rng.uniform(0.4, 1.0, size=(B, T))
    if T > 7:
        # outside the clip range with R exactly halfway between V and V^c: (V - R)^2 == (V^c - R)^2, a tie.
        # 0.3 + 0.2 == 0.5 in floating point, so V^c = 0.5, and (1.5 - 1)^2 == (0.5 - 1)^2 == 0.25 exactly.
        old_values[0, 7], values[0, 7], returns[0, 7] = 0.3, 1.5, 1.0
    return logprobs, old_logprobs, values, old_values, advantages, returns


def policy_regions(logprobs, old_logprobs, advantages, mask):
    r = np.exp(logprobs - old_logprobs)
    m = mask.astype(bool)
    inside = m & (r >= 1 - CLIPRANGE) & (r <= 1 + CLIPRANGE)
    above, below = m & (r > 1 + CLIPRANGE), m & (r < 1 - CLIPRANGE)
    return {
        "ratio inside": inside,
        "ratio == 1": m & (logprobs == old_logprobs),
        "above, A>0 (clipped wins)": above & (advantages > 0),
        "above, A<0 (unclipped wins)": above & (advantages < 0),
        "below, A>0 (unclipped wins)": below & (advantages > 0),
        "below, A<0 (clipped wins)": below & (advantages < 0),
        "A == 0": m & (advantages == 0),
    }


def value_regions(values, old_values, returns, mask):
    m = mask.astype(bool)
    vc = np.clip(values, old_values - CLIPRANGE_VALUE, old_values + CLIPRANGE_VALUE)
    inside = m & (np.abs(values - old_values) < CLIPRANGE_VALUE)
    outside = m & ~inside
    return {
        "value inside": inside,
        "values == old_values": m & (values == old_values),
        "outside, unclipped wins": outside & ((values - returns) ** 2 > (vc - returns) ** 2),
        "outside, clipped wins": outside & ((vc - returns) ** 2 > (values - returns) ** 2),
        "outside, a tie": outside & ((vc - returns) ** 2 == (values - returns) ** 2),
    }


def assert_every_region_has_members(regions):
    counts = {name: int(r.sum()) for name, r in regions.items()}
    assert all(c > 0 for c in counts.values()), f"a region has no tokens: {counts}"


# ---------------------------------------------------------------------------------------------------------
# log-probabilities and entropy


@pytest.mark.parametrize("scale", [1.0, 60.0])
def test_logprobs_from_logits_matches_torch(scale):
    rng = np.random.default_rng(0)
    logits = scale * rng.normal(size=(3, 5, 11))
    labels = rng.integers(0, 11, size=(3, 5))
    ref = trl_logprobs_from_logits(t64(logits), torch.tensor(labels))
    assert_close("logprobs", logprobs_from_logits(logits, labels), ref, atol=1e-12 * scale)


def test_logprobs_from_logits_backward_matches_torch_autograd():
    rng = np.random.default_rng(1)
    logits = 3 * rng.normal(size=(3, 5, 11))
    labels = rng.integers(0, 11, size=(3, 5))
    dlogprobs = rng.normal(size=(3, 5))
    lt = t64(logits).requires_grad_(True)
    (trl_logprobs_from_logits(lt, torch.tensor(labels)) * t64(dlogprobs)).sum().backward()
    dlogits = logprobs_from_logits_backward(logits, labels, dlogprobs)
    assert_close("dlogits", dlogits, lt.grad, atol=1e-14)


def test_float32_inputs_stay_float32_and_agree_with_float64():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 3, 5)).astype(np.float32)
    labels = rng.integers(0, 5, size=(2, 3))
    assert logprobs_from_logits(logits, labels).dtype == np.float32
    assert logprobs_from_logits_backward(logits, labels, np.ones((2, 3))).dtype == np.float32
    inputs64 = region_inputs(seed=2)
    loss64, grads64, _ = ours(inputs64)
    loss32, grads32, _ = ours([a.astype(np.float32) for a in inputs64])
    assert grads32["logprobs"].dtype == np.float32 and grads32["values"].dtype == np.float32
    assert_close("float32 loss", loss32, loss64, atol=1e-5)
    for name in grads64:
        assert_close(f"float32 d{name}", grads32[name], grads64[name], atol=1e-6)


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_entropy_from_logits_matches_torch(scale):
    rng = np.random.default_rng(3)
    logits = scale * rng.normal(size=(4, 6, 13))
    ref = trl_entropy_from_logits(t64(logits))
    assert_close("entropy", entropy_from_logits(logits), ref, atol=1e-11 * scale)


def test_entropy_from_logits_is_uniform_log_v_and_ignores_minus_inf():
    logits = np.zeros((1, 2, 8))
    logits[0, 1, 4:] = -np.inf  # four tokens left: entropy log 4
    assert_close("entropy", entropy_from_logits(logits), np.array([[np.log(8), np.log(4)]]), atol=1e-14)


# ---------------------------------------------------------------------------------------------------------
# masked statistics and whitening


def test_whiten_known_answer_unbiased():
    # x = 1, 2, 3, 4: mean 2.5, unbiased var (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3 (the biased 5/4 would
    # give +-1.342 at the ends), sqrt(5/3) = 1.2909944487: whitened = +-1.1618950, +-0.3872983
    expected = np.array([-1.5, -0.5, 0.5, 1.5]) / np.sqrt(5 / 3 + 1e-8)
    assert_close("hand numbers", expected, [-1.1618950039, -0.3872983346, 0.3872983346, 1.1618950039], atol=5e-9)
    assert_close("whiten", whiten([1.0, 2.0, 3.0, 4.0]), expected, atol=1e-15)
    # shift_mean=False adds the mean 2.5 back
    assert_close("whiten shift_mean=False", whiten([1.0, 2.0, 3.0, 4.0], shift_mean=False), expected + 2.5,
                 atol=1e-9)
    # the same four numbers behind padding that holds nonsense: padding is ignored and comes out 0
    x = np.array([[1.0, 2.0, 100.0], [3.0, 4.0, np.nan]])
    mask = np.array([[1, 1, 0], [1, 1, 0]])
    expected_masked = [[expected[0], expected[1], 0.0], [expected[2], expected[3], 0.0]]
    assert_close("masked whiten", whiten(x, mask), expected_masked, atol=1e-15)


def test_masked_mean_and_var_known_answer():
    x = np.array([[2.0, 4.0, 7.0], [6.0, -50.0, np.inf]])
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    assert_close("masked_mean", masked_mean(x, mask), 4.0)
    assert_close("masked_var unbiased", masked_var(x, mask), (4 + 0 + 4) / 2)
    assert_close("masked_var biased", masked_var(x, mask, unbiased=False), (4 + 0 + 4) / 3)


@pytest.mark.parametrize("shift_mean", [True, False])
def test_whiten_matches_torch_masked_and_unmasked(shift_mean):
    rng = np.random.default_rng(4)
    x = 3.0 + 2.0 * rng.normal(size=(5, 7))
    assert_close("whiten", whiten(x, shift_mean=shift_mean), trl_whiten(t64(x), shift_mean), atol=1e-13)
    mask = right_padded_mask([7, 3, 5, 1, 6], 7)
    m = mask.astype(bool)
    ref = np.zeros_like(x)
    ref[m] = trl_whiten(t64(x[m]), shift_mean).numpy()  # TRL on the valid tokens alone
    assert_close("masked whiten", whiten(x, mask, shift_mean=shift_mean), ref, atol=1e-13)


def test_clip_by_value_matches_trl():
    rng = np.random.default_rng(5)
    x, lo = rng.normal(size=(4, 5)), rng.normal(size=(4, 5)) - 0.3
    hi = lo + 0.6
    assert_close("clip_by_value", clip_by_value(x, lo, hi), trl_clip_by_value(t64(x), t64(lo), t64(hi)), atol=0)


# ---------------------------------------------------------------------------------------------------------
# rewards and advantages


def test_compute_rewards_matches_trl_row_by_row():
    rng = np.random.default_rng(6)
    lengths, T, kl_coef = [5, 2, 4, 1], 5, 0.17
    mask = right_padded_mask(lengths, T)
    logprobs, ref_logprobs = -rng.uniform(0, 3, (4, T)), -rng.uniform(0, 3, (4, T))
    scores = rng.normal(size=4)
    rewards, non_score = compute_rewards(scores, logprobs, ref_logprobs, kl_coef, mask)
    for b, n in enumerate(lengths):
        ref_r, ref_ns = trl_compute_rewards_row(t64(scores[b]), t64(logprobs[b, :n]), t64(ref_logprobs[b, :n]),
                                                kl_coef)
        assert_close(f"rewards row {b}", rewards[b, :n], ref_r)
        assert_close(f"non_score_rewards row {b}", non_score[b, :n], ref_ns)
    assert_close("rewards on padding", rewards[mask == 0], np.zeros(int((mask == 0).sum())), atol=0)
    assert_close("non_score on padding", non_score[mask == 0], np.zeros(int((mask == 0).sum())), atol=0)
    # unmasked: the score lands on the last column of every row
    rewards, non_score = compute_rewards(scores, logprobs, ref_logprobs, kl_coef)
    score_on_last = np.eye(T)[-1] * scores[:, None]
    assert_close("unmasked rewards", rewards, -kl_coef * (logprobs - ref_logprobs) + score_on_last)


def test_compute_advantages_matches_trl_loop_row_by_row():
    rng = np.random.default_rng(7)
    lengths, T, gamma, lam = [6, 3, 1, 5], 6, 0.97, 0.9
    mask = right_padded_mask(lengths, T)
    values, rewards = rng.normal(size=(4, T)), rng.normal(size=(4, T))
    advantages, returns = compute_advantages(values, rewards, gamma, lam, mask)
    for b, n in enumerate(lengths):
        ref_a, ref_r = trl_gae_row(t64(values[b:b + 1, :n]), t64(rewards[b:b + 1, :n]), gamma, lam)
        assert_close(f"advantages row {b}", advantages[b, :n], ref_a[0])
        assert_close(f"returns row {b}", returns[b, :n], ref_r[0])
    assert_close("advantages on padding", advantages[mask == 0], np.zeros(int((mask == 0).sum())), atol=0)
    # unmasked, TRL's defaults gamma = 1, lam = 0.95
    advantages, returns = compute_advantages(values, rewards, 1.0, 0.95)
    ref_a, ref_r = trl_gae_row(t64(values), t64(rewards), 1.0, 0.95)
    assert_close("unmasked advantages", advantages, ref_a)
    assert_close("unmasked returns", returns, ref_r)


def test_gae_known_answer_with_padding():
    # gamma 0.9, lam 0.8 (gamma lam = 0.72), worked by hand:
    # row 0, V = 1 2 3, r = 0.5 0 1:
    #   t=2: delta = 1 + 0 - 3 = -2                   A = -2
    #   t=1: delta = 0 + 0.9*3 - 2 = 0.7              A = 0.7 + 0.72*(-2) = -0.74
    #   t=0: delta = 0.5 + 0.9*2 - 1 = 1.3            A = 1.3 + 0.72*(-0.74) = 0.7672
    # row 1, V = 2 1 [pad], r = 1 -1 [pad]:
    #   t=1: delta = -1 + 0 - 1 = -2                  A = -2
    #   t=0: delta = 1 + 0.9*1 - 2 = -0.1             A = -0.1 + 0.72*(-2) = -1.54
    values = np.array([[1.0, 2.0, 3.0], [2.0, 1.0, 9.0]])
    rewards = np.array([[0.5, 0.0, 1.0], [1.0, -1.0, 5.0]])
    mask = np.array([[1, 1, 1], [1, 1, 0]])
    advantages, returns = compute_advantages(values, rewards, 0.9, 0.8, mask)
    assert_close("advantages", advantages, [[0.7672, -0.74, -2.0], [-1.54, -2.0, 0.0]], atol=1e-12)
    assert_close("returns", returns, [[1.7672, 1.26, 1.0], [0.46, -1.0, 0.0]], atol=1e-12)


def test_padded_batch_gives_row_for_row_what_each_row_alone_gives():
    rng = np.random.default_rng(8)
    lengths, T = [4, 1, 3], 4
    mask = right_padded_mask(lengths, T)
    logprobs, ref_logprobs = -rng.uniform(0, 3, (3, T)), -rng.uniform(0, 3, (3, T))
    values, scores = rng.normal(size=(3, T)), rng.normal(size=3)
    for a in (logprobs, ref_logprobs, values):
        a[mask == 0] = np.nan  # padding may hold anything; none of it may leak
    rewards, non_score = compute_rewards(scores, logprobs, ref_logprobs, 0.3, mask)
    advantages, returns = compute_advantages(values, rewards, 0.99, 0.95, mask)
    for b, n in enumerate(lengths):
        r1, ns1 = compute_rewards(scores[b:b + 1], logprobs[b:b + 1, :n], ref_logprobs[b:b + 1, :n], 0.3)
        a1, ret1 = compute_advantages(values[b:b + 1, :n], r1, 0.99, 0.95)
        assert_close(f"rewards row {b}", rewards[b, :n], r1[0], atol=0)
        assert_close(f"non_score row {b}", non_score[b, :n], ns1[0], atol=0)
        assert_close(f"advantages row {b}", advantages[b, :n], a1[0], atol=0)
        assert_close(f"returns row {b}", returns[b, :n], ret1[0], atol=0)
    pad = mask == 0
    for name, a in [("rewards", rewards), ("advantages", advantages), ("returns", returns)]:
        assert_close(f"{name} on padding", a[pad], np.zeros(int(pad.sum())), atol=0)


# ---------------------------------------------------------------------------------------------------------
# the PPO loss


def ours(inputs, mask=None):
    """ppo_loss, ppo_loss_backward and ppo_stats of one set of inputs -> (loss, grads, stats)."""
    loss, terms = ppo_loss(*inputs, cliprange=CLIPRANGE, cliprange_value=CLIPRANGE_VALUE, vf_coef=VF_COEF, mask=mask)
    return loss, ppo_loss_backward(terms), ppo_stats(terms)


def assert_matches_torch(inputs, mask=None, tag=""):
    loss, grads, stats = ours(inputs, mask)
    ref_loss, ref_stats, ref_dlogprobs, ref_dvalues = torch_ppo_reference(*inputs, mask=mask)
    assert isinstance(loss, float)
    assert_close(f"{tag}loss", loss, ref_loss)
    assert_close(f"{tag}dlogprobs", grads["logprobs"], ref_dlogprobs, atol=1e-15)
    assert_close(f"{tag}dvalues", grads["values"], ref_dvalues, atol=1e-15)
    assert set(stats) == set(ref_stats), f"stat names differ: {sorted(set(stats) ^ set(ref_stats))}"
    for key, ref in ref_stats.items():
        assert_close(f"{tag}stat {key}", stats[key], ref)
    return grads


@pytest.mark.parametrize("masked", [False, True])
def test_ppo_loss_grads_match_torch_autograd(masked):
    inputs = region_inputs(seed=9)
    B, T = inputs[0].shape
    mask = right_padded_mask([T, 7, 3, T, 5, 1], T) if masked else None
    m = np.ones((B, T)) if mask is None else mask
    assert_every_region_has_members(policy_regions(inputs[0], inputs[1], inputs[4], m))
    assert_every_region_has_members(value_regions(inputs[2], inputs[3], inputs[5], m))
    grads = assert_matches_torch(inputs, mask)
    # negative control: the inputs do tell a correct gradient from one that ignores the clipping
    r = np.exp(inputs[0] - inputs[1])
    naive = -inputs[4] * r * m / m.sum()
    worst = np.abs(naive - grads["logprobs"]).max()
    assert worst > 1e-3, f"the clipped tokens do not change the gradient (worst {worst:.2e}): inputs too tame"
    if masked:
        pad = mask == 0
        for name in ("logprobs", "values"):
            assert_close(f"d{name} on padding", grads[name][pad], np.zeros(int(pad.sum())), atol=0)


def test_ppo_loss_at_ratio_one_matches_torch():
    # the first mini-batch of a step: the policy has not moved, so logprobs == old_logprobs, values == old_values
    logprobs, old_logprobs, values, old_values, advantages, returns = region_inputs(seed=10)
    inputs = (old_logprobs.copy(), old_logprobs, old_values.copy(), old_values, advantages, returns)
    mask = right_padded_mask([10, 4, 9, 1, 10, 6], 10)
    for m in (None, mask):
        loss, grads, stats = ours(inputs, m)
        assert_matches_torch(inputs, m, tag="ratio 1: ")
        mf = np.ones_like(advantages) if m is None else m
        n = mf.sum()
        # here the loss is the plain policy gradient -A/N and the plain value regression 0.5 * 2(v - R)/N
        assert_close("dlogprobs at ratio 1", grads["logprobs"], -advantages * mf / n, atol=1e-15)
        assert_close("dvalues at v == v_old", grads["values"], VF_COEF * (old_values - returns) * mf / n,
                     atol=1e-15)
        assert stats["policy/clipfrac"] == 0.0 and stats["val/clipfrac"] == 0.0
        assert stats["policy/approxkl"] == 0.0 and stats["policy/policykl"] == 0.0


def test_ppo_loss_value_exactly_at_clip_bounds_matches_torch():
    # TRL's clip_by_value is max(min(v, hi), lo): torch gives v half the gradient at a bound, not clamp's 1
    _, old_logprobs, _, old_values, advantages, returns = region_inputs(seed=11, B=2, T=6)
    values = old_values.copy()
    values[0] = old_values[0] + CLIPRANGE_VALUE   # the same float sum TRL's bound computes
    values[1] = old_values[1] - CLIPRANGE_VALUE
    inputs = (old_logprobs.copy(), old_logprobs, values, old_values, advantages, returns)
    _, grads, _ = ours(inputs)
    assert_matches_torch(inputs, tag="at bound: ")
    assert_close("dvalues at the bound", grads["values"], VF_COEF * 0.75 * (values - returns) / values.size,
                 atol=1e-15)


def exact_logratio(target):
    """A float64 x with exp(x) == target exactly, in NumPy and in torch (walks a few ulps from log target)."""
    x = np.log(target)
    for k in sorted(range(-64, 65), key=abs):
        y = x + k * np.spacing(x)
        if np.exp(y) == target and torch.exp(t64(y)).item() == target:
            return y
    raise AssertionError(f"no float64 x with exp(x) == {target!r} near log({target!r})")


def test_ppo_loss_ratio_exactly_at_clip_bounds_matches_torch():
    # torch.clamp passes the gradient at its bounds, and there the two branches tie: the gradient is -A r
    hi, lo = exact_logratio(1.0 + CLIPRANGE), exact_logratio(1.0 - CLIPRANGE)
    old_logprobs = np.zeros((1, 4))
    logprobs = np.array([[hi, hi, lo, lo]])
    advantages = np.array([[1.3, -0.7, 0.9, -1.1]])
    values = old_values = returns = np.zeros((1, 4))
    inputs = (logprobs, old_logprobs, values, old_values, advantages, returns)
    _, grads, stats = ours(inputs)
    assert_matches_torch(inputs, tag="ratio at bound: ")
    ratio = np.array([[1.0 + CLIPRANGE] * 2 + [1.0 - CLIPRANGE] * 2])
    assert_close("dlogprobs at the bound", grads["logprobs"], -advantages * ratio / 4, atol=1e-15)
    assert stats["policy/clipfrac"] == 0.0


def test_ppo_loss_ignores_whatever_padding_holds():
    inputs = region_inputs(seed=12)
    mask = right_padded_mask([10, 2, 7, 10, 1, 4], 10)
    loss, grads, stats = ours(inputs, mask)
    junk = [a.copy() for a in inputs]
    for a in junk:
        a[mask == 0] = np.nan
    loss2, grads2, stats2 = ours(junk, mask)
    assert loss2 == loss, f"loss changed with the padding: {loss} vs {loss2}"
    for name in grads:
        assert_close(f"d{name}", grads2[name], grads[name], atol=0)
    for key in stats:
        assert_close(f"stat {key}", stats2[key], stats[key], atol=0)


def test_chained_dlogits_match_torch_autograd_of_the_loss_from_logits():
    rng = np.random.default_rng(13)
    B, T, V = 4, 6, 9
    logits = 2.0 * rng.normal(size=(B, T, V))
    labels = rng.integers(0, V, size=(B, T))
    mask = right_padded_mask([6, 3, 5, 2], T)
    logprobs = logprobs_from_logits(logits, labels)
    old_logprobs = logprobs - rng.choice([-0.6, 0.0, 0.05, 0.6], size=(B, T))
    values = rng.normal(size=(B, T))
    old_values = values - rng.choice([-0.5, 0.0, 0.1, 0.5], size=(B, T))
    advantages, returns = rng.normal(size=(B, T)), values + rng.normal(size=(B, T))
    assert_every_region_has_members(
        {k: v for k, v in policy_regions(logprobs, old_logprobs, advantages, mask).items()
         if k not in ("ratio == 1", "A == 0")})

    loss, grads, _ = ours((logprobs, old_logprobs, values, old_values, advantages, returns), mask)
    dlogits = logprobs_from_logits_backward(logits, labels, grads["logprobs"])

    lt, vt = t64(logits).requires_grad_(True), t64(values).requires_grad_(True)
    ref_loss, _ = trl_ppo_loss(trl_logprobs_from_logits(lt, torch.tensor(labels)), t64(old_logprobs), vt,
                               t64(old_values), t64(advantages), t64(returns), t64(mask))
    ref_loss.backward()
    assert_close("loss", loss, ref_loss)
    assert_close("dlogits", dlogits, lt.grad, atol=1e-15)
    assert_close("dvalues", grads["values"], vt.grad, atol=1e-15)
    assert np.abs(dlogits[mask == 0]).max() == 0.0, "padding positions got a logit gradient"


# ---------------------------------------------------------------------------------------------------------
# KL controllers


def test_adaptive_kl_controller_trajectory():
    ctl = AdaptiveKLController(init_kl_coef=0.2, target=6, horizon=10000)
    # (current_kl, n_steps, multiplier by hand: 1 + clip(kl/6 - 1, -0.2, 0.2) * n_steps / 10000)
    steps = [
        (6.0, 256, 1.0),                   # on target
        (9.0, 256, 1.00512),               # +0.5 clipped to +0.2: 1 + 0.2 * 0.0256
        (6.6, 256, 1.00256),               # +0.1 unclipped: 1 + 0.1 * 0.0256
        (3.0, 256, 0.99488),               # -0.5 clipped to -0.2
        (0.0, 1000, 0.98),                 # -1 clipped to -0.2: 1 - 0.2 * 0.1
        (5.7, 10000, 0.95),                # -0.05 over a whole horizon
        (60.0, 10000, 1.2),                # +9 clipped: at most 20% per horizon
    ]
    expected = 0.2
    for kl, n_steps, mult in steps:
        expected *= mult
        ctl.update(kl, n_steps)
        assert abs(ctl.value - expected) < 1e-15, f"kl {kl}: value {ctl.value!r} != {expected!r}"
    assert abs(ctl.value - 0.2 * 1.00512 * 1.00256 * 0.99488 * 0.98 * 0.95 * 1.2) < 1e-15


def test_fixed_kl_controller_never_moves():
    ctl = FixedKLController(0.05)
    for kl in (0.0, 6.0, 1e6):
        ctl.update(kl, 256)
    assert ctl.value == 0.05


# ---------------------------------------------------------------------------------------------------------
# bad input: refused where it enters (PPOConfig, Trainer.step: tests/methods/test_ppo_trainer.py); the equations check shapes


def test_the_equations_assert_their_shapes_and_leave_values_to_the_boundaries():
    """A per-token array of another shape would broadcast into a wrong answer: one line of assertion stops it. A bad
    value is refused where it enters (PPOConfig, Trainer.step); a direct caller of core gets no value checks, so a nan
    score or a negative cliprange goes through to the equations, as docs/ppo.md, section 17, says."""
    good = region_inputs(seed=14, B=2, T=3)
    kw = dict(cliprange=0.2, cliprange_value=0.2, vf_coef=0.1)
    mismatched = {
        "ppo_loss": lambda: ppo_loss(good[0], good[1][:, :2], *good[2:], **kw),
        "compute_rewards": lambda: compute_rewards(np.zeros(3), good[0], good[1], 0.2),
        "compute_advantages": lambda: compute_advantages(good[2], good[5][:, :2], 1.0, 0.95),
    }
    for name, call in mismatched.items():
        with pytest.raises(AssertionError):
            call()
            pytest.fail(f"{name}: a shape mismatch went through")
    rewards, _ = compute_rewards(np.array([0.0, np.nan]), good[0], good[1], 0.2)
    assert np.isnan(rewards[1, -1]) and np.isfinite(rewards[0]).all()
    loss, _ = ppo_loss(*good, cliprange=-0.1, cliprange_value=0.2, vf_coef=0.1)
    assert np.isfinite(loss)
