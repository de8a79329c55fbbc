"""Forward/backward pairs on plain ndarrays, the backward written by hand directly under its forward.

Each function is its equation in plain NumPy (docs/gpt.md derives each backward). `minigpt_np.fast.ops` has the
same functions tuned for speed, and tests prove the two equal (tests/engine/test_kernels.py).

Shape legend: B batch, T time (query positions), S key positions, C channels, OC output channels,
H heads, D = C/H head size, V vocabulary, N = B*T flattened positions. A `d` prefix means
"gradient of the loss with respect to": dy = dL/dy.
"""
import math

import numpy as np

LN_EPS = 1e-5
GELU_K = math.sqrt(2.0 / math.pi)   # a Python float, so float32 arrays stay float32


# ---------------------------------------------------------------------------------------------------- linear
def linear_forward(x, w, b=None):
    """y = x W + b.   x (..., C), W (C, OC) (GPT-2 Conv1D layout: in, out), b (OC,) -> y (..., OC).

    The leading axes are flattened to N rows, so that every position goes through one product (N, C) @ (C, OC).
    """
    y = x.reshape(-1, x.shape[-1]) @ w                                      # (N, OC)
    if b is not None:
        y = y + b
    return y.reshape(*x.shape[:-1], w.shape[1])


def linear_backward(dy, x, w, need_dx=True):
    """dx = dy W^T,  dW = x^T dy,  db = sum_N dy.   dy (..., OC) -> dx (..., C), dW (C, OC), db (OC,)."""
    dy2, x2 = dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1])       # (N, OC), (N, C)
    dw = x2.T @ dy2
    db = dy2.sum(axis=0)
    dx = (dy2 @ w.T).reshape(x.shape) if need_dx else None
    return dx, dw, db


def lm_head_forward(x, wte):
    """logits = x E^T with the token embedding E tied as output layer.   x (..., C), E (V, C) -> (..., V)."""
    return (x.reshape(-1, x.shape[-1]) @ wte.T).reshape(*x.shape[:-1], wte.shape[0])


def lm_head_backward(dlogits, x, wte):
    """dx = dlogits E,  dE = dlogits^T x.   dlogits (..., V) -> dx (..., C), dE (V, C)."""
    dl2 = dlogits.reshape(-1, dlogits.shape[-1])                             # (N, V)
    dx = (dl2 @ wte).reshape(x.shape)
    dwte = dl2.T @ x.reshape(-1, x.shape[-1])
    return dx, dwte


# ------------------------------------------------------------------------------------------------- embedding
def embedding_forward(weight, idx):
    """out[b, t] = W[idx[b, t]].   W (V, C), idx int (B, T) -> (B, T, C)."""
    return weight[idx]


def embedding_backward(dout, idx, num_embeddings):
    """dW[v] = sum over positions with idx == v of dout: a scatter-add.   dout (B, T, C) -> dW (V, C).

    np.add.at adds every position's row, so a token seen twice gets both; dW[idx] += dout would keep one.
    """
    dweight = np.zeros((num_embeddings, dout.shape[-1]), dtype=dout.dtype)
    np.add.at(dweight, idx.reshape(-1), dout.reshape(-1, dout.shape[-1]))
    return dweight


# ------------------------------------------------------------------------------------------------- layernorm
def layernorm_forward(x, w, b, eps=LN_EPS):
    """y = xhat w + b,  xhat = (x - mean) / sqrt(var + eps), biased var over C.   x (B, ..., C) -> y, xhat, rstd.

    rstd = 1 / sqrt(var + eps), shape (B, ..., 1), and xhat are kept for the backward.
    """
    std = np.sqrt(x.var(axis=-1, keepdims=True) + eps)                 # biased variance, as torch.nn.LayerNorm
    xhat = (x - x.mean(axis=-1, keepdims=True)) / std
    return xhat * w + b, xhat, 1 / std


def layernorm_backward(dy, xhat, rstd, w):
    """dx = rstd (dxhat - mean_C(dxhat) - xhat mean_C(dxhat xhat)),  dxhat = dy w;  dw = sum_N dy xhat,  db = sum_N dy."""
    C = dy.shape[-1]
    dxhat = dy * w
    dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True) - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    dw = (dy * xhat).reshape(-1, C).sum(axis=0)
    db = dy.reshape(-1, C).sum(axis=0)
    return dx, dw, db


# ------------------------------------------------------------------------------------------------------ gelu
def gelu_forward(x):
    """y = 0.5 x (1 + tanh(u)),  u = k (x + 0.044715 x^3),  k = sqrt(2/pi) (GPT-2's tanh approximation).

    Returns y and tanh(u), which the backward reuses.
    """
    th = np.tanh(GELU_K * (x + 0.044715 * x**3))
    return 0.5 * x * (1 + th), th


def gelu_backward(dy, x, th):
    """dx = dy (0.5 (1 + th) + 0.5 x (1 - th^2) k (1 + 3 * 0.044715 x^2)),  th = tanh(u) from the forward."""
    return dy * (0.5 * (1 + th) + 0.5 * x * (1 - th**2) * GELU_K * (1 + 3 * 0.044715 * x**2))


# ------------------------------------------------------------------------------------------------- attention
def causal_allowed(T, S, key_mask=None):
    """Which keys each query may see: allowed[b, 0, t, j] = (j <= t + S - T) and key_mask[b, j].

    Queries are the last T of S positions (S > T when a KV cache holds the first S - T). key_mask (B, S) is the
    attention_mask (1 = real token, 0 = padding) -> bool (B or 1, 1, T, S), broadcast over the heads.
    """
    allowed = (np.arange(S) <= np.arange(T)[:, None] + (S - T))[None, None]          # [t, j]: j <= t + S - T
    if key_mask is not None:
        allowed = allowed & (key_mask[:, None, None, :] != 0)
    return allowed


def attention_forward(q, k, v, allowed):
    """y = a v,  a = softmax_S(s),  s = q k^T / sqrt(D) where allowed, finfo.min elsewhere; per head.

    q (B,H,T,D), k and v (B,H,S,D), allowed bool (B|1,1,T,S) -> y (B,H,T,D) and the attention probabilities a
    (B,H,T,S), kept for the backward. A disallowed score is the dtype's most negative number rather than -inf, as
    in Hugging Face GPT-2's causal mask: a query with no allowed key (a left-padding query) gets a uniform, finite
    row, which no real token reads (docs/gpt.md).
    """
    s = q @ k.swapaxes(-1, -2) / math.sqrt(q.shape[-1])                    # (B, H, T, S)
    s = np.where(allowed, s, np.finfo(s.dtype).min)
    a = np.exp(s - s.max(axis=-1, keepdims=True))                           # shifted: exp cannot overflow
    a = a / a.sum(axis=-1, keepdims=True)
    return a @ v, a


def attention_backward(dy, q, k, v, att, allowed=None):
    """Backward of y = a v, a = softmax(s) over the keys, s = q k^T / sqrt(D); att = a (B,H,T,S).

    dv = a^T dy;  da = dy v^T;  ds = a * (da - sum_S(da * a))  (softmax Jacobian);  dq = ds k / sqrt(D);
    dk = ds^T q / sqrt(D). Masked scores have a = 0, hence ds = 0: no gradient leaks. A query with no allowed key
    (a left-padding query) is the exception: its scores are all the same constant, so its a is uniform yet
    independent of q and k; pass `allowed` (the forward's mask) to zero ds there.
    """
    scale = 1 / math.sqrt(q.shape[-1])
    dv = att.swapaxes(-1, -2) @ dy                                         # (B, H, S, D)
    da = dy @ v.swapaxes(-1, -2)                                           # (B, H, T, S)
    ds = att * (da - (da * att).sum(axis=-1, keepdims=True))
    if allowed is not None:
        ds = np.where(allowed, ds, 0)
    dq = ds @ k * scale
    dk = ds.swapaxes(-1, -2) @ q * scale
    return dq, dk, dv


def split_heads(x, n_head):
    """(B, T, C) -> (B, H, T, D), a view of x: writing into it merges heads back into x's (B, T, C) layout."""
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)


def merge_heads(y):
    """(B, H, T, D) -> (B, T, C = H D): the heads side by side, as split_heads took them apart."""
    B, H, T, D = y.shape
    return y.transpose(0, 2, 1, 3).reshape(B, T, H * D)


# ------------------------------------------------------------------------------------------ cross-entropy
def cross_entropy_forward(logits, targets, ignore_index=-100):
    """L = mean over valid positions of (logsumexp(logits) - logits[target]); valid = target != ignore_index.

    logits (N, V), targets int (N,) -> L scalar, and the softmax probabilities (N, V) kept for the backward.
    """
    valid = targets != ignore_index
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise ValueError("cross_entropy: every target equals ignore_index, so the mean is undefined")
    shifted = logits - logits.max(axis=-1, keepdims=True)                  # exp cannot overflow
    sumexp = np.exp(shifted).sum(axis=-1, keepdims=True)
    probs = np.exp(shifted) / sumexp
    rows = np.flatnonzero(valid)
    nll = np.log(sumexp[rows, 0]) - shifted[rows, targets[rows]]            # -log softmax(logits)[target]
    return nll.sum() / n_valid, probs


def cross_entropy_backward(dloss, probs, targets, ignore_index=-100):
    """dlogits = dL (softmax - onehot(target)) / n_valid on valid rows, 0 on ignored rows (fused log-softmax
    backward).   probs (N, V) -> dlogits (N, V)."""
    valid = targets != ignore_index
    rows = np.flatnonzero(valid)
    onehot = np.zeros_like(probs)
    onehot[rows, targets[rows]] = 1
    dlogits = (probs - onehot) * np.asarray(dloss / len(rows), dtype=probs.dtype)
    dlogits[~valid] = 0
    return dlogits
