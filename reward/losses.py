"""The GPT reward model's two losses, each a forward/backward pair on the scalar rewards (one per text).

    bce_loss(rewards, labels) -> (loss, terms)
    bce_loss_backward(terms) -> drewards
    pairwise_loss(rewards, margin, center_rewards_coefficient) -> (loss, terms)
    pairwise_loss_backward(terms) -> drewards

The forward takes NumPy rewards and returns the loss and what its backward needs; the backward returns dL/drewards
with the rewards' shape, which the trainer pushes into the trunk with `minigpt_np.tensor.backward`. NumPy only.

The pairwise loss is TRL's `RewardTrainer.compute_loss` (trl 1.16.0, trl/trainer/reward_trainer.py):
- line 786: the batch holds the P chosen texts and then the P rejected ones (the collator concatenates
  `chosen_ids + rejected_ids`, line 209), and the rewards are split with `torch.chunk(..., chunks=2)`;
- lines 789-792: loss = -logsigmoid(r_chosen - r_rejected - margin).mean(), the margin only when the data
  has one (per pair);
- lines 794-795: + center_rewards_coefficient * mean((r_chosen + r_rejected)^2) when the coefficient is not
  None (Eisenstein et al. 2023, arXiv:2312.09244, Eq. 2; TRL recommends 0.01, trl/trainer/reward_config.py:70-72).
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np

from reward.logreg import sigmoid


def bce_loss(rewards, labels):
    """L = (1/N) sum_i [softplus(r_i) - y_i r_i] = mean_i -log p(y_i | r_i),  p(1 | r) = sigmoid(r).

    rewards r (N,), labels y (N,) in {0, 1} -> (L, terms). torch's binary_cross_entropy_with_logits, mean reduction.
    """
    r = np.asarray(rewards, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if r.ndim != 1 or r.shape != y.shape or r.size == 0:
        raise ValueError(f"bce_loss needs rewards and labels of one shape (N,), N >= 1; got {r.shape} and {y.shape}")
    loss = float(np.mean(np.logaddexp(0.0, r) - y * r))
    return loss, {"rewards": r, "labels": y}


def bce_loss_backward(terms):
    """dL/dr_i = (sigmoid(r_i) - y_i) / N.   -> drewards (N,)."""
    r, y = terms["rewards"], terms["labels"]
    return (sigmoid(r) - y) / r.size


def pairwise_loss(rewards, margin: Union[None, float, np.ndarray] = None,
                  center_rewards_coefficient: Optional[float] = None):
    """rewards (2P,) = [r_w (P,), r_l (P,)]: the P chosen texts' rewards, then the P rejected texts'.

        d = r_w - r_l - m                                   (m = 0 without a margin; a scalar or (P,))
        L = (1/P) sum_p softplus(-d_p)  +  c (1/P) sum_p (r_w,p + r_l,p)^2      (c = 0 when None)

    softplus(-d) = -log sigmoid(d): the Bradley-Terry negative log-likelihood that the chosen text wins, with a
    margin it must win by. The centring term pulls the rewards towards mean zero without changing their
    differences' optimum much. -> (L, terms); terms also carry TRL's logged stats accuracy and margin.
    """
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 1 or r.size == 0 or r.size % 2:
        raise ValueError(f"pairwise_loss needs rewards (2P,), the chosen then the rejected, P >= 1; got {r.shape}")
    r_w, r_l = np.split(r, 2)
    m = 0.0 if margin is None else np.broadcast_to(np.asarray(margin, dtype=np.float64), r_w.shape)
    c = 0.0 if center_rewards_coefficient is None else float(center_rewards_coefficient)
    d = r_w - r_l - m
    loss = float(np.mean(np.logaddexp(0.0, -d)) + c * np.mean((r_w + r_l) ** 2))
    return loss, {"d": d, "sum": r_w + r_l, "c": c,
                  "accuracy": float(np.mean(r_w > r_l)), "margin": float(np.mean(r_w - r_l))}


def pairwise_loss_backward(terms):
    """dL/dr_w = (-sigmoid(-d) + 2 c (r_w + r_l)) / P,   dL/dr_l = (sigmoid(-d) + 2 c (r_w + r_l)) / P.

    -> drewards (2P,) in the forward's layout [dr_w, dr_l].
    """
    d, s, c = terms["d"], terms["sum"], terms["c"]
    P = d.size
    push = sigmoid(-d) / P                       # how much the pair's difference still needs to grow
    center = 2.0 * c * s / P
    return np.concatenate([-push + center, push + center])


__all__ = ["bce_loss", "bce_loss_backward", "pairwise_loss", "pairwise_loss_backward"]
