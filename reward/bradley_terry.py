"""A Bradley-Terry reward model: a linear score r(text) = x(text) . w fitted to preference pairs, the way
InstructGPT's reward model was trained (on a transformer instead of features).

Under the Bradley-Terry model the preferred text y_w of a pair beats y_l with probability sigmoid(r(y_w) - r(y_l)).
Fitting w maximises the likelihood of the observed preferences, with an L2 penalty:

    L(w) = 1/P sum_p -log sigmoid(r(y_w,p) - r(y_l,p)) + (l2 / 2) |w|^2,      r(y) = x(y) . w

Only differences of scores enter, so a bias b would cancel: there is none, and a text with no known feature
scores 0. The features are those of an existing `reward.features.Featurizer` (e.g. the classifier reward model's,
`scorer.featurizer`), so the two reward models differ only in what they are fitted to: labels or pairs.
The result is a `reward.scorer.Scorer` with b = 0: `score(texts, forward_batch_size=...)` works as for the
classifier, so it can drive PPO, and it saves and loads as a reward.npz.
Shapes: P pairs, D features.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

from reward.features import Featurizer
from reward.logreg import lbfgs, sigmoid
from reward.scorer import Scorer
from reward.sparse import CSR

__all__ = ["bradley_terry_loss", "fit_bradley_terry", "agreement"]


def bradley_terry_loss(w: np.ndarray, X_chosen: CSR, X_rejected: CSR, l2: float):
    """L(w) = 1/P sum_p softplus(-d_p) + (l2 / 2) |w|^2,  d = X_chosen w - X_rejected w.

    softplus(-d) = -log sigmoid(d). X_chosen, X_rejected (P, D), w (D,) -> (L, dw (D,)) with
        dd = -sigmoid(-d) / P = (sigmoid(d) - 1) / P,    dw = X_chosen^T dd - X_rejected^T dd + l2 w.
    """
    d = X_chosen.matvec(w) - X_rejected.matvec(w)
    loss = float(np.mean(np.logaddexp(0.0, -d)) + 0.5 * l2 * np.sum(w * w))
    dd = (sigmoid(d) - 1.0) / len(d)
    return loss, X_chosen.rmatvec(dd) - X_rejected.rmatvec(dd) + l2 * w


def fit_bradley_terry(pairs: Sequence[Tuple[str, str]], featurizer: Featurizer, *, l2: float = 1e-4,
                      max_iter: int = 300, gtol: float = 1e-6) -> Scorer:
    """argmin_w bradley_terry_loss by L-BFGS (reward.logreg.lbfgs) from w = 0 -> a Scorer with b = 0.

    pairs: (chosen text, rejected text) per pair; featurizer: a fitted Featurizer. The loss is convex (strictly
    for l2 > 0), so the fit is deterministic. A pair of two identical texts has d = 0 for every w: it adds log 2
    and no gradient.
    """
    pairs = list(pairs)
    if not pairs or any(len(p) != 2 for p in pairs):
        raise ValueError("pairs must be a non-empty list of (chosen text, rejected text) tuples")
    if not (np.isfinite(l2) and l2 >= 0):
        raise ValueError(f"l2 must be a finite number >= 0, got {l2}")
    X_chosen = featurizer.transform([c for c, _ in pairs])
    X_rejected = featurizer.transform([r for _, r in pairs])
    result = lbfgs(lambda w: bradley_terry_loss(w, X_chosen, X_rejected, l2), np.zeros(len(featurizer)),
                   max_iter=max_iter, gtol=gtol)
    info = {"model": "bradley_terry", "l2": float(l2), "n_pairs": len(pairs), "n_iter": result.n_iter,
            "train_loss": float(result.f), "message": result.message}
    return Scorer(featurizer, result.x, 0.0, info)


def agreement(scorer, pairs: Sequence[Tuple[str, str]], forward_batch_size: int = 256) -> float:
    """The share of pairs (a, b) whose first text the scorer ranks higher: mean of 1[r(a) > r(b)] + 1/2 1[r(a) = r(b)].

    With pairs ordered by a gold scorer (its preferred text first), this is the agreement with the gold scorer:
    1 is perfect, 1/2 is chance (a tie counts half, so a constant scorer gets exactly 1/2).
    """
    pairs = list(pairs)
    if not pairs:
        raise ValueError("agreement needs at least one pair")
    a = scorer.score([p[0] for p in pairs], forward_batch_size=forward_batch_size)
    b = scorer.score([p[1] for p in pairs], forward_batch_size=forward_batch_size)
    return float(np.mean((a > b) + 0.5 * (a == b)))
