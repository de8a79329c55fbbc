"""The two Tensor ops whose fast versions write into arrays they own, in place of `minigpt_np.functional`'s.

The other Tensor ops of `functional` need no version of their own: `kernels.use("fast")` points them at
`fast.ops`. These two also choose where their results go, so that no large array is allocated twice:
- attention writes each head's output straight into its slice of the (B, T, C) result, and each head's gradient
  into its slice of dqkv (B, T, 3C);
- the tied lm_head and the cross-entropy are one op: the softmax is written over the logits it owns, and the
  backward writes dlogits over the softmax, so the step's largest array, (N, V), exists once.
The same numbers as the reference's, up to rounding (tests/engine/test_kernels.py).
"""
import numpy as np

from ..functional import _flat_targets, _once
from ..tensor import make
from . import ops


def causal_self_attention(qkv, n_head, key_mask=None, cache=None):
    """Multi-head causal attention from the fused projection qkv = x W_attn + b_attn, as
    `functional.causal_self_attention`.   qkv (B, T, 3C) -> y (B, T, C), heads merged.

    key_mask (B, S): 1 for real tokens, 0 for padding, over all S key positions (S = T without a cache).
    cache: a `generate.LayerCache` holding earlier keys and values; the new ones are appended to it (no graph).
    """
    B, T, C3 = qkv.shape
    C = C3 // 3
    q, k, v = (ops.split_heads(part, n_head) for part in np.split(qkv.data, 3, axis=-1))   # (B, H, T, D) each
    if cache is not None:
        k, v = cache.append(k, v)                                                      # (B, H, S, D)
    allowed = ops.causal_allowed(T, k.shape[2], key_mask)
    y = np.empty((B, T, C), dtype=q.dtype)                              # heads merged: each head writes its slice
    _, att = ops.attention_forward(q, k, v, allowed, out=ops.split_heads(y, n_head))

    def backward(dy):
        # only a padding mask can leave a query row with no allowed key (see ops.attention_backward)
        dq, dk, dv = ops.attention_backward(ops.split_heads(dy, n_head), q, k, v, att,
                                            None if key_mask is None else allowed)
        dqkv = np.empty(qkv.shape, dtype=dq.dtype)                                 # (B, T, 3C) = [dq | dk | dv]
        for i, d in enumerate((dq, dk, dv)):
            ops.split_heads(dqkv[..., i * C:(i + 1) * C], n_head)[...] = d          # merge heads straight into place
        return (dqkv,)
    return make(y, (qkv,), backward)


def lm_head_cross_entropy(x, wte, targets, ignore_index=-100):
    """L = cross_entropy(x E^T, targets): the tied lm_head and the loss as one op, for training and evaluation.

    The same numbers as cross_entropy(lm_head(x, wte), targets), without a logits Tensor: the probabilities are
    written over the logits, and the backward writes dlogits over them. x (B, T, C) Tensor, E (V, C) Tensor,
    targets int (B, T) -> scalar Tensor.
    """
    V = wte.shape[0]
    t = _flat_targets(targets, x.shape[:-1] + (V,), "lm_head_cross_entropy", ignore_index)
    logits = ops.lm_head_forward(x.data, wte.data).reshape(-1, V)                    # (N, V), overwritten below
    loss, probs = ops.cross_entropy_forward(logits, t, ignore_index, out=logits)
    dlogits = _once("lm_head_cross_entropy", lambda dloss: ops.cross_entropy_backward(dloss, probs, t, ignore_index))
    return make(np.asarray(loss, dtype=x.dtype), (x, wte),
                lambda dloss: ops.lm_head_backward(dlogits(dloss), x.data, wte.data))
