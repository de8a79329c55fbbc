"""The forward/backward pairs of `minigpt_np.ops`, tuned for a CPU: the same functions, arguments and returns (some
take an `out=` array), the same numbers up to rounding (tests/engine/test_kernels.py). docs/gpt.md, "The fast kernels",
says what each change gains.

What they change, and why:
- elementwise work runs in row blocks small enough for a core's cache (`blocks.in_row_blocks`), each expression as
  in-place passes over its block, so only a block's first pass reaches main memory;
- row sums over C are einsums, which NumPy vectorises across rows, where `mean(axis=-1)` reduces short rows one at a
  time;
- attention holds its scores key-major, (S, T), so that the softmax over the keys reduces along axis -2 across all T
  queries at once; the mask is added (the dtype's minimum) rather than selected, and the softmax's shift is taken
  with np.fmax, which skips NaN checks;
- the embedding's backward sums each token's run of positions with np.add.reduceat instead of np.add.at's row by
  row scatter.

The ops that gain nothing from tuning (the linear layer's backward, the tied lm_head, the embedding's lookup) are the
reference's own, imported.

Shape legend as in `minigpt_np.ops`: B batch, T query positions, S key positions, C channels, OC output channels,
H heads, D = C/H, V vocabulary, N = B*T. A `d` prefix means "gradient of the loss with respect to".
"""
from functools import partial

import numpy as np

from ..ops import (GELU_K, LN_EPS, embedding_forward, linear_backward, lm_head_backward,  # noqa: F401
                   lm_head_forward, merge_heads, split_heads)                  # the same in both kernels
from .blocks import in_row_blocks


# ---------------------------------------------------------------------------------------------------- linear
def linear_forward(x, w, b=None):
    """y = x W + b.   x (..., C), W (C, OC) (GPT-2 Conv1D layout: in, out), b (OC,) -> y (..., OC)."""
    y = x.reshape(-1, x.shape[-1]) @ w
    if b is not None:
        in_row_blocks(np.add, y, b[None], y)             # y += b, a pass over (N, OC) that every thread shares
    return y.reshape(*x.shape[:-1], w.shape[1])


# ------------------------------------------------------------------------------------------------- embedding
def embedding_backward(dout, idx, num_embeddings):
    """dW[v] = sum over positions with idx == v of dout: a scatter-add.   dout (B, T, C) -> dW (V, C).

    Sorting the positions by id makes each id's positions one run, summed by np.add.reduceat, where np.add.at
    adds row by row.
    """
    ids = idx.reshape(-1)
    dout = dout.reshape(-1, dout.shape[-1])                                   # (N, C)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    starts = np.flatnonzero(np.diff(sorted_ids, prepend=-1))                 # first position of each id's run
    dweight = np.zeros((num_embeddings, dout.shape[-1]), dtype=dout.dtype)
    dweight[sorted_ids[starts]] = np.add.reduceat(dout[order], starts, axis=0)
    return dweight


# ------------------------------------------------------------------------------------------------- layernorm
def layernorm_forward(x, w, b, eps=LN_EPS):
    """y = xhat w + b,  xhat = (x - mean) / sqrt(var + eps), biased var over C.   x (B, ..., C) -> y, xhat, rstd.

    rstd = 1 / sqrt(var + eps) has shape (B, ..., 1). In row blocks (`blocks.in_row_blocks`); the row sums over C
    are einsums, vectorised across rows, where NumPy's `mean(axis=-1)` reduces short rows one at a time.
    """
    y, xhat, rstd = np.empty(x.shape, x.dtype), np.empty(x.shape, x.dtype), np.empty(x.shape[:-1] + (1,), x.dtype)
    in_row_blocks(partial(_layernorm_rows, eps=eps), x, w[None], b[None], y, xhat, rstd)
    return y, xhat, rstd


def _layernorm_rows(x, w, b, y, xhat, rstd, *, eps):
    C = x.shape[-1]
    np.subtract(x, np.einsum("...c->...", x)[..., None] / C, out=xhat)        # x - mean, normalised in place below
    var = np.einsum("...c,...c->...", xhat, xhat)[..., None] / C            # row dot products: no squared temporary
    np.divide(1.0, np.sqrt(var + eps), out=rstd)
    xhat *= rstd
    np.multiply(xhat, w, out=y)
    y += b


def layernorm_backward(dy, xhat, rstd, w):
    """dx = rstd (dxhat - mean_C(dxhat) - xhat mean_C(dxhat xhat)),  dxhat = dy w;  dw = sum_N dy xhat,  db = sum_N dy."""
    C = dy.shape[-1]
    dx = np.empty(xhat.shape, xhat.dtype)
    in_row_blocks(_layernorm_backward_rows, dy, xhat, rstd, w[None], dx)
    dy2 = dy.reshape(-1, C)
    dw = np.einsum("nc,nc->c", dy2, xhat.reshape(-1, C))
    db = dy2.sum(axis=0)
    return dx, dw, db


def _layernorm_backward_rows(dy, xhat, rstd, w, dx):
    C = dy.shape[-1]
    dxhat = dy * w
    np.multiply(xhat, np.einsum("...c,...c->...", dxhat, xhat)[..., None] / C, out=dx)   # xhat mean_C(dxhat xhat)
    np.subtract(dxhat, dx, out=dx)
    dx -= np.einsum("...c->...", dxhat)[..., None] / C
    dx *= rstd


# ------------------------------------------------------------------------------------------------------ gelu
def gelu_forward(x):
    """y = 0.5 x (1 + tanh(u)),  u = k (x + 0.044715 x^3),  k = sqrt(2/pi) (GPT-2's tanh approximation).

    Returns y and tanh(u), which the backward reuses. This runs on the largest activation of the block, (B, T, 4C):
    eight passes, in place, in row blocks that stay in cache (`blocks.in_row_blocks`).
    """
    y, th = np.empty(x.shape, x.dtype), np.empty(x.shape, x.dtype)
    in_row_blocks(_gelu_rows, x, y, th)
    return y, th


def _gelu_rows(x, y, th):
    np.multiply(x, x, out=th)
    th *= 0.044715 * GELU_K
    th += GELU_K
    th *= x                                 # u = x (k + 0.044715 k x^2)
    np.tanh(th, out=th)
    np.add(th, 1.0, out=y)
    y *= x
    y *= 0.5


def gelu_backward(dy, x, th):
    """dx = dy (0.5 (1 + th) + 0.5 x (1 - th^2) k (1 + 3 * 0.044715 x^2)),  th = tanh(u) from the forward."""
    dx = np.empty(x.shape, x.dtype)
    in_row_blocks(_gelu_backward_rows, dy, x, th, dx)
    return dx


def _gelu_backward_rows(dy, x, th, dx):
    np.multiply(x, x, out=dx)
    dx *= 3 * 0.044715 * GELU_K
    dx += GELU_K
    dx *= x                                 # x k (1 + 3 * 0.044715 x^2)
    sech2 = th * th
    np.subtract(1.0, sech2, out=sech2)      # 1 - th^2
    dx *= sech2
    dx += th
    dx += 1.0
    dx *= 0.5
    dx *= dy


# ------------------------------------------------------------------------------------------------- attention
def causal_allowed(T, S, key_mask=None):
    """Which keys each query may see, key-major: allowed[b, 0, j, t] = (j <= t + S - T) and key_mask[b, j].

    Queries are the last T of S positions (S > T when a KV cache holds the first S - T). key_mask (B, S) is the
    attention_mask (1 = real token, 0 = padding) -> bool (B or 1, 1, S, T), the layout of the scores below, and
    C-ordered like them: added to them as the transpose of a query-major mask, a strided view, it would be read
    stride by stride.
    """
    allowed = (np.arange(S)[:, None] <= np.arange(T) + (S - T))[None, None]          # [j, t]: j <= t + S - T
    if key_mask is not None:
        allowed = allowed & (key_mask[:, None, :, None] != 0)
    return allowed


def attention_forward(q, k, v, allowed, out=None):
    """y = softmax(q k^T / sqrt(D) masked) v, per head.   q (B,H,T,D), k and v (B,H,S,D), allowed bool (B|1,1,S,T).

    The scores are held key-major, s[..., j, t] = k_j . q_t / sqrt(D), shape (S, T): the softmax over the keys then
    reduces along axis -2, which NumPy vectorises across the T queries, instead of along B*H*T rows of S numbers
    each, which it reduces one short row at a time.
    Disallowed scores are replaced by the dtype's most negative number rather than -inf, as Hugging Face GPT-2 does
    for its causal mask (it adds that number for padding instead; docs/gpt.md), so a query with no allowed key (a
    left-padding query) stays finite; no real token ever reads it. The replacement is an addition of that number,
    whose sum with any score below 1e31 rounds back to the number itself: the same result as a masked copy, in one
    plain pass. The softmax's shift is the largest score per query taken with np.fmax.reduce, which skips the
    checks for NaN that .max makes; a NaN score still makes its query's probabilities NaN, through the exp (tested).
    Returns y (B,H,T,D) (written into `out` if given, e.g. a head-split view of a (B,T,C) array) and the attention
    probabilities att (B,H,S,T), key-major, for the backward.
    """
    B, H, T = q.shape[:3]
    att = np.empty((B, H, k.shape[2], T), q.dtype)
    y = np.empty(q.shape, q.dtype) if out is None else out
    disallowed = np.where(allowed, 0, np.finfo(q.dtype).min).astype(q.dtype)            # added to the scores
    in_row_blocks(_attention_rows, q, k, v, disallowed, att, y)
    return y, att


def _attention_rows(q, k, v, disallowed, att, y):
    """attention_forward on a block of batch rows, into att and y."""
    scale = np.asarray(1.0 / np.sqrt(q.shape[-1]), dtype=q.dtype)
    np.matmul(k, (q * scale).swapaxes(-1, -2), out=att)                     # (S, T); scaling q (T, D) costs less
    att += disallowed                                                         # than scaling the scores (S, T)
    att -= np.fmax.reduce(att, axis=-2, keepdims=True)
    np.exp(att, out=att)
    att /= att.sum(axis=-2, keepdims=True)
    np.matmul(att.swapaxes(-1, -2), v, out=y)


def attention_backward(dy, q, k, v, att, allowed=None):
    """Backward of y = a v, a = softmax(s) over the keys, s = q k^T / sqrt(D); att = a^T, key-major (S, T).

    dv = a^T dy;  da = dy v^T;  ds = a * (da - sum_S(da * a))  (softmax Jacobian);  dq = ds k / sqrt(D);
    dk = ds^T q / sqrt(D). Computed key-major: ds^T = a^T * (v dy^T - sum_S(...)), then dq = (ds^T)^T k.
    Masked scores have a = 0, hence ds = 0: no gradient leaks. A query with no allowed key (a left-padding query)
    is the exception: its scores are all the same constant, so its a is uniform yet independent of q and k; pass
    `allowed` (the forward's mask) to zero ds there.
    """
    dq, dk, dv = np.empty(q.shape, q.dtype), np.empty(k.shape, k.dtype), np.empty(v.shape, v.dtype)
    in_row_blocks(_attention_backward_rows, dy, q, k, v, att, dq, dk, dv, *(() if allowed is None else (allowed,)))
    return dq, dk, dv


def _attention_backward_rows(dy, q, k, v, att, dq, dk, dv, allowed=None):
    """attention_backward on a block of batch rows, into dq, dk and dv."""
    scale = np.asarray(1.0 / np.sqrt(q.shape[-1]), dtype=q.dtype)
    np.matmul(att, dy, out=dv)                                                 # (S, D)
    ds = v @ dy.swapaxes(-1, -2)                                               # da^T (S, T), then ds^T in place
    ds -= np.einsum("...jt,...jt->...t", ds, att)[..., None, :]              # sum_S(da * a) per query
    ds *= att
    if allowed is not None:
        ds *= allowed
    np.matmul(ds.swapaxes(-1, -2), k, out=dq)
    dq *= scale                                                                # on (T, D), smaller than (S, T)
    np.matmul(ds, q, out=dk)
    dk *= scale



# ------------------------------------------------------------------------------------------ cross-entropy
def cross_entropy_forward(logits, targets, ignore_index=-100, out=None):
    """L = mean over valid positions of (logsumexp(logits) - logits[target]); valid = target != ignore_index.

    logits (N, V), targets int (N,) -> L scalar, and the softmax probabilities (N, V) kept for the backward, written
    into `out` if given: that may be `logits` itself, which `functional.lm_head_cross_entropy` owns and overwrites.
    Row blocks (`blocks.in_row_blocks`) keep the five passes over each block in cache; an ignored row reads column 0
    as its target, and its nll is dropped.
    """
    valid = targets != ignore_index
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise ValueError("cross_entropy: every target equals ignore_index, so the mean is undefined")
    probs = np.empty(logits.shape, logits.dtype) if out is None else out
    nll = np.empty((len(logits), 1), dtype=logits.dtype)
    in_row_blocks(_softmax_nll_rows, logits, np.where(valid, targets, 0)[:, None], probs, nll)
    return nll[valid, 0].sum() / n_valid, probs


def _softmax_nll_rows(logits, targets, probs, nll):
    """probs = softmax(logits), nll = logsumexp(logits) - logits[target], row by row (probs may be logits)."""
    np.subtract(logits, logits.max(axis=-1, keepdims=True), out=probs)    # shifted: exp cannot overflow
    target_logits = np.take_along_axis(probs, targets, axis=-1)
    np.exp(probs, out=probs)
    sumexp = probs.sum(axis=-1, keepdims=True)
    np.subtract(np.log(sumexp), target_logits, out=nll)
    probs /= sumexp


def cross_entropy_backward(dloss, probs, targets, ignore_index=-100):
    """dlogits = dL (softmax - onehot(target)) / n_valid on valid rows, 0 on ignored rows (fused log-softmax backward).

    Written over `probs` (N, V), which nothing needs afterwards: the largest array of the step is not allocated twice.
    """
    valid = targets != ignore_index
    scale = np.asarray(dloss / valid.sum(), dtype=probs.dtype)
    in_row_blocks(partial(_dlogits_rows, scale=scale), probs, np.where(valid, targets, 0)[:, None], valid[:, None])
    return probs


def _dlogits_rows(dlogits, targets, valid, *, scale):
    dlogits *= scale
    dlogits[~valid[:, 0]] = 0
    rows = np.nonzero(valid[:, 0])[0]
    dlogits[rows, targets[rows, 0]] -= scale
