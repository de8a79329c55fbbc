"""Language-model data: texts -> one token stream -> (B, T+1) windows.

Every text (a review or plot snippet) is encoded and followed by `<|endoftext|>`, and the results are
concatenated into one int32 stream, as GPT-2's training data was. A training batch is B windows of T+1
consecutive tokens starting at uniformly random offsets drawn from a seeded generator: inputs are
window[:, :-1], targets window[:, 1:]. Windows may cross a document boundary; the model learns that
after `<|endoftext|>` a new, unrelated snippet begins. Validation uses a fixed set of non-overlapping
windows, so its loss is comparable between steps and between runs.
"""
from __future__ import annotations

import os

import numpy as np

from .tokenizer import load_tokenizer, train_tokenizer


def build_tokenizer(train_texts, vocab_size, path=None, min_frequency=2):
    """Train a byte-level BPE on train_texts (strings) and, when path is given, save it there as tokenizer.json.

    Only training text goes in, so validation text is tokenized with merges it did not shape. Returns the
    Tokenizer; deterministic for the same texts and arguments.
    """
    texts = list(train_texts)
    if not texts:
        raise ValueError("build_tokenizer needs at least one training text")
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size, min_frequency=min_frequency)
    if path is not None:
        folder = os.path.dirname(os.path.abspath(os.fspath(path)))
        os.makedirs(folder, exist_ok=True)
        tokenizer.save(path)
    return tokenizer


def load_or_build_tokenizer(path, train_texts, vocab_size=None, default_vocab_size=4096):
    """Load tokenizer.json at path if it exists, else train one on train_texts and save it there.

    vocab_size None accepts whatever the saved tokenizer has (or default_vocab_size for a new one); a number that
    disagrees with an existing file is an error, because the pretrained model's embedding depends on it.
    """
    if os.path.exists(path):
        tokenizer = load_tokenizer(path)
        if vocab_size is not None and tokenizer.vocab_size != vocab_size:
            raise ValueError(
                f"{path} has a vocabulary of {tokenizer.vocab_size} tokens but vocab_size={vocab_size} was asked "
                "for. Use a new output folder, delete the tokenizer (and the checkpoint trained with it), or drop "
                "the vocab_size option."
            )
        return tokenizer
    return build_tokenizer(train_texts, default_vocab_size if vocab_size is None else vocab_size, path)


def encode_corpus(tokenizer, texts):
    """Concatenate encode(text) + [eos] over texts -> int32 stream (N,), N = sum of lengths + len(texts)."""
    if isinstance(texts, str):
        raise ValueError("encode_corpus expects a list of texts, got a single str (wrap it in a list)")
    texts = list(texts)
    if not texts:
        raise ValueError("encode_corpus got no texts")
    eos = tokenizer.eos_token_id
    pieces = []
    for ids in tokenizer.encode_batch(texts):
        pieces.append(np.asarray(ids, dtype=np.int32))
        pieces.append(np.array([eos], dtype=np.int32))
    return np.concatenate(pieces)


def count_chars(texts):
    """Characters the stream stands for: each text's length plus one for its `<|endoftext|>` separator
    (counted as one character, like the newline that ends a line of text). Used to convert per-token losses
    into bits per character, which compares tokenizers with different vocabularies fairly."""
    return sum(len(t) + 1 for t in texts)


def sample_windows(ids, block_size, batch_size, rng):
    """B windows of T+1 consecutive tokens at offsets drawn uniformly from rng.   ids (N,) -> (B, T+1) int64.

    Offsets s ~ U{0, ..., N - T - 1}; inputs are windows[:, :-1] and targets windows[:, 1:]. One rng.integers
    call per batch, so the batch sequence is a pure function of the generator's state.
    """
    ids = np.asarray(ids)
    n = ids.shape[0] - block_size
    if n < 1:
        raise ValueError(f"the token stream has {ids.shape[0]} tokens, fewer than block_size + 1 = "
                         f"{block_size + 1}; give more text or a smaller block_size")
    starts = rng.integers(0, n, size=batch_size)
    return ids[starts[:, None] + np.arange(block_size + 1)].astype(np.int64)


def validation_windows(ids, block_size, max_windows=None):
    """Fixed non-overlapping windows of T+1 tokens, stride T, so every token after the first is a target once.

    ids (N,) -> (W, T+1) int64 with W = (N - 1) // T, or max_windows of them spread evenly over the stream.
    """
    ids = np.asarray(ids)
    n_windows = (ids.shape[0] - 1) // block_size
    if n_windows < 1:
        raise ValueError(f"the validation stream has {ids.shape[0]} tokens, fewer than block_size + 1 = "
                         f"{block_size + 1}; give more validation text or a smaller block_size")
    starts = np.arange(n_windows) * block_size
    if max_windows is not None and max_windows < n_windows:
        if max_windows < 1:
            raise ValueError(f"max_windows must be >= 1, got {max_windows}")
        starts = starts[np.linspace(0, n_windows - 1, max_windows).round().astype(np.int64)]
    return ids[starts[:, None] + np.arange(block_size + 1)].astype(np.int64)
