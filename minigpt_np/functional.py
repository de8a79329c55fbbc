"""Tensor-level ops: each runs a forward from `ops` and records the matching backward in the graph.

Every function returns a `Tensor`; its backward closure returns one gradient per parent, in order. The
elementary arithmetic (add, mul, sum, reshape) lives with the Tensor in `tensor` and is re-exported here.
`kernels.use("fast")` points `ops` here at `minigpt_np.fast.ops`, and replaces the two ops whose fast versions
write into arrays they own (`causal_self_attention`, `lm_head_cross_entropy`) with `minigpt_np.fast.functional`'s.
"""
import numpy as np

from . import ops
from .tensor import add, make, mul, reshape, sum  # noqa: F401 - the elementary ops, re-exported beside the rest


def embedding(weight, idx):
    """out = W[idx].   W (V, C), idx int (B, T) -> (B, T, C);  dW scatter-adds dout into the rows idx."""
    out = ops.embedding_forward(weight.data, idx)
    return make(out, (weight,), lambda dout: (ops.embedding_backward(dout, idx, weight.shape[0]),))


def linear(x, w, b=None):
    """y = x W + b.   x (..., C), W (C, OC), b (OC,) -> (..., OC)."""
    y = ops.linear_forward(x.data, w.data, None if b is None else b.data)

    def backward(dy):
        dx, dw, db = ops.linear_backward(dy, x.data, w.data, need_dx=x.requires_grad)
        return dx, dw, db
    return make(y, (x, w, b), backward)


def lm_head(x, wte):
    """logits = x E^T, the output layer tied to the token embedding E.   x (B, T, C), E (V, C) -> (B, T, V)."""
    logits = ops.lm_head_forward(x.data, wte.data)
    return make(logits, (x, wte), lambda dlogits: ops.lm_head_backward(dlogits, x.data, wte.data))


def layer_norm(x, w, b, eps=ops.LN_EPS):
    """y = (x - mean) / sqrt(var + eps) * w + b over the last axis.   x (..., C) -> (..., C)."""
    y, xhat, rstd = ops.layernorm_forward(x.data, w.data, b.data, eps)
    return make(y, (x, w, b), lambda dy: ops.layernorm_backward(dy, xhat, rstd, w.data))


def gelu(x):
    """y = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    y, th = ops.gelu_forward(x.data)
    return make(y, (x,), lambda dy: (ops.gelu_backward(dy, x.data, th),))


def causal_self_attention(qkv, n_head, key_mask=None, cache=None):
    """Multi-head causal attention from the fused projection qkv = x W_attn + b_attn.

    qkv (B, T, 3C) -> y (B, T, C), heads merged (before the output projection c_proj).
    key_mask (B, S): 1 for real tokens, 0 for padding, over all S key positions (S = T without a cache).
    cache: a `generate.LayerCache` holding earlier keys and values; the new ones are appended to it (no graph).
    """
    T = qkv.shape[1]
    q, k, v = (ops.split_heads(part, n_head) for part in np.split(qkv.data, 3, axis=-1))   # (B, H, T, D) each
    if cache is not None:
        k, v = cache.append(k, v)                                                      # (B, H, S, D)
    allowed = ops.causal_allowed(T, k.shape[2], key_mask)
    y, att = ops.attention_forward(q, k, v, allowed)

    def backward(dy):
        # only a padding mask can leave a query row with no allowed key (see ops.attention_backward)
        dq, dk, dv = ops.attention_backward(ops.split_heads(dy, n_head), q, k, v, att,
                                            None if key_mask is None else allowed)
        return (np.concatenate([ops.merge_heads(d) for d in (dq, dk, dv)], axis=-1),)   # (B, T, 3C)
    return make(ops.merge_heads(y), (qkv,), backward)


def dropout(x, p, rng):
    """y = x * m / (1 - p), m ~ Bernoulli(1 - p) drawn from `rng` (seeded); identity when p == 0."""
    if p == 0.0:
        return x
    keep = (rng.random(x.shape) >= p).astype(x.dtype) / np.asarray(1.0 - p, dtype=x.dtype)
    return make(x.data * keep, (x,), lambda dy: (dy * keep,))


def cross_entropy(logits, targets, ignore_index=-100):
    """L = mean over positions with target != ignore_index of -log softmax(logits)[target].

    logits (..., V) Tensor, targets int (...) -> scalar Tensor. The backward is the fused softmax - onehot.
    """
    V = logits.shape[-1]
    t = _flat_targets(targets, logits.shape, "cross_entropy", ignore_index)
    loss, probs = ops.cross_entropy_forward(logits.data.reshape(-1, V), t, ignore_index)
    dlogits = _once("cross_entropy", lambda dloss: ops.cross_entropy_backward(dloss, probs, t, ignore_index))
    return make(np.asarray(loss, dtype=logits.dtype), (logits,), lambda dloss: (dlogits(dloss).reshape(logits.shape),))


def lm_head_cross_entropy(x, wte, targets, ignore_index=-100):
    """L = cross_entropy(x E^T, targets): the tied lm_head and the loss, what pretraining and its evaluation call.

    x (B, T, C) Tensor, E (V, C) Tensor, targets int (B, T) -> scalar Tensor. The fast kernels fuse the two ops, so
    that the (B, T, V) logits exist once.
    """
    return cross_entropy(lm_head(x, wte), targets, ignore_index)


def _flat_targets(targets, logits_shape, name, ignore_index):
    """targets (...) checked against logits (..., V): ids in [0, V) or ignore_index -> flat int array (N,)."""
    targets = np.asarray(targets)
    V = logits_shape[-1]
    if targets.shape != logits_shape[:-1]:
        raise ValueError(f"{name}: targets shape {targets.shape} must equal logits shape without the "
                         f"vocabulary axis {logits_shape[:-1]}")
    t = targets.reshape(-1)
    bad = (t != ignore_index) & ((t < 0) | (t >= V))
    if bad.any():
        raise ValueError(f"{name}: target ids must lie in [0, {V}) or equal {ignore_index}; "
                         f"found {t[bad][:5].tolist()}")
    return t


def _once(name, backward):
    """backward, allowed to run once, as in PyTorch: the fast kernels write dlogits over the probabilities the
    forward kept, and both kernels refuse the same things."""
    ran = False

    def run(dloss):
        nonlocal ran
        if ran:
            raise RuntimeError(f"{name}: backward ran twice through the same graph; its probabilities were "
                               "consumed by the first one. Run the forward pass again.")
        ran = True
        return backward(dloss)
    return run
