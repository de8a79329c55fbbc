"""REINFORCE with a batch-mean baseline (Williams 1992), the plain policy gradient that RLOO's baseline improves on,
with the per-token gradient written out. The worked example of docs/methods.md, section 7: a new method is this
module and one entry in ppo_np.METHODS.

Shape legend:
    B  responses in the batch, any number per prompt (no groups)
    b  responses in one mini-batch; T response tokens (right padded); mask m (b,T), every row 1...1 0...0

Symbols: s (scores), logpi, logpi_old, logpi_ref (logprobs, old_logprobs, ref_logprobs), beta (kl_coef), r (rewards)
and A (advantages), one per response; logpi(y_i) = sum_t m_{i,t} logpi(y_{i,t}), the response's log-probability.

    r_i = s_i - beta sum_t m_{i,t} (logpi_old - logpi_ref)(y_{i,t})     RLOO's reward: the KL penalty, k1 summed
    A_i = r_i - 1/B sum_j r_j                                           the batch-mean baseline
    L   = -1/B sum_i A_i logpi(y_i)                                     one AdamW step per batch

    dL/dlogpi(y_{i,t}) = -A_i m_{i,t} / B

On-policy: the batch is sampled from the weights the step starts from, and used for one AdamW step (its mini-batches
only bound a forward pass's memory: their gradients add up first). So there is no importance ratio, no clip and no
value head; the loss's value means nothing, its gradient is Williams' estimator.

The baseline: E[b grad logpi(y_i)] = 0 for any b that does not depend on y_i. The batch mean does, through its own
term r_i / B: E[A_i grad logpi(y_i)] = (1 - 1/B) E[r_i grad logpi(y_i)], the policy gradient scaled by (B - 1)/B.
RLOO improves on it twice: its baseline leaves r_i out (A_i = r_i - mean of the others: no scaling), and takes the
others from the same prompt (k responses per prompt), which removes the prompt's own difficulty from A_i.
A = (B - 1)/B times RLOO's leave-one-out advantage with the whole batch as one group.
"""
import dataclasses

import numpy as np

from . import checks
from .rloo import rloo_rewards
from .skeleton import SHARED, Method, Option, Trainer, TrainerConfig, rollout_stats, whole_batch

__all__ = ["reinforce_loss", "REINFORCETerms", "reinforce_loss_backward", "reinforce_stats", "REINFORCEConfig",
           "REINFORCETrainer", "REINFORCE"]


@dataclasses.dataclass
class REINFORCETerms:
    """What one `reinforce_loss` call computed: what the backward and the stats read."""
    mask: np.ndarray          # (b,T) 0/1 floats
    advantages: np.ndarray    # A (b,)
    losses: np.ndarray        # -A_i logpi(y_i) (b,)
    num_responses: int        # B, the batch's responses: the mean is over them


def reinforce_loss(logprobs, advantages, mask=None, num_responses=None):
    """L = -1/B sum_i A_i logpi(y_i), logpi(y_i) = sum_t m_{i,t} logpi(y_{i,t}) -> (L, REINFORCETerms).

    logprobs (b,T), advantages (b,), mask (b,T) or None; num_responses B, the batch's responses when these b are one
    mini-batch of it (None: b), so that the mini-batches' losses add up to the batch's."""
    assert np.shape(logprobs) == (len(advantages), len(logprobs[0])), "logprobs (b,T), advantages (b,)"
    m = np.ones(np.shape(logprobs), dtype=bool) if mask is None else np.asarray(mask).astype(bool)
    sequence_logprobs = np.where(m, logprobs, 0.0).sum(axis=1)          # padding may hold anything, even nan
    advantages = np.asarray(advantages, dtype=np.float64)
    losses = -advantages * sequence_logprobs
    B = len(advantages) if num_responses is None else num_responses
    return float(losses.sum() / B), REINFORCETerms(m.astype(np.float64), advantages, losses, B)


def reinforce_loss_backward(terms):
    """dL/dlogprobs (b,T) = -A_i m_{i,t} / B: d logpi(y_i) / d logpi(y_{i,t}) = m_{i,t}, every token of a response
    gets the same push, its advantage."""
    t = terms
    return -t.advantages[:, None] * t.mask / t.num_responses


def reinforce_stats(terms):
    """Per-mini-batch stats -> {name: float}: loss/policy, the mean of -A_i logpi(y_i) over the mini-batch (their
    mean over a step's mini-batches is the batch's loss)."""
    return {"loss/policy": float(terms.losses.mean())}


# ----------------------------------------------------------------------------------------------------------
# the trainer: REINFORCE's parts for the skeleton (ppo_np/skeleton.py)


@dataclasses.dataclass
class REINFORCEConfig(TrainerConfig):
    """TrainerConfig's settings (batch_size: responses per step, one AdamW step; mini_batch_size: rows per forward
    pass with a graph, which bounds memory and is not a step) and REINFORCE's own."""
    kl_coef: float = 0.05               # beta of the KL penalty in the reward (RLOOConfig's)

    def __post_init__(self):
        checks.method_config("REINFORCEConfig", self, coefficients=("kl_coef",))


def reinforce_prepare(trainer, rollout):
    """r = s - beta KL(y) (RLOO's) and the batch-mean baseline -> ((advantages,), the rollout's stats)."""
    rewards, non_score_rewards = rloo_rewards(rollout.scores, rollout.logprobs, rollout.ref_logprobs,
                                              trainer.config.kl_coef, rollout.mask)
    advantages = rewards - rewards.mean()
    stats = {**rollout_stats(rollout.logprobs, rollout.ref_logprobs, rollout.mask),
             "objective/kl_coef": trainer.config.kl_coef,
             "reinforce/mean_scores": float(rollout.scores.mean()),
             "reinforce/mean_non_score_reward": float(non_score_rewards.mean()),
             "reinforce/mean_rlhf_reward": float(rewards.mean())}
    return (advantages,), stats


def reinforce_minibatch_loss(cfg, batch, logprobs, values, advantages):
    """reinforce_loss on one mini-batch, as its share of the batch's loss (no value head: values is None)."""
    return reinforce_loss(logprobs, advantages, batch.mask, cfg.batch_size)


class REINFORCETrainer(Trainer):
    """One REINFORCE step on B (query, response, score) rows: one AdamW step on the batch's loss."""

    def __init__(self, model, ref_model, config=None, pad_token_id=0):
        super().__init__(REINFORCE, model, ref_model, config, pad_token_id)


def reinforce_credit(cfg, scores, logprobs, ref_logprobs, values, mask):
    """tokens.html's credit: each response's advantage (its reward minus the mean of those shown) on every one of its
    tokens, (N, R)."""
    rewards, _ = rloo_rewards(scores, logprobs, ref_logprobs, cfg.kl_coef, mask)
    return (rewards - rewards.mean())[:, None] * mask


REINFORCE = Method(
    name="reinforce", label="REINFORCE", trainer=REINFORCETrainer, config=REINFORCEConfig,
    prepare=reinforce_prepare, loss=reinforce_minibatch_loss, loss_backward=reinforce_loss_backward,
    stats=reinforce_stats, minibatches_per_update=whole_batch,
    uses=tuple(flag for flag in SHARED if flag != "--ppo-epochs"),    # one pass, one AdamW step per batch
    options=(
        # the application's default (RLOO's note on how it was chosen); 0.1 ran to 17 nats
        Option(flag="--reinforce-kl-coef", field="kl_coef", default=0.2, at_least=0,
               help="REINFORCE: beta of the sequence KL in the reward"),
    ),
    curves=((("objective/kl_coef",), "kl_coef"), (("reinforce/policy/entropy",), "policy entropy (nats / token)"),
            (("reinforce/loss/policy",), "policy loss"),
            (("reinforce/mean_rlhf_reward",), "mean reward with the KL penalty")),
    credit=reinforce_credit,
    credit_text="the response's advantage, on every token: its reward (score &minus; &beta;&nbsp;=&nbsp;"
                "{kl_coef:.3f} times its KL) minus the mean reward of the responses shown (the batch-mean baseline)",
)
