"""Autoregressive sampling with a KV cache.

Without a cache, step n re-runs the whole sequence: O(n) positions of compute per new token. With one, each block
keeps the keys and values of every position it has seen, so a new token costs one position: its query attends to
the cached keys. Its logits equal those of a full forward pass over the whole sequence (tested).
"""
import numpy as np

from .tensor import no_grad


class LayerCache:
    """Keys and values of one block for every position seen so far, preallocated to block_size.   k, v (B, H, S, D)."""

    def __init__(self, batch, n_head, capacity, head_dim, dtype):
        self.k = np.empty((batch, n_head, capacity, head_dim), dtype)
        self.v = np.empty((batch, n_head, capacity, head_dim), dtype)
        self.length = 0

    def append(self, k, v):
        """Store the new positions' k, v (B, H, T, D); return views of all S = length keys and values."""
        end = self.length + k.shape[2]
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class KVCache:
    """One `LayerCache` per block; `length` is the number of positions already processed."""

    def __init__(self, cfg, batch, dtype):
        D = cfg.n_embd // cfg.n_head
        self.layers = [LayerCache(batch, cfg.n_head, cfg.block_size, D, dtype) for _ in range(cfg.n_layer)]

    @property
    def length(self):
        return self.layers[0].length


def sample_next(logits, rng, temperature=1.0, top_k=None, top_p=None):
    """Draw one token per row from softmax(logits / temperature), restricted to the top_k most likely tokens and
    to the smallest set whose probability reaches top_p; temperature 0 is greedy (argmax), top_k None or 0 and
    top_p None or 1 keep every token.   logits (B, V) -> (B,)."""
    if temperature == 0:
        return logits.argmax(axis=-1)
    z = logits.astype(np.float64) / temperature
    if top_k and top_k < z.shape[-1]:
        kth = np.partition(z, -top_k, axis=-1)[:, -top_k][:, None]
        z = np.where(z < kth, -np.inf, z)
    probs = np.exp(z - z.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs, axis=-1, kind="stable")
        sorted_probs = np.take_along_axis(probs, order, axis=-1)
        # keep a token if the mass strictly before it is < top_p: the most likely token is always kept
        keep_sorted = (np.cumsum(sorted_probs, axis=-1) - sorted_probs) < top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(axis=-1, keepdims=True)
    u = rng.random((probs.shape[0], 1))
    # inverse-CDF sampling; the clip guards against u exceeding a cumulative sum that rounds below 1
    return np.minimum((np.cumsum(probs, axis=-1) < u).sum(axis=-1), probs.shape[-1] - 1)


def _check_arguments(model, idx, max_new_tokens, temperature, top_k, top_p, attention_mask):
    if idx.ndim != 2 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"generate: idx must be integer token ids of shape (batch, time), got {idx.dtype} {idx.shape}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not (np.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"generate: temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0):
        raise ValueError(f"generate: top_k must be None or an integer >= 0 (0 = no top-k), got {top_k!r}")
    if top_p is not None and not (0 < top_p <= 1):
        raise ValueError(f"generate: top_p must lie in (0, 1] (1 = no nucleus cut), got {top_p}")
    total = idx.shape[1] + max_new_tokens
    if total > model.cfg.block_size:
        raise ValueError(f"generate: prompt length {idx.shape[1]} + max_new_tokens {max_new_tokens} = {total} exceeds "
                         f"block_size {model.cfg.block_size}; shorten the prompt or ask for fewer tokens")
    if attention_mask is not None and np.shape(attention_mask) != idx.shape:
        raise ValueError(f"generate: attention_mask shape {np.shape(attention_mask)} must equal idx shape {idx.shape}")


def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, attention_mask=None,
             eos_token_id=None, seed=None, pad_token_id=None, rng=None):
    """Extend each row of idx (B, T) by max_new_tokens sampled tokens -> (B, T + max_new_tokens) ints.

    attention_mask (B, T) marks left padding (0) of a batch of prompts of different lengths. A row that has
    emitted eos_token_id afterwards emits only pad_token_id (default: eos). Sampling draws from `rng`, or from
    a new generator seeded with `seed`.
    """
    idx = np.asarray(idx)
    _check_arguments(model, idx, max_new_tokens, temperature, top_k, top_p, attention_mask)
    B, T = idx.shape
    total = T + max_new_tokens
    rng = np.random.default_rng(seed) if rng is None else rng
    pad = eos_token_id if pad_token_id is None else pad_token_id
    mask = np.ones((B, total), dtype=np.int64)
    if attention_mask is not None:
        mask[:, :T] = attention_mask
    out = np.empty((B, total), dtype=np.int64)
    out[:, :T] = idx
    finished = np.zeros(B, dtype=bool)
    was_training, model.training = model.training, False
    try:
        with no_grad():
            cache = KVCache(model.cfg, B, model.dtype)
            logits = model(idx, attention_mask=mask[:, :T], cache=cache).data[:, -1]    # (B, V)
            for t in range(T, total):
                token = sample_next(logits, rng, temperature, top_k, top_p)
                if eos_token_id is not None:
                    token = np.where(finished, pad, token)
                    finished |= token == eos_token_id
                out[:, t] = token
                if t + 1 < total:
                    logits = model(out[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache).data[:, -1]
    finally:
        model.training = was_training
    return out
