"""Training the reward model: feature variant and L2 strength chosen on validation data, then evaluated.

Model selection uses validation log-loss rather than accuracy: on ~1,300 validation snippets accuracy
moves in steps of 0.08 % and is noisy, while log-loss is smooth; and PPO consumes the logit itself, so a
calibrated logit is what we want. Along the L2 grid (largest first) each fit starts from the previous
solution, which saves most of the iterations.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Optional, Sequence, Union

import numpy as np

from reward.features import FEATURE_PRESETS, FeatureConfig, Featurizer
from reward.logreg import fit_logistic_regression, log_loss
from reward.scorer import Scorer

logger = logging.getLogger(__name__)

# Strengths of the penalty (l2 / 2) |w|^2 next to a mean log-loss, on unit-norm feature blocks.
L2_GRID = (3e-4, 1e-4, 3e-5, 1e-5)


def _resolve_features(features) -> dict:
    """features: a preset name, "auto" (every preset), a FeatureConfig, or a list of these -> {name: config}."""
    if isinstance(features, FeatureConfig):
        return {"custom": features}
    if isinstance(features, str):
        features = list(FEATURE_PRESETS) if features == "auto" else [features]
    out = {}
    for f in features:
        if isinstance(f, FeatureConfig):
            out[f"custom{len(out)}"] = f
        elif f in FEATURE_PRESETS:
            out[f] = FEATURE_PRESETS[f]
        else:
            raise ValueError(f"unknown feature variant {f!r}; choose from {', '.join(FEATURE_PRESETS)} or 'auto'")
    return out


def _check_labels(labels, n, what) -> np.ndarray:
    y = np.asarray(labels, dtype=np.float64)
    if y.shape != (n,):
        raise ValueError(f"{what}: {n} texts but labels have shape {y.shape}")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError(f"{what}: labels must be 0 or 1")
    if n == 0:
        raise ValueError(f"{what}: no labelled texts")
    return y


def train_scorer(train_texts: Sequence[str], train_labels: Sequence[int], val_texts: Sequence[str],
                 val_labels: Sequence[int], *, l2: Union[None, float, Sequence[float]] = None,
                 features: Union[str, FeatureConfig, Sequence] = "nb", seed: int = 0,
                 log: Optional[Callable[[str], None]] = None, max_iter: int = 300, patience: int = 20) -> Scorer:
    """Fit the logistic-regression scorer on (train_texts, train_labels), choosing on the validation set.

    l2: a value, a list of values, or None for L2_GRID. features: a name in FEATURE_PRESETS ("nb" words +
    characters with naive-Bayes weights, "nb_words", "tfidf"), "auto" to try them all, or a FeatureConfig.
    Each (features, l2) fit is early-stopped on validation log-loss, with patience 20: a warm-started L-BFGS
    often needs 10 to 20 iterations to get below its starting point (with 10, the default run's l2 = 3e-5 fit
    stopped before it improved and 1e-4 won, measured). The pair with the lowest validation log-loss wins; along
    the l2 grid (largest first, each fit warm-started from the previous one) the search stops once validation
    log-loss gets worse. ``seed`` is accepted for a uniform interface: the fit has nothing random (convex loss,
    zero start, no sampling). ``log`` receives one progress line per fit (default: the module logger).
    """
    log = log or logger.info
    y_train = _check_labels(train_labels, len(train_texts), "train")
    y_val = _check_labels(val_labels, len(val_texts), "validation")
    if len(np.unique(y_train)) < 2:
        raise ValueError("the training labels are all the same; a classifier needs both classes")
    l2_grid = L2_GRID if l2 is None else ((l2,) if np.isscalar(l2) else tuple(l2))
    l2_grid = tuple(sorted((float(v) for v in l2_grid), reverse=True))
    if not l2_grid or min(l2_grid) < 0:
        raise ValueError(f"l2 must be non-negative, got {l2}")
    best = None
    for name, config in _resolve_features(features).items():
        fit = _l2_path(name, config, train_texts, y_train, val_texts, y_val, l2_grid, max_iter, patience, log)
        if best is None or fit["val"]["log_loss"] < best["val"]["log_loss"]:
            best = fit
    info = {"features": best["name"], "l2": best["l2"], "best_iter": best["fit"].best_iter,
            "val_accuracy": best["val"]["accuracy"], "val_log_loss": best["val"]["log_loss"],
            "n_train": len(train_texts), "n_val": len(val_texts)}
    log(f"chose features={best['name']} l2={best['l2']:g}")
    return Scorer(best["featurizer"], best["fit"].w, best["fit"].b, info)


def _l2_path(name, config, train_texts, y_train, val_texts, y_val, l2_grid, max_iter, patience, log) -> dict:
    """One feature variant along the l2 grid (largest first), each fit warm-started from the one before, until the
    validation log-loss stops falling -> the fit with the lowest: {"name", "featurizer", "fit", "l2", "val"}."""
    t0 = time.perf_counter()
    featurizer, X_train = Featurizer.fit_transform(train_texts, y_train, config)
    X_val = featurizer.transform(val_texts)
    t_features = time.perf_counter() - t0
    best, w0, b0, previous = None, None, 0.0, np.inf
    for value in l2_grid:
        t1 = time.perf_counter()
        fit = fit_logistic_regression(X_train, y_train, value, X_val=X_val, y_val=y_val, max_iter=max_iter,
                                      patience=patience, w0=w0, b0=b0)
        w0, b0 = fit.w, fit.b
        val_logits = X_val.matvec(fit.w) + fit.b
        val = {"accuracy": float(np.mean((val_logits > 0) == (y_val == 1))), "log_loss": log_loss(val_logits, y_val)}
        log(f"features={name} (D={len(featurizer)}, {t_features:.1f}s) l2={value:g}: val accuracy "
            f"{val['accuracy']:.4f} log-loss {val['log_loss']:.4f} (best iteration {fit.best_iter} of "
            f"{fit.n_iter}, {time.perf_counter() - t1:.1f}s)")
        if best is None or val["log_loss"] < best["val"]["log_loss"]:
            best = {"name": name, "featurizer": featurizer, "fit": fit, "l2": value, "val": val}
        if val["log_loss"] >= previous:  # past the bottom of the (unimodal) validation curve
            break
        previous = val["log_loss"]
    return best


def refit_scorer(texts: Sequence[str], labels: Sequence[int], chosen: Scorer) -> Scorer:
    """The scorer `chosen` would have been with more data: the same features, l2 and number of L-BFGS
    iterations (its early-stopping point), fitted on (texts, labels) with no validation set left over.

    This is how the gold scorer is made: the choices of the reward model's validation fit, refitted on the
    training and the validation snippets together.
    """
    y = _check_labels(labels, len(texts), "refit")
    config = _resolve_features(chosen.info["features"])[chosen.info["features"]]
    featurizer, X = Featurizer.fit_transform(texts, y, config)
    iterations = max(int(chosen.info["best_iter"]), 1)
    fit = fit_logistic_regression(X, y, chosen.info["l2"], max_iter=iterations)
    info = {"features": chosen.info["features"], "l2": chosen.info["l2"], "best_iter": iterations,
            "n_train": len(texts), "refit_of": "reward model"}
    return Scorer(featurizer, fit.w, fit.b, info)
