"""Byte-level BPE tokenizer (GPT-2 style) trained and run by Hugging Face `tokenizers`, in a thin wrapper.

Text is split by GPT-2's pre-tokenization regex, each piece is mapped byte by byte to 256 printable symbols
(so every string, emoji included, is representable), and BPE merges learned on the training texts join
frequent symbol pairs. `<|endoftext|>` is the one special token: it separates documents and is the
eos_token_id that generation stops at.
"""
from __future__ import annotations

import os

from .checkpoint import atomic_write

EOS = "<|endoftext|>"


class Tokenizer:
    """encode(str) -> list[int], decode(list[int]) -> str, eos_token_id, vocab_size; wraps a tokenizers.Tokenizer."""

    def __init__(self, hf_tokenizer):
        eos_id = hf_tokenizer.token_to_id(EOS)
        if eos_id is None:
            raise ValueError(f"tokenizer has no {EOS!r} token; train one with train_tokenizer(...)")
        self.hf = hf_tokenizer
        self.eos_token_id = int(eos_id)
        self.vocab_size = int(hf_tokenizer.get_vocab_size(with_added_tokens=True))

    def encode(self, text):
        """str -> token ids. `<|endoftext|>` written in the text becomes eos_token_id."""
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        return self.hf.encode(text).ids

    def encode_batch(self, texts):
        """list[str] -> list[list[int]], same ids as encode on each text (runs in parallel)."""
        texts = list(texts)
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise ValueError(f"encode_batch expects strings; items {bad[:5]} are not")
        return [enc.ids for enc in self.hf.encode_batch(texts)]

    def decode(self, ids):
        """token ids -> str. Nothing is skipped: eos decodes to "<|endoftext|>" (strip it yourself if unwanted).
        Bytes that do not form valid UTF-8 (a sequence cut mid-character) become U+FFFD."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")
        return self.hf.decode(ids, skip_special_tokens=False)

    def __len__(self):
        return self.vocab_size

    def save(self, path):
        """Write tokenizer.json atomically (temporary file in the same folder, then rename).
        A directory path gets <path>/tokenizer.json."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        with atomic_write(path, "w", encoding="utf-8") as f:
            f.write(self.hf.to_str())


def train_tokenizer(texts, vocab_size=2048, min_frequency=2):
    """Train a byte-level BPE on an iterable of strings; deterministic for the same texts and arguments.

    vocab_size counts the 256 byte symbols, `<|endoftext|>` and the learned merges. It is an upper bound:
    a small corpus may run out of pairs seen min_frequency times first (check .vocab_size).
    """
    if vocab_size < 257:
        raise ValueError(f"vocab_size must be at least 257 (256 bytes + {EOS}), got {vocab_size}")
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
    if isinstance(texts, str):
        raise ValueError("train_tokenizer expects an iterable of strings, got a single str")
    from tokenizers import Tokenizer as HFTokenizer    # imported here: the rest of minigpt_np needs only NumPy
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # as GPT-2: "Hello" and " Hello" differ
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS],  # id 0
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes even if unseen: any text round-trips
        show_progress=False,
    )
    hf.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(hf)


def load_tokenizer(path):
    """Load a tokenizer.json written by Tokenizer.save (a directory path means <path>/tokenizer.json)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no tokenizer file at {path}. It is written by Tokenizer.save after train_tokenizer(...) "
            "(the pretraining stage does this); check the path or train a tokenizer first."
        )
    from tokenizers import Tokenizer as HFTokenizer
    try:
        with open(path, encoding="utf-8") as f:
            hf = HFTokenizer.from_str(f.read())
    except Exception as e:
        raise ValueError(
            f"{path} is not a valid tokenizer.json ({type(e).__name__}: {e}); delete it and train it again"
        ) from e
    return Tokenizer(hf)
