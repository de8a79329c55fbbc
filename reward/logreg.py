"""L2-regularised logistic regression in NumPy: the loss and its gradient, an L-BFGS optimiser, and a fit with
early stopping on validation log-loss.

The model gives each text the logit z = x . w + b, the log-odds that its label is 1 (positive); the
probability is sigmoid(z). Training minimises the mean negative log-likelihood plus an L2 penalty on the
weights (not on the bias, so the penalty never pulls the base rate towards 50 %).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from reward.sparse import CSR

logger = logging.getLogger(__name__)


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """a . b for 1-D arrays.

    Not np.dot: that hands vectors to multi-threaded BLAS, whose thread hand-off costs more than these sums
    and, measured on a busy 2-core machine, can stall for milliseconds per call; an L-BFGS iteration makes
    about 2 * history + 5 of them.
    """
    return float(np.sum(a * b))


def sigmoid(z: np.ndarray) -> np.ndarray:
    """sigma(z) = 1 / (1 + exp(-z)), written so that neither branch overflows."""
    z = np.asarray(z, dtype=np.float64)
    ez = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + ez), ez / (1.0 + ez))


def log_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy from logits: mean_i [softplus(z_i) - y_i z_i], softplus(z) = log(1 + e^z).

    logits z (N,), labels y (N,) in {0, 1} -> scalar (nats). Equal to -mean log p(y_i | x_i).
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def logistic_loss(w: np.ndarray, b: float, X: CSR, y: np.ndarray, l2: float):
    """L(w, b) = (1/N) sum_i [softplus(z_i) - y_i z_i] + (l2 / 2) |w|^2,  z = X w + b.

    X (N, D), w (D,), b scalar, y (N,) in {0, 1} -> (L, dw (D,), db scalar) with
        dz = (sigma(z) - y) / N,   dw = X^T dz + l2 w,   db = sum_i dz_i.
    """
    z = X.matvec(w) + b
    n = X.shape[0]
    loss = np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * _dot(w, w)
    dz = (sigmoid(z) - y) / n
    dw = X.rmatvec(dz) + l2 * w
    db = float(dz.sum())
    return float(loss), dw, db


@dataclass
class LbfgsResult:
    x: np.ndarray
    f: float
    n_iter: int
    converged: bool
    message: str


def lbfgs(fun: Callable, x0: np.ndarray, *, max_iter: int = 500, history: int = 10, gtol: float = 1e-6,
          ftol: float = 1e-12, callback: Optional[Callable] = None) -> LbfgsResult:
    """Minimise a smooth function with L-BFGS (Nocedal & Wright, Algorithm 7.4) and a backtracking line search.

    fun(x) -> (f, g) with x, g (P,). The search direction d = -H g applies the inverse-Hessian estimate H
    built from the last ``history`` pairs s_k = x_{k+1} - x_k, y_k = g_{k+1} - g_k by the two-loop
    recursion, with H_0 = (s.y / y.y) I. The step t starts at 1 and halves until the Armijo condition
    f(x + t d) <= f(x) + 1e-4 t g.d holds. A pair is kept only when s.y > 0 (curvature), which a convex
    loss guarantees up to rounding. Stops when max |g| < gtol, when f stops decreasing
    (f_old - f <= ftol max(1, |f|)), after max_iter iterations, or when callback(k, x, f) returns True.
    """
    x = np.array(x0, dtype=np.float64)
    f, g = fun(x)
    pairs = []  # (s, y, rho = 1 / s.y), oldest first
    for k in range(1, max_iter + 1):
        if np.max(np.abs(g)) < gtol:
            return LbfgsResult(x, f, k - 1, True, "gradient below gtol")
        d = _direction(g, pairs)
        slope = _dot(g, d)
        if slope >= 0:  # not a descent direction (stale curvature): restart from steepest descent
            pairs.clear()
            d = -g / max(np.sqrt(_dot(g, g)), 1.0)
            slope = _dot(g, d)
        step = _armijo_step(fun, x, f, d, slope)
        if step is None:
            return LbfgsResult(x, f, k, False, "line search failed")
        x_new, f_new, g_new = step
        _remember(pairs, x_new - x, g_new - g, history)
        f_old = f
        x, f, g = x_new, f_new, g_new
        if callback is not None and callback(k, x, f):
            return LbfgsResult(x, f, k, False, "stopped by callback")
        if f_old - f <= ftol * max(1.0, abs(f)):
            return LbfgsResult(x, f, k, True, "loss change below ftol")
    return LbfgsResult(x, f, max_iter, False, "max_iter reached")


def _direction(g, pairs):
    """d = -H g by the two-loop recursion: q <- g, peel off the newest pairs, scale by H_0 = (s.y / y.y) I of the
    newest pair, then add them back oldest first. Without pairs, a step of at most unit length along -g."""
    q = g.copy()
    alphas = []
    for s, yv, rho in reversed(pairs):
        a = rho * _dot(s, q)
        q -= a * yv
        alphas.append(a)
    if pairs:
        s, yv, _ = pairs[-1]
        q *= _dot(s, yv) / _dot(yv, yv)
    else:
        q /= max(np.sqrt(_dot(g, g)), 1.0)
    for (s, yv, rho), a in zip(pairs, reversed(alphas)):
        q += s * (a - rho * _dot(yv, q))
    return -q


def _armijo_step(fun, x, f, d, slope, halvings=50):
    """x + t d for the first t = 1, 1/2, 1/4, ... with f(x + t d) <= f(x) + 1e-4 t g.d -> (x_new, f_new, g_new),
    or None when none of `halvings` steps is accepted."""
    t = 1.0
    for _ in range(halvings):
        x_new = x + t * d
        f_new, g_new = fun(x_new)
        if f_new <= f + 1e-4 * t * slope:
            return x_new, f_new, g_new
        t *= 0.5
    return None


def _remember(pairs, s, yv, history):
    """Keep the pair (s, y) if its curvature s.y > 0 (up to rounding), and at most the newest `history` pairs."""
    sy = _dot(s, yv)
    if sy > 1e-12 * _dot(yv, yv):
        pairs.append((s, yv, 1.0 / sy))
        if len(pairs) > history:
            pairs.pop(0)


@dataclass
class FitResult:
    w: np.ndarray
    b: float
    best_iter: int                              # iteration whose weights were kept
    n_iter: int                                 # iterations run
    val_log_loss: Optional[float] = None
    history: list = field(default_factory=list)  # (iteration, train objective, val log-loss) per iteration


def fit_logistic_regression(X: CSR, y: np.ndarray, l2: float, *, X_val: Optional[CSR] = None,
                            y_val: Optional[np.ndarray] = None, max_iter: int = 300, patience: int = 20,
                            gtol: float = 1e-6, w0: Optional[np.ndarray] = None, b0: float = 0.0) -> FitResult:
    """argmin_{w,b} logistic_loss(w, b, X, y, l2) by L-BFGS from (w0, b0) (default 0, 0), with early stopping.

    X (N, D), y (N,). With validation data (X_val (M, D), y_val (M,)), the weights with the lowest
    validation log-loss seen so far are kept and training stops once it has not improved for ``patience``
    iterations. A fixed start and a convex loss make the result deterministic; a warm start (the solution
    for a larger l2) saves iterations along a regularisation path.
    """
    y = np.asarray(y, dtype=np.float64)
    if X.shape[0] != y.shape[0] or X.shape[0] == 0:
        raise ValueError(f"X has {X.shape[0]} rows but y has {y.shape[0]} labels (need at least one)")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 or 1")
    d = X.shape[1]

    def fun(theta):
        loss, dw, db = logistic_loss(theta[:d], theta[d], X, y, l2)
        return loss, np.append(dw, db)

    theta0 = np.zeros(d + 1)
    if w0 is not None:
        theta0[:d] = w0
        theta0[d] = b0
    if X_val is None or y_val is None:
        history = []
        result = lbfgs(fun, theta0, max_iter=max_iter, gtol=gtol,
                       callback=lambda k, theta, f: history.append((k, f, None)))
        logger.debug("l2=%g: %s after %d iterations", l2, result.message, result.n_iter)
        return FitResult(w=result.x[:d].copy(), b=float(result.x[d]), best_iter=result.n_iter, n_iter=result.n_iter,
                         history=history)
    best = _BestOnValidation(theta0, X_val, np.asarray(y_val, dtype=np.float64), patience)
    result = lbfgs(fun, theta0, max_iter=max_iter, gtol=gtol, callback=best)
    logger.debug("l2=%g: %s after %d iterations", l2, result.message, result.n_iter)
    return FitResult(w=best.theta[:d].copy(), b=float(best.theta[d]), best_iter=best.iter, n_iter=result.n_iter,
                     val_log_loss=best.val, history=best.history)


class _BestOnValidation:
    """Early stopping, as lbfgs's callback: keeps the weights with the lowest validation log-loss seen so far (from
    the start on), and stops once it has not improved for `patience` iterations."""

    def __init__(self, theta0, X_val, y_val, patience):
        self.X_val, self.y_val, self.patience, self.history = X_val, y_val, patience, []
        self.theta, self.iter, self.val = theta0, 0, self.log_loss(theta0)

    def log_loss(self, theta):
        return log_loss(self.X_val.matvec(theta[:-1]) + theta[-1], self.y_val)

    def __call__(self, k, theta, f):
        val = self.log_loss(theta)
        self.history.append((k, f, val))
        if val < self.val:
            self.theta, self.val, self.iter = theta.copy(), val, k
        return k - self.iter >= self.patience
