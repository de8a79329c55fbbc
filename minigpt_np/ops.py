"""Forward/backward pairs on plain ndarrays, the backward written by hand directly under its forward.

Shape legend: B batch, T time (query positions), S key positions, C channels, OC output channels,
H heads, D = C/H head size, V vocabulary, N = B*T flattened positions. A `d` prefix means
"gradient of the loss with respect to": dy = dL/dy.
"""
import numpy as np

LN_EPS = 1e-5
GELU_K = float(np.sqrt(2.0 / np.pi))   # a Python float, so float32 arrays stay float32


# ---------------------------------------------------------------------------------------------------- linear
def linear_forward(x, w, b=None):
    """y = x W + b.   x (..., C), W (C, OC) (GPT-2 Conv1D layout: in, out), b (OC,) -> y (..., OC)."""
    y = x.reshape(-1, x.shape[-1]) @ w
    if b is not None:
        y += b
    return y.reshape(*x.shape[:-1], w.shape[1])


def linear_backward(dy, x, w, need_dx=True):
    """dx = dy W^T,  dW = x^T dy,  db = sum_N dy.   dy (..., OC) -> dx (..., C), dW (C, OC), db (OC,)."""
    dy2 = dy.reshape(-1, dy.shape[-1])
    x2 = x.reshape(-1, x.shape[-1])
    dw = x2.T @ dy2
    db = dy2.sum(axis=0)
    dx = (dy2 @ w.T).reshape(x.shape) if need_dx else None
    return dx, dw, db


def lm_head_forward(x, wte):
    """logits = x E^T with the token embedding E tied as output layer.   x (..., C), E (V, C) -> (..., V)."""
    return (x.reshape(-1, x.shape[-1]) @ wte.T).reshape(*x.shape[:-1], wte.shape[0])


def lm_head_backward(dlogits, x, wte):
    """dx = dlogits E,  dE = dlogits^T x.   dlogits (..., V) -> dx (..., C), dE (V, C)."""
    dl2 = dlogits.reshape(-1, dlogits.shape[-1])
    dx = (dl2 @ wte).reshape(x.shape)
    dwte = dl2.T @ x.reshape(-1, x.shape[-1])
    return dx, dwte


# ------------------------------------------------------------------------------------------------- embedding
def embedding_forward(weight, idx):
    """out[b, t] = W[idx[b, t]].   W (V, C), idx int (B, T) -> (B, T, C)."""
    return weight[idx]


def embedding_backward(dout, idx, num_embeddings):
    """dW[v] = sum over positions with idx == v of dout: a scatter-add.   dout (B, T, C) -> dW (V, C).

    Sorting the positions by id makes each id's positions one run, summed by np.add.reduceat: a few times
    faster than np.add.at, which adds row by row.
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
    """y = xhat w + b,  xhat = (x - mean) / sqrt(var + eps), biased var over C.   x (..., C) -> y, xhat, rstd (..., 1)."""
    C = x.shape[-1]
    xhat = x - x.mean(axis=-1, keepdims=True)                              # x - mean, normalised in place below
    var = np.einsum("...c,...c->...", xhat, xhat)[..., None] / C           # row dot products: no squared temporary
    rstd = 1.0 / np.sqrt(var + eps)
    xhat *= rstd
    y = xhat * w
    y += b
    return y, xhat, rstd


def layernorm_backward(dy, xhat, rstd, w):
    """dx = rstd (dxhat - mean_C(dxhat) - xhat mean_C(dxhat xhat)),  dxhat = dy w;  dw = sum_N dy xhat,  db = sum_N dy."""
    C = dy.shape[-1]
    dxhat = dy * w
    dx = xhat * (np.einsum("...c,...c->...", dxhat, xhat)[..., None] / C)  # xhat mean_C(dxhat xhat)
    np.subtract(dxhat, dx, out=dx)
    dx -= dxhat.mean(axis=-1, keepdims=True)
    dx *= rstd
    dy2 = dy.reshape(-1, C)
    dw = np.einsum("nc,nc->c", dy2, xhat.reshape(-1, C))
    db = dy2.sum(axis=0)
    return dx, dw, db


# ------------------------------------------------------------------------------------------------------ gelu
def gelu_forward(x):
    """y = 0.5 x (1 + tanh(k (x + 0.044715 x^3))), k = sqrt(2/pi) (GPT-2's tanh approximation).

    Returns y and tanh(.) which the backward reuses. Computed in place in two buffers: this runs on the
    largest activation of the block, (B, T, 4C), where every temporary costs a pass over memory.
    """
    th = x * x
    th *= 0.044715
    th += 1.0
    th *= x                                 # x + 0.044715 x^3
    th *= GELU_K
    np.tanh(th, out=th)
    y = th + 1.0
    y *= x
    y *= 0.5
    return y, th


def gelu_backward(dy, x, th):
    """dy/dx = 0.5 (1 + th) + 0.5 x (1 - th^2) k (1 + 3 * 0.044715 x^2)."""
    dx = x * x
    dx *= 3 * 0.044715
    dx += 1.0
    dx *= GELU_K
    dx *= x                                 # x k (1 + 3 * 0.044715 x^2)
    sech2 = th * th
    np.subtract(1.0, sech2, out=sech2)      # 1 - th^2
    dx *= sech2
    dx += th
    dx += 1.0
    dx *= 0.5
    dx *= dy
    return dx


# ------------------------------------------------------------------------------------------------- attention
def causal_allowed(T, S, key_mask=None):
    """Which keys each query may see: allowed[b, 0, t, s] = (s <= t + S - T) and key_mask[b, s].

    Queries are the last T of S positions (S > T when a KV cache holds the first S - T). key_mask (B, S) is the
    attention_mask (1 = real token, 0 = padding) -> bool (B or 1, 1, T, S).
    """
    allowed = np.tri(T, S, k=S - T, dtype=bool)[None, None]
    if key_mask is not None:
        allowed = allowed & (key_mask[:, None, None, :] != 0)
    return allowed


def attention_forward(q, k, v, allowed, out=None):
    """y = softmax(q k^T / sqrt(D) masked) v, per head.   q (B,H,T,D), k and v (B,H,S,D), allowed bool (B|1,1,T,S).

    Disallowed scores are replaced by the dtype's most negative number rather than -inf, as Hugging Face GPT-2 does
    for its causal mask (it adds that number for padding instead; docs/gpt.md), so a row with no allowed key (a
    left-padding query) stays finite; no real token ever reads such a row.
    Returns y (B,H,T,D) (written into `out` if given, e.g. a head-split view of a (B,T,C) array) and the attention
    probabilities att (B,H,T,S) for the backward.
    """
    scale = np.asarray(1.0 / np.sqrt(q.shape[-1]), dtype=q.dtype)
    scores = q @ k.swapaxes(-1, -2)                                            # (B, H, T, S)
    scores *= scale
    np.copyto(scores, np.finfo(q.dtype).min, where=~allowed)
    scores -= scores.max(axis=-1, keepdims=True)
    att = np.exp(scores, out=scores)
    att /= att.sum(axis=-1, keepdims=True)
    return np.matmul(att, v, out=out), att


def attention_backward(dy, q, k, v, att, allowed=None):
    """Backward of y = att v, att = softmax(s), s = q k^T / sqrt(D).

    dv = att^T dy;  datt = dy v^T;  ds = att * (datt - sum_S(datt * att))  (softmax Jacobian);
    dq = ds k / sqrt(D);  dk = ds^T q / sqrt(D).  Masked scores have att = 0, hence ds = 0: no gradient leaks.
    A row with no allowed key (a left-padding query) is the exception: its scores are all the same constant, so
    att is uniform yet independent of q and k; pass `allowed` (the forward's mask) to zero ds there.
    """
    scale = np.asarray(1.0 / np.sqrt(q.shape[-1]), dtype=q.dtype)
    dv = att.swapaxes(-1, -2) @ dy
    datt = dy @ v.swapaxes(-1, -2)                                             # (B, H, T, S)
    ds = datt                                                                  # overwritten in place
    ds -= np.einsum("...ts,...ts->...t", datt, att)[..., None]               # sum_S(datt * att) per row
    ds *= att
    if allowed is not None:
        ds *= allowed
    dq = ds @ k
    dq *= scale                                                                # on (T, D), smaller than (T, S)
    dk = ds.swapaxes(-1, -2) @ q
    dk *= scale
    return dq, dk, dv


def split_heads(x, n_head):
    """(B, T, C) -> (B, H, T, D), a view of x: writing into it merges heads back into x's (B, T, C) layout."""
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)


# ------------------------------------------------------------------------------------------ cross-entropy
def cross_entropy_forward(logits, targets, ignore_index=-100):
    """L = mean over valid positions of (logsumexp(logits) - logits[target]); valid = target != ignore_index.

    logits (N, V), targets int (N,) -> L scalar, and the softmax probabilities (N, V) kept for the backward.
    """
    valid = targets != ignore_index
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise ValueError("cross_entropy: every target equals ignore_index, so the mean is undefined")
    rows = np.nonzero(valid)[0]
    probs = logits - logits.max(axis=-1, keepdims=True)       # shifted logits, turned into probabilities in place
    target_logits = probs[rows, targets[rows]]
    np.exp(probs, out=probs)
    sumexp = probs.sum(axis=-1, keepdims=True)
    nll = np.log(sumexp[rows, 0]) - target_logits
    probs /= sumexp
    return nll.sum() / n_valid, probs


def cross_entropy_backward(dloss, probs, targets, ignore_index=-100):
    """dlogits = dL (softmax - onehot(target)) / n_valid on valid rows, 0 on ignored rows (fused log-softmax backward).

    Written over `probs` (N, V), which nothing needs afterwards: the largest array of the step is not allocated twice.
    """
    valid = targets != ignore_index
    scale = np.asarray(dloss / valid.sum(), dtype=probs.dtype)
    dlogits = probs
    dlogits *= scale
    dlogits[~valid] = 0
    rows = np.nonzero(valid)[0]
    dlogits[rows, targets[rows]] -= scale
    return dlogits
