"""Yardsticks for a language model's loss: the unigram entropy baseline and per-character units.

A model that ignores context can do no better than predicting each token with its corpus frequency; its
loss is the unigram entropy. A trained model must end clearly below it. Losses per token depend on the
tokenizer (a larger vocabulary packs more characters into each token), so tokenizers are compared in bits
per character: bits/char = (nats/token) / ln 2 * (tokens/char).
"""
from __future__ import annotations

import math

import numpy as np


def unigram_entropy(ids, vocab_size=None):
    """H = -sum_v p_v ln p_v with p_v = count(v) / N, in nats per token.   ids int (N,) -> float.

    Tokens that never occur contribute nothing (0 ln 0 = 0). vocab_size, if given, checks the ids' range.
    """
    ids = np.asarray(ids).reshape(-1)
    if ids.size == 0:
        raise ValueError("unigram_entropy needs at least one token")
    if ids.min() < 0 or (vocab_size is not None and ids.max() >= vocab_size):
        raise ValueError(f"token ids must lie in [0, {vocab_size}); got min {ids.min()}, max {ids.max()}")
    counts = np.bincount(ids, minlength=vocab_size or 0)
    p = counts[counts > 0] / ids.size
    return float(-(p * np.log(p)).sum())


def bits_per_char(nats_per_token, chars_per_token):
    """bits/char = nats/token / ln 2 / (chars/token)."""
    if not chars_per_token > 0:
        raise ValueError(f"chars_per_token must be > 0, got {chars_per_token}")
    return nats_per_token / math.log(2.0) / chars_per_token
