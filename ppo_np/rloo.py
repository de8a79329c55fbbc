"""RLOO, REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024, "Back to Basics"), as TRL 0.13.0's
RLOOTrainer computes it, with the per-token gradient written out. Read beside docs/methods.md, section 2.

Shape legend:
    B  responses in the batch: B / k prompts with k consecutive responses each (row g*k + j is response j to
       prompt g; TRL 0.13.0 interleaves them instead, row j*(B/k) + g: only the reshape differs)
    T  response tokens (right padded); mask (B,T) 1 on response tokens, every row 1...1 0...0 with at least one 1

Symbols: logpi (logprobs), logpi_old (old_logprobs, the rollout policy's), logpi_ref (ref_logprobs), s (scores),
beta (kl_coef), r (rewards, one per response), A (advantages, one per response), rho (ratio of the response's
probabilities), e (cliprange).

    r_i   = s_i - beta sum_t (logpi_old(y_t) - logpi_ref(y_t))        the KL penalty is k1 summed over the tokens
    A_i   = r_i - 1/(k-1) sum_{j != i} r_j  =  k/(k-1) (r_i - mean_group r)
    rho_i = exp( sum_t logpi(y_t) - logpi_old(y_t) )                    ONE ratio per response, as TRL's RLOO
    L     = 1/B sum_i max(-A_i rho_i, -A_i clip(rho_i, 1 - e, 1 + e))

Why a sequence-level ratio: RLOO treats the whole response as one action with one reward and one advantage, so
the importance weight for reusing a batch is the ratio of the response's probabilities, the product of the token
ratios. At rho = 1 (a fresh batch) the gradient is REINFORCE's, -A_i grad log pi(y_i) / B. The clip then acts on
whole responses: once a response's probability has moved by more than e in the direction its advantage favours,
all of its tokens stop pulling at once.
"""
import dataclasses
from typing import Optional

import numpy as np

from . import checks, core, kl
from .skeleton import Method, Option, Trainer, TrainerConfig, rollout_stats

__all__ = ["rloo_rewards", "rloo_advantages", "rloo_loss", "RLOOTerms", "rloo_loss_backward", "rloo_stats",
           "RLOOConfig", "RLOOTrainer", "RLOO"]


def rloo_rewards(scores, old_logprobs, ref_logprobs, kl_coef, mask=None):
    """r = s - beta KL(y), KL(y) = sum_t m_t k1_t = sum_t m_t (logpi_old(y_t) - logpi_ref(y_t)), one per response.

    scores (B,), old_logprobs (B,T), ref_logprobs (B,T), mask (B,T) or None -> (rewards (B,), non_score_rewards (B,)),
    non_score_rewards = -beta KL(y). TRL 0.13.0: `kl = logprobs - ref_logprobs`,
    `non_score_reward = (-args.kl_coef * kl).sum(1)`, `rlhf_reward = scores + non_score_reward`.
    """
    assert np.shape(old_logprobs) == np.shape(ref_logprobs) == np.shape(scores) + np.shape(old_logprobs)[1:]
    m = np.ones(np.shape(old_logprobs), dtype=bool) if mask is None else np.asarray(mask).astype(bool)
    # padding may hold anything (even nan): both are 0 there, so k1 is 0 there
    per_token_kl = kl.k1(np.where(m, old_logprobs, 0.0), np.where(m, ref_logprobs, 0.0))
    non_score_rewards = -kl_coef * per_token_kl.sum(axis=1)
    return np.asarray(scores, dtype=np.float64) + non_score_rewards, non_score_rewards


def rloo_advantages(rewards, k):
    """A_i = r_i - (sum_group r - r_i) / (k - 1): each reward minus the mean of the OTHER k - 1 in its group.

    rewards (B,), B a multiple of k, k consecutive responses per prompt -> advantages (B,). Equal to
    k/(k-1) (r_i - mean_group r): the group-centred reward, scaled. A group whose rewards are all equal gets A = 0
    (up to rounding, ~1e-16 |r|): it contributes no gradient. k = 1 is refused (no other response to form a
    baseline from; TRL 0.13.0 would divide by k - 1 = 0).
    """
    assert np.ndim(rewards) == 1 and len(rewards) % k == 0, "rewards (B,), B a multiple of k"
    r = np.asarray(rewards, dtype=np.float64).reshape(-1, k)               # (B/k, k): one row per prompt
    baseline = (r.sum(axis=1, keepdims=True) - r) / (k - 1)
    return (r - baseline).reshape(-1)


@dataclasses.dataclass
class RLOOTerms:
    """What one `rloo_loss` call computed: per response (B,) unless marked, what the backward and the stats read."""
    mask: np.ndarray          # (B,T) 0/1 floats
    logratio: np.ndarray      # log rho = sum_t m (logpi - logpi_old)
    ratio: np.ndarray         # rho
    advantages: np.ndarray    # A
    pg_losses: np.ndarray     # -A rho
    pg_losses2: np.ndarray    # -A clip(rho, 1 - e, 1 + e)
    loss: float


def rloo_loss(logprobs, old_logprobs, advantages, mask=None, cliprange=None):
    """L = 1/B sum_i max(-A_i rho_i, -A_i clip(rho_i, 1 - e, 1 + e)), rho_i = exp(sum_t m (logpi - logpi_old)).

    logprobs, old_logprobs (B,T), advantages (B,), mask (B,T) or None; cliprange e, or None for no clip
    (L = -1/B sum_i A_i rho_i) -> (loss, RLOOTerms). TRL 0.13.0 sums the token logprobs first
    (`new_logprobs.sum(1)`, `mb_logprobs.sum(1)`) and clips `ratio = torch.exp(logprobs_diff)`: sequence level.
    """
    assert np.shape(logprobs) == np.shape(old_logprobs) == np.shape(advantages) + np.shape(logprobs)[1:]
    m = np.ones(np.shape(logprobs), dtype=bool) if mask is None else np.asarray(mask).astype(bool)
    # padding may hold anything (even nan): it is replaced by 0 before any sum
    logratio = np.where(m, np.subtract(logprobs, old_logprobs), 0.0).sum(axis=1)
    ratio = np.exp(logratio)
    advantages = np.asarray(advantages, dtype=np.float64)
    # no clip is an infinite clip range: clip(rho, -inf, inf) = rho, so the two branches always tie
    pg_losses, pg_losses2 = core.clipped_surrogate(ratio, advantages, np.inf if cliprange is None else cliprange)
    loss = float(np.maximum(pg_losses, pg_losses2).mean())
    return loss, RLOOTerms(m.astype(np.float64), logratio, ratio, advantages, pg_losses, pg_losses2, loss)


def rloo_loss_backward(terms):
    """dL/dlogprobs (B,T): every valid token of response i gets the same dL/dlog rho_i (d log rho_i / dlogpi_t = 1),

        B dL/dlogpi_t = 0 where the clipped branch wins (a constant), else -A_i rho_i
    (core.clipped_surrogate_backward), and 0 on padding.
    """
    t = terms
    dlogratio = core.clipped_surrogate_backward(t.ratio, t.advantages, t.pg_losses, t.pg_losses2) / len(t.ratio)
    return dlogratio[:, None] * t.mask


def rloo_stats(terms):
    """Per-mini-batch stats -> {name: float}. approxkl = 1/2 mean (log rho)^2 and clipfrac = mean(-A clip(rho) >
    -A rho) over responses, as TRL 0.13.0 computes them from its sequence-level `logprobs_diff` and losses."""
    t = terms
    return {
        "loss/policy": t.loss,
        "policy/approxkl": float(0.5 * np.mean(t.logratio ** 2)),
        "policy/clipfrac": float(np.mean(t.pg_losses2 > t.pg_losses)),
        "policy/ratio": float(np.mean(t.ratio)),
    }


# ----------------------------------------------------------------------------------------------------------
# the trainer: RLOO's parts for the skeleton (ppo_np/skeleton.py)


@dataclasses.dataclass
class RLOOConfig(TrainerConfig):
    """TrainerConfig's settings (batch_size: responses per step, batch_size / rloo_k prompts) and RLOO's own."""
    ppo_epochs: int = 4                 # passes over the batch per step (TRL 0.13.0 num_ppo_epochs)
    rloo_k: int = 2                     # responses per prompt, k (TRL 0.13.0 default)
    kl_coef: float = 0.05               # beta of the sequence KL penalty in the reward (TRL 0.13.0 default)
    cliprange: Optional[float] = 0.2    # e of the clip on the sequence ratio (TRL 0.13.0); None = no clip

    def __post_init__(self):
        checks.method_config("RLOOConfig", self, "ppo_epochs", coefficients=("kl_coef",))
        checks.whole_groups("RLOOConfig", self, "rloo_k")
        checks.number("RLOOConfig.cliprange", self.cliprange, none_means="no clipping")


def rloo_prepare(trainer, rollout):
    """r = s - beta KL(y) and the leave-one-out advantages, one per response -> ((old_logprobs, advantages), the
    rollout's stats)."""
    cfg = trainer.config
    rewards, non_score_rewards = rloo_rewards(rollout.scores, rollout.logprobs, rollout.ref_logprobs, cfg.kl_coef,
                                              rollout.mask)
    advantages = rloo_advantages(rewards, cfg.rloo_k)
    stats = {**rollout_stats(rollout.logprobs, rollout.ref_logprobs, rollout.mask), "objective/kl_coef": cfg.kl_coef,
             "rloo/mean_scores": float(rollout.scores.mean()),
             "rloo/mean_non_score_reward": float(non_score_rewards.mean()),
             "rloo/mean_rlhf_reward": float(rewards.mean())}
    return (rollout.logprobs, advantages), stats


def rloo_minibatch_loss(cfg, batch, logprobs, values, old_logprobs, advantages):
    """rloo_loss on one mini-batch of responses (no value head: values is None)."""
    return rloo_loss(logprobs, old_logprobs, advantages, batch.mask, cfg.cliprange)


def rloo_check(cfg, queries, responses):
    checks.groups(queries, cfg.rloo_k)


class RLOOTrainer(Trainer):
    """One RLOO step on a batch of rloo_k consecutive responses per prompt. No value head: the baseline of each
    response is the mean reward of the other responses to its prompt.

        1. forward pass, no graph, in chunks of forward_batch_size: old_logprobs, ref_logprobs (B, R)
        2. rewards r = score - beta KL(y) and leave-one-out advantages, one per response (rloo_prepare)
        3. ppo_epochs passes over shuffled mini-batches: forward with graph, rloo_loss and its per-token gradient,
           carried to the logits and through the GPT (ppo_np.update), AdamW
    """

    def __init__(self, model, ref_model, config=None, pad_token_id=0):
        super().__init__(RLOO, model, ref_model, config, pad_token_id)


def rloo_credit(cfg, scores, logprobs, ref_logprobs, values, mask):
    """tokens.html's credit: each response's leave-one-out advantage on every one of its tokens, (N, R)."""
    rewards, _ = rloo_rewards(scores, logprobs, ref_logprobs, cfg.kl_coef, mask)
    return rloo_advantages(rewards, cfg.rloo_k)[:, None] * mask


# The application's defaults, as every method's: chosen on validation prompts with the main job's shared settings (90
# steps of 64 responses, 2 epochs, lr 2e-4; seed 0's run), the value whose answers the lexicon judge found positive
# most often among those that kept the KL within 12 nats and did not collapse (docs/experiments.md, "The methods
# compared").
BASELINE = "the baseline is the other responses to a prompt"

RLOO = Method(
    name="rloo", label="RLOO", trainer=RLOOTrainer, config=RLOOConfig, epochs="ppo_epochs",
    prepare=rloo_prepare, loss=rloo_minibatch_loss, loss_backward=rloo_loss_backward, stats=rloo_stats,
    check=rloo_check, group="rloo_k", clip="cliprange",
    options=(
        Option(flag="--rloo-k", field="rloo_k", default=4, at_least=2, why=BASELINE,
               help="RLOO: responses per prompt"),
        # 0.2 put one word in 41% of the answers, 0.1 ran to 24 nats (measured)
        Option(flag="--rloo-kl-coef", field="kl_coef", default=0.25, at_least=0,
               help="RLOO: beta of the sequence KL in the reward"),
    ),
    curves=((("objective/kl_coef",), "kl_coef"), (("rloo/policy/entropy",), "policy entropy (nats / token)"),
            (("rloo/loss/policy",), "policy loss"), (("rloo/policy/clipfrac",), "policy clipfrac")),
    credit=rloo_credit,
    credit_text="the response's leave-one-out advantage, on every token: its reward (score &minus; &beta;&nbsp;="
                "&nbsp;{kl_coef:.3f} times its KL) minus the mean reward of {group_others} more responses to its "
                "prompt, sampled with it",
)
