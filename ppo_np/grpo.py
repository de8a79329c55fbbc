"""GRPO, group relative policy optimisation (Shao et al. 2024, DeepSeekMath), as TRL 0.19.1's GRPOTrainer computes
it, with the per-token gradient written out. Read beside docs/methods.md, section 3.

Shape legend:
    B  responses in the batch: B / G prompts with G consecutive responses each (row g*G + j is response j to
       prompt g, as TRL's `repeat_interleave`)
    T  response tokens (right padded); mask (B,T) 1 on response tokens, every row 1...1 0...0 with at least one 1
    L_b = sum_t mask[b,t], N = sum(mask)

Symbols: logpi, logpi_old, logpi_ref (logprobs, old_logprobs, ref_logprobs), s (scores), A (advantages, one per
response, the same for each of its tokens), rho (ratio, per token), e (epsilon), beta, k3 (ppo_np.kl.k3).

    A_i      = (s_i - mean_group s) / (std_group s + 1e-4)      std unbiased (torch.std); scale_rewards=False: no /
    l_{i,t}  = max(-A_i rho_{i,t}, -A_i clip(rho_{i,t}, 1 - e, 1 + e)) + beta k3_{i,t},  rho = exp(logpi - logpi_old)
    L        = sum_{i,t} w_{i,t} l_{i,t}   with  w_{i,t} = m_{i,t} / (B L_i)     loss_type "grpo"
                                                           m_{i,t} / N           loss_type "bnpo"
                                                           m_{i,t} / (B T_max)   loss_type "dr_grpo"
    T_max = max_completion_length, the rollout's cap on response length (a constant, not the batch's longest).

The KL is inside the loss (k3, with its own gradient 1 - pi_ref/pi, in expectation the gradient of the reverse
KL(pi_ref || pi): ppo_np.kl), not in the reward as in PPO and RLOO.

The loss is 0 at the first step, its gradient is not: with pi = pi_old = pi_ref every rho is 1 and every k3 is 0,
so "grpo" gives L = -1/B sum_i A_i = 0 (each group's advantages sum to 0), while dL/dlogpi_t = -A_i / (B L_i).
A logged loss of 0 says nothing about whether the policy learns.
What each Dr. GRPO option removes (Liu et al. 2025, "Understanding R1-Zero-Like Training"):
- "grpo" divides each response's token sum by its own length L_i, so a token of a short response weighs more
  than a token of a long one: with A > 0 short responses are pushed up harder, with A < 0 long responses are
  pushed down more gently. That is a length bias; "dr_grpo" divides by the constant B T_max instead.
- scale_rewards=True divides by the group's std, so a prompt whose responses score nearly alike (too easy or too
  hard) gets advantages as large as one with a real spread: a question-level difficulty bias;
  scale_rewards=False keeps A_i = s_i - mean_group s.
"""
import dataclasses
from typing import Optional

import numpy as np

from . import checks, core, kl
from .skeleton import Method, Trainer, rollout_stats

__all__ = ["grpo_advantages", "group_reward_std", "grpo_loss", "GRPOTerms", "grpo_loss_backward", "grpo_stats",
           "GRPOConfig", "GRPOTrainer", "GRPO"]

STD_EPS = 1e-4      # TRL's `std_grouped_rewards + 1e-4`


def group_reward_std(scores, group_size):
    """std_group s: the unbiased standard deviation (torch.std) of each group's scores. (B,) -> (B / G,)."""
    checks.group_scores(scores, group_size)
    return np.asarray(scores, dtype=np.float64).reshape(-1, group_size).std(axis=1, ddof=1)


def grpo_advantages(scores, group_size, scale_rewards=True):
    """A_i = (s_i - mean_group s) / (std_group s + 1e-4), or s_i - mean_group s if not scale_rewards.

    scores (B,), B a multiple of G = group_size, G consecutive responses per prompt -> advantages (B,).
    A group whose scores are all equal gets A = 0 up to rounding: s - mean is ~1e-16 |s| (the mean of equal floats
    is not always exact), and the 1e-4 keeps that residue near 1e-12 where dividing by the std alone (itself
    ~1e-16) would turn it into a number of order 1. G = 1 is refused: the unbiased std of one number is undefined
    (TRL 0.19.1's GRPOConfig refuses num_generations < 2 too).
    """
    checks.group_scores(scores, group_size)
    s = np.asarray(scores, dtype=np.float64).reshape(-1, group_size)      # (B/G, G): one row per prompt
    advantages = s - s.mean(axis=1, keepdims=True)
    if scale_rewards:
        advantages = advantages / (s.std(axis=1, ddof=1, keepdims=True) + STD_EPS)
    return advantages.reshape(-1)


@dataclasses.dataclass
class GRPOTerms:
    """What one `grpo_loss` call computed, per token (B,T) and 0 on padding: what the backward and the stats read."""
    mask: np.ndarray          # 0/1 floats
    weights: np.ndarray       # w, the loss_type's normalisation
    logprobs: np.ndarray      # logpi (0 on padding)
    ref_logprobs: np.ndarray  # logpi_ref (0 on padding)
    logratio: np.ndarray      # log rho = logpi - logpi_old
    ratio: np.ndarray         # rho
    advantages: np.ndarray    # A broadcast over the tokens
    pg_losses: np.ndarray     # -A rho
    pg_losses2: np.ndarray    # -A clip(rho, 1 - e, 1 + e)
    kl: np.ndarray            # k3
    beta: float
    pg_loss: float            # sum w max(pg_losses, pg_losses2)
    kl_loss: float            # sum w k3 (without beta)


def _loss_weights(mask, loss_type, max_completion_length):
    """w_{i,t} of the module docstring: how loss_type averages the per-token losses.  mask (B,T) -> (B,T)."""
    B = mask.shape[0]
    if loss_type == "grpo":
        return mask / (B * mask.sum(axis=1, keepdims=True))      # mean over each response's tokens, then over responses
    if loss_type == "bnpo":
        return mask / mask.sum()                                 # mean over all the batch's tokens
    return mask / (B * max_completion_length)                    # dr_grpo: one constant for every token


def grpo_loss(logprobs, old_logprobs, ref_logprobs, advantages, mask=None, *, beta, epsilon, loss_type="grpo",
              max_completion_length=None):
    """L = sum_{i,t} w_{i,t} [max(-A_i rho_{i,t}, -A_i clip(rho_{i,t}, 1 - e, 1 + e)) + beta k3_{i,t}] -> (L, terms).

    logprobs, old_logprobs, ref_logprobs (B,T), advantages (B,), mask (B,T) or None; epsilon e, beta, loss_type and
    max_completion_length (T_max, needed by "dr_grpo") as in the module docstring. TRL 0.19.1 writes
    `-torch.min(coef_1 * A, coef_2 * A)`, which is our max of the negated branches (core.clipped_surrogate).
    """
    checks.grpo_loss_inputs(logprobs, old_logprobs, ref_logprobs, advantages, mask, beta, epsilon, loss_type,
                            max_completion_length)
    m = np.ones(np.shape(logprobs), dtype=bool) if mask is None else np.asarray(mask).astype(bool)
    # padding may hold anything (even nan): replace it by 0 first, so every padded term and gradient is exactly 0
    logprobs, old_logprobs, ref_logprobs = (np.where(m, a, 0.0).astype(np.float64)
                                            for a in (logprobs, old_logprobs, ref_logprobs))
    mask = m.astype(np.float64)
    weights = _loss_weights(mask, loss_type, max_completion_length)

    logratio = logprobs - old_logprobs
    ratio = np.exp(logratio)
    advantages = np.asarray(advantages, dtype=np.float64)[:, None] * mask
    pg_losses, pg_losses2 = core.clipped_surrogate(ratio, advantages, epsilon)
    per_token_kl = kl.k3(logprobs, ref_logprobs)
    pg_loss = float((weights * np.maximum(pg_losses, pg_losses2)).sum())
    kl_loss = float((weights * per_token_kl).sum())
    terms = GRPOTerms(mask, weights, logprobs, ref_logprobs, logratio, ratio, advantages, pg_losses, pg_losses2,
                      per_token_kl, beta, pg_loss, kl_loss)
    return pg_loss + beta * kl_loss, terms


def grpo_loss_backward(terms):
    """dL/dlogprobs (B,T) = w * (surrogate gradient + beta k3 gradient), per token:

        dL/dlogpi_t = w_t * ( [0 where the clipped branch wins, else -A rho_t] + beta (1 - pi_ref/pi)_t )
    The first term is core.clipped_surrogate_backward, the second ppo_np.kl.k3_backward; 0 on padding.
    """
    t = terms
    dsurrogate = core.clipped_surrogate_backward(t.ratio, t.advantages, t.pg_losses, t.pg_losses2)
    return t.weights * dsurrogate + kl.k3_backward(t.logprobs, t.ref_logprobs, t.beta * t.weights)


def grpo_stats(terms):
    """Per-mini-batch stats -> {name: float}. policy/kl_k3 is TRL 0.19.1's `kl` (k3 averaged over the valid tokens,
    whatever the loss_type), policy/clipfrac its `clip_ratio/region_mean` (tokens with rho < 1 - e and A < 0, or
    rho > 1 + e and A > 0: exactly where -A clip(rho) > -A rho, the tokens whose surrogate gradient is 0)."""
    t = terms
    m = t.mask.astype(bool)
    return {
        "loss/total": t.pg_loss + t.beta * t.kl_loss,
        "loss/policy": t.pg_loss,
        "loss/kl": t.kl_loss,
        "policy/kl_k3": float(t.kl[m].mean()),
        "policy/approxkl": float(0.5 * np.mean(t.logratio[m] ** 2)),
        "policy/clipfrac": float(np.mean((t.pg_losses2 > t.pg_losses)[m])),
    }


# ----------------------------------------------------------------------------------------------------------
# the trainer: GRPO's parts for the skeleton (ppo_np/skeleton.py)


@dataclasses.dataclass
class GRPOConfig:
    lr: float = 1.41e-5                 # Adam learning rate (PPOConfig's, so that methods differ by their equations)
    batch_size: int = 256               # responses per step: batch_size / group_size prompts
    forward_batch_size: int = 16        # rows per no-grad forward pass: bounds memory
    mini_batch_size: int = 16           # rows per gradient step; the loss_type normalises over a mini-batch
    num_iterations: int = 1             # mu: passes over the batch per step (TRL 0.19.1 default)
    group_size: int = 8                 # G, responses per prompt (TRL's num_generations, default 8)
    beta: float = 0.04                  # weight of the k3 KL in the loss (TRL 0.14.0 default; 0.19.1's is 0.0)
    epsilon: float = 0.2                # e of the clipped ratio (TRL 0.19.1 default)
    loss_type: str = "grpo"             # "grpo" (TRL 0.14.0's only one), "bnpo" (TRL 0.19.1 default) or "dr_grpo"
    scale_rewards: bool = True          # divide advantages by the group std (+1e-4); False: Dr. GRPO
    max_completion_length: Optional[int] = None   # T_max of "dr_grpo": the rollout's max_new_tokens
    max_grad_norm: Optional[float] = None   # global gradient-norm clip; None = off
    weight_decay: float = 0.0           # AdamW decoupled decay; 0 = Adam
    seed: int = 0                       # seeds the mini-batch shuffling

    def __post_init__(self):
        checks.grpo_config(self)


def grpo_prepare(trainer, rollout):
    """The group-relative advantages, from the scores alone (the KL is in the loss, not in the reward) ->
    ((old_logprobs, ref_logprobs, advantages), the rollout's stats)."""
    cfg, scores = trainer.config, rollout.scores
    advantages = grpo_advantages(scores, cfg.group_size, cfg.scale_rewards)
    std = group_reward_std(scores, cfg.group_size)
    stats = {**rollout_stats(rollout.logprobs, rollout.ref_logprobs, rollout.mask), "objective/beta": cfg.beta,
             "grpo/mean_scores": float(scores.mean()),
             "grpo/reward_std": float(std.mean()),                                    # TRL's reward_std
             "grpo/frac_reward_zero_std": float(np.mean(np.isclose(std, 0.0)))}       # TRL 0.19.1's, isclose
    return (rollout.logprobs, rollout.ref_logprobs, advantages), stats


def grpo_minibatch_loss(cfg, batch, logprobs, values, old_logprobs, ref_logprobs, advantages):
    """grpo_loss on one mini-batch of responses (no value head: values is None)."""
    return grpo_loss(logprobs, old_logprobs, ref_logprobs, advantages, batch.mask, beta=cfg.beta, epsilon=cfg.epsilon,
                     loss_type=cfg.loss_type, max_completion_length=cfg.max_completion_length)


def grpo_check(cfg, queries, responses):
    checks.groups(queries, cfg.group_size)
    checks.response_lengths(responses, cfg.max_completion_length)


class GRPOTrainer(Trainer):
    """One GRPO step on a batch of group_size consecutive responses per prompt. No value head: the baseline of a
    response is its group's mean score.

        1. forward pass, no graph, in chunks of forward_batch_size: old_logprobs, ref_logprobs (B, R)
        2. group-relative advantages from the scores alone (grpo_prepare)
        3. num_iterations passes over shuffled mini-batches: forward with graph, grpo_loss and its per-token
           gradient, carried to the logits and through the GPT (ppo_np.update), AdamW
    """

    def __init__(self, model, ref_model, config=None, pad_token_id=0):
        super().__init__(GRPO, model, ref_model, config, pad_token_id)


GRPO = Method("grpo", GRPOTrainer, GRPOConfig, "num_iterations", grpo_prepare, grpo_minibatch_loss,
              grpo_loss_backward, grpo_stats, check=grpo_check, prepare_timing="compute_advantages")
