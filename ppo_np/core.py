"""The PPO equations of TRL 0.1 in NumPy, with hand-derived per-token gradients. "TRL 0.1" is the PyPI release
trl==0.1.0, whose `trl/core.py` and `trl/ppo.py` are identical to git commit 4fe9988eb. Read top to bottom
beside docs/ppo.md, sections 1 to 10 (the stats, section 13, come last).

Shape legend:
    B  responses in the batch
    T  response tokens (right padded to the longest response)
    V  vocabulary size
    mask (B,T): 1 on response tokens, 0 on padding; every row is 1...1 0...0 with at least one 1.
    N = sum(mask), the number of valid tokens; every mean below is over valid tokens only.

Symbols, as in docs/ppo.md (its notation table): logpi (logprobs), V (values, the value head now: TRL's `vpred`),
V_old (old_values, the rollout's: TRL's `values`), r (rewards), A (GAE advantages), Ahat (whitened advantages),
R (returns), rho (ratio), e (cliprange), e_v (cliprange_value), lo = V_old - e_v, hi = V_old + e_v, V^c
(vpredclipped), c_v (vf_coef). Per-token gradients are given in units of 1/N, N dL/dlogpi_t and N dL/dV_t,
as in the tables of docs/ppo.md, section 7.

TRL 0.1 computed the loss on one unpadded response at a time, so its plain `torch.mean` over a (1, T) tensor
is our masked mean over the valid tokens. Everything else (unbiased variance in `whiten`, 1e-8 inside the
square root, the 0.5 on the value loss, the sign of `policy/policykl`, `clip_by_value` as max(min(x, hi), lo))
follows TRL 0.1 to the letter.

The loss comes as llm.c pairs its layers: `ppo_loss` is the forward (the loss and the per-token terms its
backward needs), `ppo_loss_backward` gives dL/dlogprobs and dL/dvalues, `ppo_stats` gives TRL's stats.
`logprobs_from_logits_backward` carries dL/dlogprobs to the logits; the value head's backward takes dL/dvalues.
Inputs are checked where they enter ppo_np (ppo_np.checks: PPOConfig and Trainer.step); past them the arrays are
ppo_np's own, so the functions here check nothing but, in one line, that their per-token arrays share a shape. Called
directly, they take what they are given: docs/ppo.md, section 17.
"""
import dataclasses

import numpy as np

__all__ = [
    "logprobs_from_logits", "compute_rewards", "compute_advantages", "masked_mean", "masked_var", "whiten",
    "clip_by_value", "clipped_surrogate", "clipped_surrogate_backward", "ppo_loss", "PPOTerms", "ppo_loss_backward",
    "logprobs_from_logits_backward",
    "AdaptiveKLController", "FixedKLController", "ppo_stats", "entropy_from_logits",
]


# ----------------------------------------------------------------------------------------------------------
# 1. log-probabilities of the sampled tokens


def log_softmax(logits):
    """log p = logits - logsumexp(logits) over the last axis, shifted by the max so exp never overflows.
    (..., V) -> (..., V), in the logits' dtype."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def logprobs_from_logits(logits, labels):
    """logprobs[b,t] = log softmax(logits[b,t])[labels[b,t]] = logits[b,t,y] - logsumexp(logits[b,t]).

    logits (B,T,V) float, labels (B,T) int -> logprobs (B,T). (Any leading shape works: (..., V), (...).)
    Its backward, `logprobs_from_logits_backward`, is section 8 below: where the loss gradient arrives.
    """
    logp = log_softmax(np.asarray(logits))
    return np.take_along_axis(logp, np.asarray(labels)[..., None], axis=-1)[..., 0]


# ----------------------------------------------------------------------------------------------------------
# 2. per-token rewards


def compute_rewards(scores, logprobs, ref_logprobs, kl_coef, mask=None):
    """The KL penalty on every token, plus the score on each response's last token.

        non_score_rewards[b,t] = -kl_coef * (logprobs[b,t] - ref_logprobs[b,t])    (0 on padding)
        rewards[b,t] = non_score_rewards[b,t] + [t == L_b - 1] * scores[b],   L_b = sum_t mask[b,t]

    TRL 0.1 did `reward[-1] += score` on each unpadded row; with right padding its last token is at L_b - 1.
    scores (B,), logprobs (B,T), ref_logprobs (B,T), mask (B,T) or None -> (rewards, non_score_rewards), (B,T).
    """
    assert np.shape(logprobs) == np.shape(ref_logprobs) == np.shape(scores) + np.shape(logprobs)[1:], "(B,T) and (B,)"
    m = _bool_mask(mask, np.shape(logprobs))
    non_score_rewards = -kl_coef * np.where(m, np.subtract(logprobs, ref_logprobs), 0.0)
    rewards = non_score_rewards.copy()
    last = m.sum(axis=1) - 1
    rewards[np.arange(len(last)), last] += scores
    return rewards, non_score_rewards


def _bool_mask(mask, shape):
    return np.ones(shape, dtype=bool) if mask is None else np.asarray(mask).astype(bool)


# ----------------------------------------------------------------------------------------------------------
# 3. generalised advantage estimation


def compute_advantages(values, rewards, gamma, lam, mask=None):
    """GAE over each response, then the value targets R = A + V.

        delta_t = r_t + gamma V_{t+1} - V_t,   with V_{t+1} = 0 after the last valid token
        A_t     = delta_t + gamma lam A_{t+1}, with A = 0 on padding
        R_t     = A_t + V_t

    The advantages are NOT whitened here; the trainer whitens them over the batch (section 4).
    values (B,T) (the rollout's), rewards (B,T), mask (B,T) or None -> (advantages, returns), (B,T), 0 on padding.
    """
    assert np.ndim(values) == 2 and np.shape(values) == np.shape(rewards), "values and rewards: (B,T) each"
    m = _bool_mask(mask, np.shape(values))
    # zero the padding first, so that whatever it holds (even nan) cannot leak into the recursion
    values = np.where(m, values, 0.0)
    rewards = np.where(m, rewards, 0.0)
    B, T = values.shape
    advantages = np.zeros_like(values)
    lastgaelam = np.zeros(B, dtype=values.dtype)                      # A_{t+1}
    for t in reversed(range(T)):
        nextvalues = values[:, t + 1] if t + 1 < T else 0.0            # V_{t+1}: 0 past the last column and,
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]      # through the zeroed padding, past L_b - 1
        lastgaelam = (delta + gamma * lam * lastgaelam) * m[:, t]      # the mask restarts A at each row's end
        advantages[:, t] = lastgaelam
    returns = advantages + values
    return advantages, returns


# ----------------------------------------------------------------------------------------------------------
# 4. masked statistics and whitening


def _mean(x, m):
    return float(np.where(m, x, 0.0).sum() / np.count_nonzero(m))


def _var(x, m, ddof=1):
    """sum over valid entries of (x - mean)^2 / (N - ddof): unbiased by default; nan for N = 1, as torch.var."""
    n = np.count_nonzero(m)
    if n - ddof < 1:
        return float("nan")
    return float((np.where(m, np.subtract(x, _mean(x, m)), 0.0) ** 2).sum() / (n - ddof))


def masked_mean(x, mask=None):
    """mean = sum(mask * x) / sum(mask).  x any shape, mask same shape or None -> float.

    Padding entries never enter the sum, even if they hold nan or inf.
    """
    return _mean(x, _bool_mask(mask, np.shape(x)))


def masked_var(x, mask=None, unbiased=True):
    """var = sum(mask * (x - mean)^2) / (N - 1)   (N instead of N - 1 if not unbiased), N = sum(mask).

    Unbiased by default, as torch.var in TRL's `whiten`. x any shape, mask same shape or None -> float.
    """
    return _var(x, _bool_mask(mask, np.shape(x)), ddof=1 if unbiased else 0)


def whiten(x, mask=None, shift_mean=True):
    """whitened = (x - mean) / sqrt(var + 1e-8), mean and UNBIASED var over the valid entries (TRL 0.1).

    shift_mean=False adds the mean back: (x - mean) / sqrt(var + 1e-8) + mean (TRL's option, which rescales
    but keeps the centre). x any shape, mask same shape or None -> same shape; 0 on padding.
    Needs at least 2 valid entries (the unbiased variance of one number is undefined).
    """
    x = np.asarray(x) if np.issubdtype(np.asarray(x).dtype, np.floating) else np.asarray(x, dtype=np.float64)
    m = _bool_mask(mask, x.shape)
    mean, var = _mean(x, m), _var(x, m)
    whitened = (x - mean) / np.sqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return np.where(m, whitened, 0.0).astype(x.dtype, copy=False)


# ----------------------------------------------------------------------------------------------------------
# 5-6. the clipped PPO loss (forward)


def clip_by_value(x, lo, hi):
    """clip = max(min(x, hi), lo), elementwise; lo and hi scalars or arrays broadcasting with x.

    TRL's min-then-max rather than np.clip: the two differ only in the gradient at a bound (section 7).
    """
    return np.maximum(np.minimum(x, hi), lo)


def clipped_surrogate(ratio, advantages, cliprange, cliprange_high=None):
    """The two branches of PPO's clipped policy loss, per token; the loss of a token is their max.

        pg_losses  = -A rho,     pg_losses2 = -A clip(rho, 1 - e, 1 + e_high)   ratio, advantages (B,T) -> (B,T) each

    e = cliprange; e_high = cliprange_high, or e if None (PPO's symmetric clip). An e_high above e is DAPO's
    clip-higher: a token with A > 0 keeps pulling until rho = 1 + e_high, while A < 0 still stops at 1 - e.
    PPO, GRPO and the clipped RLOO share it; each averages max(pg_losses, pg_losses2) over its own tokens.
    """
    high = cliprange if cliprange_high is None else cliprange_high
    return -advantages * ratio, -advantages * np.clip(ratio, 1.0 - cliprange, 1.0 + high)


def clipped_surrogate_backward(ratio, advantages, pg_losses, pg_losses2):
    """d max(pg_losses, pg_losses2) / d logpi per token: 0 where the clipped branch wins (a constant), else -A rho
    (d rho / d logpi = rho). (B,T) each -> (B,T); section 7 shows it equals torch autograd of TRL's code."""
    return np.where(pg_losses2 > pg_losses, 0.0, -advantages * ratio)


@dataclasses.dataclass
class PPOTerms:
    """What one `ppo_loss` call computed, per token (B,T) and 0 on padding: what the backward and the stats read."""
    mask: np.ndarray          # 0/1 in the inputs' dtype
    n: int                    # N, valid tokens
    logratio: np.ndarray      # log rho = logprobs - old_logprobs
    ratio: np.ndarray         # rho
    advantages: np.ndarray    # Ahat (whitened)
    pg_losses: np.ndarray     # -Ahat rho
    pg_losses2: np.ndarray    # -Ahat clip(rho, 1 - e, 1 + e)
    values: np.ndarray        # V, the value head now (TRL's vpred)
    old_values: np.ndarray    # V_old, the rollout's (TRL's values)
    returns: np.ndarray       # R
    lo: np.ndarray            # lo = V_old - e_v
    hi: np.ndarray            # hi = V_old + e_v
    vpredclipped: np.ndarray  # V^c = clip_by_value(V, lo, hi)
    vf_losses1: np.ndarray    # (V - R)^2
    vf_losses2: np.ndarray    # (V^c - R)^2
    pg_loss: float
    vf_loss: float
    vf_coef: float


def ppo_loss(logprobs, old_logprobs, values, old_values, advantages, returns, *, cliprange, cliprange_value,
             vf_coef, mask=None):
    """The clipped PPO loss of TRL 0.1 -> (loss, PPOTerms).

        rho   = exp(logprobs - old_logprobs)
        pg    = mean( max(-Ahat rho, -Ahat clip(rho, 1 - e, 1 + e)) )                   e   = cliprange
        V^c   = clip_by_value(V, lo, hi),   lo = V_old - e_v,  hi = V_old + e_v         e_v = cliprange_value
        vf    = 0.5 mean( max((V - R)^2, (V^c - R)^2) )
        loss  = pg + c_v vf                                                             c_v = vf_coef

    Means over the N valid tokens. `values` V are the value head's predictions now (TRL's `vpred`),
    `old_values` V_old the rollout's (TRL's `values`). `advantages` Ahat are taken as given (the trainer whitens
    them); `returns` R = A + V_old from `compute_advantages`, A before whitening. All per-token inputs (B,T);
    mask (B,T) or None.
    """
    assert len({np.shape(a) for a in (logprobs, old_logprobs, values, old_values, advantages, returns)}) == 1, "(B,T)"
    m = _bool_mask(mask, np.shape(logprobs))
    # padding may hold anything (even nan): replace it by 0 before any arithmetic, so that every padded
    # loss term, gradient and stat below is exactly 0
    logprobs, old_logprobs, values, old_values, advantages, returns = (
        np.where(m, a, 0.0).astype(np.result_type(a, np.float32), copy=False)
        for a in (logprobs, old_logprobs, values, old_values, advantages, returns))
    mask, n = m.astype(logprobs.dtype), int(np.count_nonzero(m))

    # policy term
    logratio = logprobs - old_logprobs
    ratio = np.exp(logratio)
    pg_losses, pg_losses2 = clipped_surrogate(ratio, advantages, cliprange)
    pg_loss = float((np.maximum(pg_losses, pg_losses2) * mask).sum() / n)

    # value term
    lo, hi = old_values - cliprange_value, old_values + cliprange_value
    vpredclipped = clip_by_value(values, lo, hi)
    vf_losses1 = (values - returns) ** 2
    vf_losses2 = (vpredclipped - returns) ** 2
    vf_loss = float(0.5 * (np.maximum(vf_losses1, vf_losses2) * mask).sum() / n)

    terms = PPOTerms(mask, n, logratio, ratio, advantages, pg_losses, pg_losses2, values, old_values, returns,
                     lo, hi, vpredclipped, vf_losses1, vf_losses2, pg_loss, vf_loss, vf_coef)
    return pg_loss + vf_coef * vf_loss, terms


# ----------------------------------------------------------------------------------------------------------
# 7. the per-token gradients (backward)


def ppo_loss_backward(terms):
    """dL/dlogprobs and dL/dvalues per token, from the terms of `ppo_loss` -> {"logprobs": (B,T), "values": (B,T)}.

    Per token, in units of 1/N (docs/ppo.md, section 7), each token takes the derivative of the winning branch:
        N dL/dlogpi_t = 0                      where -Ahat clip(rho) > -Ahat rho: the clipped branch wins, a
                                               constant. These are exactly the policy/clipfrac tokens.
                        -Ahat_t rho_t          everywhere else (d rho / d logpi = rho)
        N dL/dV_t     = 0                      where (V^c - R)^2 > (V - R)^2: the clipped branch wins, a
                                               constant. These are exactly the val/clipfrac tokens.
                        c_v (V_t - R_t) w_t    everywhere else (the 0.5 of the loss cancels the 2 of the square)
    w_t = `_torch_value_tie_share`: 1 except at ties of TRL's value clip, a set of measure zero. Both gradients
    are exactly 0 on padding. They equal torch autograd of TRL's code, up to rounding, at every case and tie the
    tests build; the one exception is a policy tie outside [1 - e, 1 + e] that only rounding can create, where
    torch gives half (docs/ppo.md, section 7).
    """
    t = terms
    dlogprobs = clipped_surrogate_backward(t.ratio, t.advantages, t.pg_losses, t.pg_losses2) * t.mask / t.n
    dvalues = np.where(t.vf_losses2 > t.vf_losses1, 0.0, t.values - t.returns) * _torch_value_tie_share(t)
    dvalues = t.vf_coef * (dvalues * t.mask / t.n)
    return {"logprobs": dlogprobs, "values": dvalues}


def _torch_value_tie_share(terms):
    """w_t, the share of the plain value gradient c_v (V_t - R_t) that torch autograd of TRL's code gives:
    0.75 where V = lo or V = hi, 0.5 at a tie outside [lo, hi], 1 everywhere else.   terms -> (B,T).

    It exists only to match torch exactly on that set of measure zero (docs/ppo.md, section 7, has the table).
    Torch's `max` and `min` split the gradient half and half between tied arguments. Inside the clip range the
    two branches of the value max tie (V^c = V): half of 2(V - R) plus half of 2(V - R) dV^c/dV with
    dV^c/dV = 1 is the plain rule. At V = lo or V = hi the min or the max inside clip_by_value ties as well,
    so dV^c/dV = 1/2 and the sum is 0.75 of the plain rule. Outside the range a tie of the two branches
    (R halfway between V and V^c) gives the unclipped one half. The policy needs no such factor: its branches
    tie where rho lies in [1 - e, 1 + e], where torch.clamp passes the whole gradient, so the two halves add up
    to the plain rule; only a rounding tie outside that interval differs (docs/ppo.md, section 7).
    """
    t = terms
    on_bound = (t.values == t.lo) | (t.values == t.hi)
    tie_outside = (t.values != t.vpredclipped) & (t.vf_losses1 == t.vf_losses2)
    return np.where(on_bound, 0.75, np.where(tie_outside, 0.5, 1.0)).astype(t.values.dtype, copy=False)


# ----------------------------------------------------------------------------------------------------------
# 8. through the log-softmax into the logits


def logprobs_from_logits_backward(logits, labels, dlogprobs):
    """dlogits = dlogprobs[..., None] * (onehot(labels) - softmax(logits)).

    d logprobs[b,t] / d logits[b,t,v] = [v == y] - p_v, and nothing crosses (b,t) positions.
    logits (B,T,V), labels (B,T) int, dlogprobs (B,T) -> dlogits (B,T,V) in the dtype of logits.
    """
    logits, labels = np.asarray(logits), np.asarray(labels)[..., None]
    dlogprobs = np.asarray(dlogprobs, dtype=logits.dtype)[..., None]
    dlogits = -dlogprobs * np.exp(log_softmax(logits))
    # the onehot term: add dlogprobs at each label's column
    np.put_along_axis(dlogits, labels, np.take_along_axis(dlogits, labels, axis=-1) + dlogprobs, axis=-1)
    return dlogits


# ----------------------------------------------------------------------------------------------------------
# 9. into the GPT's own backward: not here, but in ppo_np/update.py, called by the skeleton (ppo_np/skeleton.py)


# ----------------------------------------------------------------------------------------------------------
# 10. the KL coefficient controllers


class AdaptiveKLController:
    """Adaptive KL coefficient of Ziegler et al. 2019 (arXiv:1909.08593), as in TRL 0.1.

        e     = clip(current_kl / target - 1, -0.2, 0.2)
        value = value * (1 + e * n_steps / horizon)

    The clip bounds how fast the coefficient moves. Over m updates of n samples each (H = horizon) it changes by a
    factor within [(1 - 0.2 n/H)^m, (1 + 0.2 n/H)^m]; one horizon is m = H/n. Since (1 + x/m)^m < e^x for x != 0,
    the largest rise over a horizon stays below e^0.2 (+22%), but the largest fall is more than 1 - e^-0.2 (18%):
    18.14% at n = 100, H = 10000, and 20% at n = H.
    """

    def __init__(self, init_kl_coef, target, horizon):
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl, n_steps):
        """Move `value` to steer `current_kl` towards `target`; n_steps samples were seen since the last update."""
        proportional_error = float(np.clip(current_kl / self.target - 1.0, -0.2, 0.2))
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
        return self.value


class FixedKLController:
    """Constant KL coefficient; `update` does nothing (TRL 0.1's choice when adap_kl_ctrl is False)."""

    def __init__(self, kl_coef):
        self.value = float(kl_coef)

    def update(self, current_kl, n_steps):
        return self.value


# ----------------------------------------------------------------------------------------------------------
# the stats practitioners debug with (docs/ppo.md, section 13)


def ppo_stats(terms):
    """TRL 0.1's per-mini-batch stats of one `ppo_loss` call -> {name: float}.

    policy/clipfrac counts exactly the tokens whose policy gradient the clip sets to 0 (section 7), val/clipfrac
    those whose value gradient it sets to 0. policykl = mean(logprobs - old_logprobs) (new minus old, TRL's
    sign). val/vpred is the mean of the value head now, val/mean and val/var describe the rollout's values
    (TRL's `values`). The variances are unbiased (torch.var), nan when N = 1.
    """
    t = terms
    m = t.mask.astype(bool)
    return {
        "loss/policy": t.pg_loss,
        "loss/value": t.vf_loss,                # without vf_coef, as TRL logs it
        "loss/total": t.pg_loss + t.vf_coef * t.vf_loss,
        "policy/approxkl": 0.5 * _mean(t.logratio ** 2, m),
        "policy/policykl": _mean(t.logratio, m),
        "policy/clipfrac": _mean(t.pg_losses2 > t.pg_losses, m),
        "returns/mean": _mean(t.returns, m),
        "returns/var": _var(t.returns, m),
        "val/vpred": _mean(t.values, m),
        "val/error": _mean(t.vf_losses1, m),
        "val/clipfrac": _mean(t.vf_losses2 > t.vf_losses1, m),
        "val/mean": _mean(t.old_values, m),
        "val/var": _var(t.old_values, m),
    }


def entropy_from_logits(logits):
    """entropy[b,t] = logsumexp(l) - sum_v softmax(l)_v l_v  (TRL's form of -sum_v p_v log p_v).

    Both terms are computed on logits shifted by their max, which cancels, so large logits lose no
    precision; a -inf logit (a masked-out token) contributes 0 instead of nan.
    logits (B,T,V) -> entropy (B,T).
    """
    logits = np.asarray(logits, dtype=np.result_type(logits, np.float32))
    shifted = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(shifted)
    sumexp = probs.sum(axis=-1, keepdims=True)
    probs /= sumexp
    if np.isfinite(shifted).all():
        p_times_l = probs * shifted          # the same sum: where a p is 0, p l adds a zero
    else:
        p_times_l = np.where(probs > 0, probs * np.where(np.isfinite(shifted), shifted, 0.0), 0.0)
    return np.log(sumexp[..., 0]) - p_times_l.sum(axis=-1)
