"""The PPO equations of TRL 0.1 (`trl/core.py`, `trl/ppo.py`) in NumPy, with hand-derived per-token gradients.

Shape legend:
    B  responses in the batch
    T  response tokens (right padded to the longest response)
    V  vocabulary size
    mask (B,T): 1 on response tokens, 0 on padding; every row is 1...1 0...0 with at least one 1.
    N = sum(mask), the number of valid tokens; every mean below is over valid tokens only.

TRL 0.1 trained on one unpadded response at a time, so its plain `torch.mean` over a (1, T) tensor is our
masked mean over the valid tokens: for a batch of one unpadded row the two agree exactly. Everything else
(unbiased variance in `whiten`, 1e-8 inside the square root, the 0.5 on the value loss, the sign of
`policy/policykl`, `clip_by_value` as max(min(x, hi), lo)) follows TRL 0.1 to the letter.

The model's backward needs d loss / d logits. `ppo_loss` returns d loss / d logprobs and d loss / d values per
token; `logprobs_from_logits_backward` carries the first to the logits, and the value head's backward takes
the second.
"""
import numpy as np

__all__ = [
    "logprobs_from_logits",
    "logprobs_from_logits_backward",
    "entropy_from_logits",
    "masked_mean",
    "masked_var",
    "whiten",
    "clip_by_value",
    "compute_rewards",
    "compute_advantages",
    "ppo_loss",
    "AdaptiveKLController",
    "FixedKLController",
]


# ----------------------------------------------------------------------------------------------------------
# input checks


def _as_float(x, name):
    """x as a floating ndarray; integer input becomes float64, floating input keeps its precision."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        if not (np.issubdtype(x.dtype, np.integer) or x.dtype == bool):
            raise ValueError(f"{name} must be numeric, got dtype {x.dtype}")
        x = x.astype(np.float64)
    return x


def _check_same_shape(**arrays):
    """Raise ValueError naming every array if their shapes differ."""
    shapes = {name: np.shape(a) for name, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"shape mismatch: {listed}; these arrays must have the same shape")


def _check_2d(name, x):
    if np.ndim(x) != 2:
        raise ValueError(f"{name} must be (B, T) per-token values, got shape {np.shape(x)}")


def _mask_of(mask, shape, min_valid=1):
    """Boolean mask of `shape` (all True for None); entries must be 0/1; at least `min_valid` valid entries."""
    if mask is None:
        m = np.ones(shape, dtype=bool)
    else:
        mask = np.asarray(mask)
        if mask.shape != tuple(shape):
            raise ValueError(f"mask has shape {mask.shape} but the values have shape {tuple(shape)}")
        if mask.dtype != bool and not np.all((mask == 0) | (mask == 1)):
            raise ValueError("mask must contain only 0 and 1 (or False/True)")
        m = mask.astype(bool)
    n = int(m.sum())
    if n < min_valid:
        raise ValueError(f"mask has {n} valid entries, this needs at least {min_valid}")
    return m


def _token_mask(mask, shape):
    """Boolean (B,T) response mask: right padded, and no empty row (an empty response has no last token)."""
    m = _mask_of(mask, shape)
    empty = np.flatnonzero(~m.any(axis=1))
    if empty.size:
        raise ValueError(f"rows {empty.tolist()} of the mask have no valid token (empty responses); "
                         "drop them from the batch")
    # right padded <=> the mask never goes from 0 back to 1 along t
    bad = np.flatnonzero((m[:, 1:] & ~m[:, :-1]).any(axis=1))
    if bad.size:
        raise ValueError(f"rows {bad.tolist()} of the mask are not right padded: each row must be "
                         "1 on its response tokens, then 0 on the padding after them")
    return m


# ----------------------------------------------------------------------------------------------------------
# log-probabilities and entropy


def _check_logits_labels(logits, labels):
    logits = _as_float(logits, "logits")
    labels = np.asarray(labels)
    if logits.ndim < 2:
        raise ValueError(f"logits must be (B, T, V), got shape {logits.shape}")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels have shape {labels.shape} but logits have shape {logits.shape}; "
                         "labels must be logits.shape[:-1]")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer token ids, got dtype {labels.dtype}")
    V = logits.shape[-1]
    if labels.size and (labels.min() < 0 or labels.max() >= V):
        raise ValueError(f"labels must lie in [0, {V}), got range [{labels.min()}, {labels.max()}]")
    return logits, labels


def _log_softmax(logits):
    """log softmax over the last axis, shifted by the max so exp never overflows."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def logprobs_from_logits(logits, labels):
    """logprobs[b,t] = log softmax(logits[b,t])[labels[b,t]] = logits[b,t,y] - logsumexp(logits[b,t]).

    logits (B,T,V) float, labels (B,T) int -> logprobs (B,T). (Any leading shape works: (..., V), (...).)
    """
    logits, labels = _check_logits_labels(logits, labels)
    logp = _log_softmax(logits)
    return np.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]


def logprobs_from_logits_backward(logits, labels, dlogprobs):
    """dlogits = dlogprobs[..., None] * (onehot(labels) - softmax(logits)).

    d logprobs[b,t] / d logits[b,t,v] = [v == y] - p_v, and nothing crosses (b,t) positions.
    logits (B,T,V), labels (B,T) int, dlogprobs (B,T) -> dlogits (B,T,V) in the dtype of logits.
    """
    logits, labels = _check_logits_labels(logits, labels)
    dlogprobs = np.asarray(dlogprobs, dtype=logits.dtype)
    if dlogprobs.shape != labels.shape:
        raise ValueError(f"dlogprobs has shape {dlogprobs.shape} but labels have shape {labels.shape}")
    probs = np.exp(_log_softmax(logits))
    dlogits = -dlogprobs[..., None] * probs
    # the onehot term: add dlogprobs at each label's column
    at_label = np.take_along_axis(dlogits, labels[..., None], axis=-1)
    np.put_along_axis(dlogits, labels[..., None], at_label + dlogprobs[..., None], axis=-1)
    return dlogits


def entropy_from_logits(logits):
    """entropy[b,t] = logsumexp(l) - sum_v softmax(l)_v l_v  (TRL's form of -sum_v p_v log p_v).

    Both terms are computed on logits shifted by their max, which cancels, so large logits lose no
    precision; a -inf logit (a masked-out token) contributes 0 instead of nan.
    logits (B,T,V) -> entropy (B,T).
    """
    logits = _as_float(logits, "logits")
    shifted = logits - logits.max(axis=-1, keepdims=True)
    sumexp = np.exp(shifted).sum(axis=-1, keepdims=True)
    probs = np.exp(shifted) / sumexp
    p_times_l = np.where(probs > 0, probs * np.where(np.isfinite(shifted), shifted, 0.0), 0.0)
    return np.log(sumexp[..., 0]) - p_times_l.sum(axis=-1)


# ----------------------------------------------------------------------------------------------------------
# masked statistics


def masked_mean(x, mask=None):
    """mean = sum(mask * x) / sum(mask).  x any shape, mask same shape or None -> float.

    Padding entries never enter the sum, even if they hold nan or inf.
    """
    x = _as_float(x, "x")
    m = _mask_of(mask, x.shape, min_valid=1)
    return float(np.where(m, x, 0.0).sum() / m.sum())


def masked_var(x, mask=None, unbiased=True):
    """var = sum(mask * (x - mean)^2) / (N - 1)   (N instead of N - 1 if not unbiased), N = sum(mask).

    Unbiased by default, as torch.var in TRL's `whiten`. x any shape, mask same shape or None -> float.
    """
    x = _as_float(x, "x")
    m = _mask_of(mask, x.shape, min_valid=2 if unbiased else 1)
    n = int(m.sum())
    centered = np.where(m, x - masked_mean(x, m), 0.0)
    return float((centered ** 2).sum() / (n - 1 if unbiased else n))


def whiten(x, mask=None, shift_mean=True):
    """whitened = (x - mean) / sqrt(var + 1e-8), mean and UNBIASED var over the valid entries (TRL 0.1).

    shift_mean=False adds the mean back: (x - mean) / sqrt(var + 1e-8) + mean (TRL's option, which rescales
    but keeps the centre). x any shape, mask same shape or None -> same shape; 0 on padding.
    Needs at least 2 valid entries (the unbiased variance of one number is undefined).
    """
    x = _as_float(x, "x")
    m = _mask_of(mask, x.shape, min_valid=2)
    mean = masked_mean(x, m)
    var = masked_var(x, m, unbiased=True)
    whitened = (x - mean) / np.sqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return np.where(m, whitened, 0.0).astype(x.dtype, copy=False)


def clip_by_value(x, lo, hi):
    """clip = max(min(x, hi), lo), elementwise; lo and hi scalars or arrays broadcasting with x.

    Written as TRL's min-then-max rather than np.clip so the value-loss gradient in `ppo_loss` can follow
    torch's subgradient of exactly this composition (see there).
    """
    return np.maximum(np.minimum(x, hi), lo)


# ----------------------------------------------------------------------------------------------------------
# rewards and advantages


def compute_rewards(scores, logprobs, ref_logprobs, kl_coef, mask=None):
    """Per-token rewards: the KL penalty on every token, plus the score on each response's last token.

        non_score_rewards[b,t] = -kl_coef * (logprobs[b,t] - ref_logprobs[b,t])    (0 on padding)
        rewards[b,t] = non_score_rewards[b,t] + [t == last valid token of row b] * scores[b]

    scores (B,), logprobs (B,T), ref_logprobs (B,T), mask (B,T) or None -> (rewards, non_score_rewards), (B,T).
    """
    logprobs = _as_float(logprobs, "logprobs")
    ref_logprobs = _as_float(ref_logprobs, "ref_logprobs")
    scores = _as_float(scores, "scores")
    _check_2d("logprobs", logprobs)
    _check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs)
    if scores.shape != (logprobs.shape[0],):
        raise ValueError(f"scores has shape {scores.shape} but logprobs has shape {logprobs.shape}; "
                         f"need one score per response: ({logprobs.shape[0]},)")
    if not np.all(np.isfinite(scores)):
        bad = np.flatnonzero(~np.isfinite(scores))
        raise ValueError(f"scores at rows {bad.tolist()} are nan or inf; the reward model must give finite scores")
    m = _token_mask(mask, logprobs.shape)
    kl = np.where(m, logprobs - ref_logprobs, 0.0)
    non_score_rewards = -kl_coef * kl
    rewards = non_score_rewards.copy()
    last = m.sum(axis=1) - 1  # right padding: the last valid token of row b is at t = len_b - 1
    rewards[np.arange(len(last)), last] += scores
    return rewards, non_score_rewards


def compute_advantages(values, rewards, gamma, lam, mask=None):
    """Generalised advantage estimation (GAE) over each response, then returns = advantages + values.

        delta_t = r_t + gamma V_{t+1} - V_t,   with V_{t+1} = 0 after the last valid token
        A_t     = delta_t + gamma lam A_{t+1}, with A = 0 on padding
        R_t     = A_t + V_t   (the value-function target)

    The advantages are NOT whitened here; the trainer whitens them over the batch.
    values (B,T), rewards (B,T), mask (B,T) or None -> (advantages, returns), (B,T), 0 on padding.
    """
    values = _as_float(values, "values")
    rewards = _as_float(rewards, "rewards")
    _check_2d("values", values)
    _check_same_shape(values=values, rewards=rewards)
    m = _token_mask(mask, values.shape)
    B, T = values.shape
    # zero the padding first, so that whatever it holds (even nan) cannot leak into the recursion
    values = np.where(m, values, 0.0)
    rewards = np.where(m, rewards, 0.0)
    advantages = np.zeros_like(values)
    lastgaelam = np.zeros(B, dtype=values.dtype)  # A_{t+1}
    for t in reversed(range(T)):
        # V_{t+1}; 0 at t = T-1 and, through the zeroed padding, after each row's last valid token
        nextvalues = values[:, t + 1] if t + 1 < T else 0.0
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        # A_t = delta_t + gamma lam A_{t+1}; the mask restarts the recursion at each row's last token
        lastgaelam = (delta + gamma * lam * lastgaelam) * m[:, t]
        advantages[:, t] = lastgaelam
    returns = advantages + values
    return advantages, returns


# ----------------------------------------------------------------------------------------------------------
# the PPO loss and its per-token gradients


def _max_weight(a, b):
    """How much of d max(a, b) goes to a: torch.maximum's subgradient (1 if a > b, 1/2 on a tie, 0 else)."""
    return np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))


def ppo_loss(logprobs, old_logprobs, values, old_values, advantages, returns, *,
             cliprange, cliprange_value, vf_coef, mask=None):
    """The clipped PPO loss of TRL 0.1 and its gradient with respect to each token's logprob and value.

        r     = exp(logprobs - old_logprobs)
        pg    = mean( max(-A r, -A clip(r, 1 - e, 1 + e)) )                            e   = cliprange
        vc    = clip_by_value(values, old_values - e_v, old_values + e_v)               e_v = cliprange_value
        vf    = 0.5 mean( max((values - R)^2, (vc - R)^2) )
        loss  = pg + vf_coef * vf

    means over the N valid tokens. `advantages` A are taken as given (the trainer whitens them);
    `returns` R = A_unwhitened + old_values from `compute_advantages`.

    All per-token inputs (B,T); mask (B,T) or None. Returns
        loss  float
        grads {"logprobs": dloss/dlogprobs (B,T), "values": dloss/dvalues (B,T)}, 0 on padding
        stats TRL's names (floats): loss/policy, loss/value, loss/total, policy/approxkl, policy/policykl,
              policy/clipfrac, returns/mean, returns/var, val/vpred, val/error, val/clipfrac, val/mean, val/var

    The gradients equal torch autograd of TRL's code everywhere, including ties of the max (torch gives each
    side half) and the clip boundaries; the cases are spelled out next to the lines below.
    Stats follow TRL 0.1: policykl = mean(logprobs - old_logprobs) (new minus old, TRL's sign);
    val/vpred is the mean of the new `values`, while val/mean and val/var describe `old_values` (TRL's
    `values` are the rollout's); the variances are unbiased (torch.var) and nan when N = 1.
    """
    arrays = dict(logprobs=logprobs, old_logprobs=old_logprobs, values=values, old_values=old_values,
                  advantages=advantages, returns=returns)
    arrays = {name: _as_float(a, name) for name, a in arrays.items()}
    _check_2d("logprobs", arrays["logprobs"])
    _check_same_shape(**arrays)
    if cliprange < 0 or cliprange_value < 0:
        raise ValueError(f"cliprange ({cliprange}) and cliprange_value ({cliprange_value}) must be >= 0")
    m = _token_mask(mask, arrays["logprobs"].shape)
    n = int(m.sum())

    # padding may hold anything (even nan or inf): replace it by harmless numbers before any arithmetic;
    # every padded position is multiplied by the mask below, so its loss and gradient are exactly 0
    logprobs, old_logprobs, values, old_values, advantages, returns = (
        np.where(m, a, 0.0).astype(a.dtype, copy=False) for a in arrays.values())
    mf = m.astype(logprobs.dtype)

    # ---- policy term: pg = (1/N) sum_t m_t max(pg_losses_t, pg_losses2_t)
    logratio = logprobs - old_logprobs
    ratio = np.exp(logratio)                                    # dr/dlogprobs = r
    ratio_clipped = np.clip(ratio, 1.0 - cliprange, 1.0 + cliprange)
    pg_losses = -advantages * ratio                             # d/dr = -A
    pg_losses2 = -advantages * ratio_clipped                    # d/dr = -A * dclip/dr
    pg_loss = float((np.maximum(pg_losses, pg_losses2) * mf).sum() / n)

    # TRL clips the ratio with torch.clamp, whose gradient is 1 on the closed interval [1-e, 1+e], 0 outside.
    dclip_dratio = ((ratio >= 1.0 - cliprange) & (ratio <= 1.0 + cliprange)).astype(ratio.dtype)
    # Share of the max that goes to the unclipped branch (1 if it is larger, 1/2 on a tie, 0 if smaller):
    w_pg = _max_weight(pg_losses, pg_losses2)
    # dmax/dr = w_pg (-A) + (1 - w_pg)(-A) dclip/dr. Case by case:
    #   1-e <= r <= 1+e:  clip(r) = r, so the branches tie: 1/2 (-A) + 1/2 (-A)(1) = -A.
    #                     This includes the first mini-batch of a step, where r == 1 up to rounding.
    #   r > 1+e, A > 0:   -A(1+e) > -A r, the clipped constant wins:        0  (no push beyond 1+e)
    #   r > 1+e, A < 0:   -A r > -A(1+e), the unclipped branch wins:        -A
    #   r < 1-e, A > 0:   -A r > -A(1-e), the unclipped branch wins:        -A
    #   r < 1-e, A < 0:   the clipped constant wins:                        0  (no push below 1-e)
    #   A == 0:           both branches are 0 and so is the gradient.
    dpg_dratio = -advantages * (w_pg + (1.0 - w_pg) * dclip_dratio)
    # chain through r = exp(logprobs - old_logprobs), and the mean: each valid token carries 1/N
    dpg_dlogprobs = dpg_dratio * ratio * mf / n

    # ---- value term: vf = (1/2N) sum_t m_t max(vf_losses1_t, vf_losses2_t)
    lo = old_values - cliprange_value
    hi = old_values + cliprange_value
    vpredclipped = clip_by_value(values, lo, hi)
    vf_losses1 = (values - returns) ** 2                        # d/dv = 2 (v - R)
    vf_losses2 = (vpredclipped - returns) ** 2                  # d/dv = 2 (vc - R) dvc/dv
    vf_loss = float(0.5 * (np.maximum(vf_losses1, vf_losses2) * mf).sum() / n)

    # dvc/dv of max(min(v, hi), lo): each elementwise min/max passes its gradient whole to the winner and
    # halves it on a tie (torch's rule). So 1 strictly inside (lo, hi), 1/2 at v == hi or v == lo,
    # 0 outside (and 1/4 in the degenerate lo == hi == v of cliprange_value 0).
    v_min_hi = np.minimum(values, hi)
    dvc_dv = _max_weight(hi, values) * _max_weight(v_min_hi, lo)   # d min(v,hi)/dv * d max(.,lo)/d.
    # Share of the max that goes to the unclipped branch:
    w_vf = _max_weight(vf_losses1, vf_losses2)
    # dmax/dv = w_vf 2(v - R) + (1 - w_vf) 2(vc - R) dvc/dv. Case by case:
    #   lo < v < hi:      vc = v, a tie: 1/2 2(v-R) + 1/2 2(v-R)(1) = 2(v - R).
    #                     This includes the first mini-batch of a step, where values == old_values.
    #   v == hi or lo:    vc = v, a tie, dvc/dv = 1/2:  1/2 2(v-R) + 1/4 2(v-R) = 1.5 (v - R).
    #   v outside, (v-R)^2 > (vc-R)^2:  v went past the trust region away from R; unclipped wins: 2(v - R)
    #   v outside, (vc-R)^2 > (v-R)^2:  the clipped constant wins: 0 (v may not move further this way)
    #   v outside, a tie (R halfway between v and vc): 1/2 2(v - R) = (v - R).
    dvf_dvalues = w_vf * 2.0 * (values - returns) + (1.0 - w_vf) * 2.0 * (vpredclipped - returns) * dvc_dv
    # the 0.5 in front of the mean, and the mean itself
    dvf_dvalues = 0.5 * dvf_dvalues * mf / n

    loss = pg_loss + vf_coef * vf_loss
    grads = {  # in the inputs' precision, ready for the model's backward
        "logprobs": dpg_dlogprobs.astype(logprobs.dtype, copy=False),      # vf does not depend on logprobs
        "values": (vf_coef * dvf_dvalues).astype(values.dtype, copy=False),  # pg does not depend on values
    }

    def mean(x):
        return masked_mean(x, m)

    def var(x):  # torch.var of a single number is nan, not an error
        return masked_var(x, m, unbiased=True) if n > 1 else float("nan")

    stats = {
        "loss/policy": pg_loss,
        "loss/value": vf_loss,                  # without vf_coef, as TRL logs it
        "loss/total": loss,
        "policy/approxkl": 0.5 * mean(logratio ** 2),
        "policy/policykl": mean(logratio),      # TRL 0.1: mean(logprob - old_logprobs)
        "policy/clipfrac": mean(pg_losses2 > pg_losses),
        "returns/mean": mean(returns),
        "returns/var": var(returns),
        "val/vpred": mean(values),
        "val/error": mean((values - returns) ** 2),
        "val/clipfrac": mean(vf_losses2 > vf_losses1),
        "val/mean": mean(old_values),           # TRL's `values` in its loss are the rollout's values
        "val/var": var(old_values),
    }
    return loss, grads, stats


# ----------------------------------------------------------------------------------------------------------
# KL coefficient controllers


class AdaptiveKLController:
    """Adaptive KL coefficient of Ziegler et al. 2019 (arXiv:1909.08593), as in TRL 0.1.

        e     = clip(current_kl / target - 1, -0.2, 0.2)
        value = value * (1 + e * n_steps / horizon)

    The clip bounds how fast the coefficient moves: by a factor within [e^-0.2, e^0.2] (-18%, +22%) per
    `horizon` samples.
    """

    def __init__(self, init_kl_coef, target, horizon):
        if target <= 0:
            raise ValueError(f"target KL must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl, n_steps):
        """Move `value` to steer `current_kl` towards `target`; n_steps samples were seen since the last update."""
        proportional_error = float(np.clip(current_kl / self.target - 1.0, -0.2, 0.2))
        mult = 1.0 + proportional_error * n_steps / self.horizon
        self.value *= mult
        return self.value


class FixedKLController:
    """Constant KL coefficient; `update` does nothing (TRL 0.1's choice when adap_kl_ctrl is False)."""

    def __init__(self, kl_coef):
        self.value = float(kl_coef)

    def update(self, current_kl, n_steps):
        return self.value
