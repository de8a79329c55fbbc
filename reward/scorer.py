"""The reward model: text -> log-odds that the text is a positive review; saved as reward.npz.

score(texts) returns the logit z = x(text) . w + b, not the probability sigmoid(z): TRL's sentiment example
used the positive-class logit of its classifier as the PPO reward, and a logit does not saturate at 1 the
way a probability does, so a policy keeps being paid for clearer positivity.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from minigpt_np.checkpoint import load_npz, save_npz

from reward.features import FeatureConfig, Featurizer
from reward.logreg import log_loss

FORMAT = "reward logistic regression"   # the "format" entry of a reward.npz file's metadata


class Scorer:
    """A fitted featurizer (text -> x, (D,)) and logistic-regression weights w (D,), bias b."""

    def __init__(self, featurizer: Featurizer, w: np.ndarray, b: float, info: Optional[dict] = None):
        self.featurizer = featurizer
        self.w = np.asarray(w, dtype=np.float64)
        self.b = float(b)
        self.info = dict(info or {})  # how it was trained (l2, features, validation metrics); saved with it
        if self.w.shape != (len(featurizer),):
            raise ValueError(f"weights have shape {self.w.shape}, the featurizer makes {len(featurizer)} features")

    def score(self, texts: Sequence[str], forward_batch_size: int = 256) -> np.ndarray:
        """z_i = x(text_i) . w + b, the log-odds of positive.  texts (N,) -> z (N,) float64.

        Texts are featurised in chunks of ``forward_batch_size`` to bound memory; the result does not
        depend on the chunk size. Text with no known n-gram (e.g. "") scores the bias b.
        """
        if isinstance(texts, str):
            raise TypeError("score expects a list of strings, got one string; wrap it in a list: [text]")
        if forward_batch_size < 1:
            raise ValueError(f"forward_batch_size must be >= 1, got {forward_batch_size}")
        texts = list(texts)
        logits = np.empty(len(texts), dtype=np.float64)
        for start in range(0, len(texts), forward_batch_size):
            chunk = texts[start:start + forward_batch_size]
            logits[start:start + len(chunk)] = self.featurizer.transform(chunk).matvec(self.w) + self.b
        return logits

    def metrics(self, texts: Sequence[str], labels: Sequence[int]) -> dict:
        """{"accuracy": mean 1[(z > 0) = y], "log_loss": mean binary cross-entropy (nats), "n": N}."""
        y = np.asarray(labels, dtype=np.float64)
        if y.shape != (len(texts),):
            raise ValueError(f"{len(texts)} texts but labels have shape {y.shape}")
        if len(texts) == 0:
            raise ValueError("evaluate needs at least one text")
        logits = self.score(texts)
        return {"accuracy": float(np.mean((logits > 0) == (y == 1))), "log_loss": log_loss(logits, y),
                "n": int(len(texts))}

    def feature_weights(self) -> np.ndarray:
        """w_j * scale_j, (D,): the logit change from feature j alone before row normalisation
        (for NB features: its log-count ratio r_j times the regression weight)."""
        return self.w * self.featurizer.column_scale()

    def top_features(self, k: int = 10, block: Optional[str] = None) -> tuple:
        """The k most positive and k most negative features by feature_weights(): two lists of (name, weight).

        block="words" or "chars" restricts the ranking to one feature block (word n-grams read best).
        """
        weights = self.feature_weights()
        names = self.featurizer.feature_names()
        if block is not None:
            if block not in self.featurizer.config.blocks:
                raise ValueError(f"block must be one of {self.featurizer.config.blocks}, got {block!r}")
            blocks = np.concatenate([np.full(len(self.featurizer.vocabularies[b]), b)
                                     for b in self.featurizer.config.blocks])
            weights = np.where(blocks == block, weights, 0.0)
        order = np.argsort(weights, kind="stable")
        positive = [(names[j], float(weights[j])) for j in order[::-1][:k] if weights[j] > 0]
        negative = [(names[j], float(weights[j])) for j in order[:k] if weights[j] < 0]
        return positive, negative

    def save(self, path) -> Path:
        """Write reward.npz (`minigpt_np.checkpoint.save_npz`): the weights and, per feature block, the
        vocabulary (a unicode array) and column scales; the feature config and training info as metadata."""
        arrays = {"w": self.w, "b": np.array(self.b)}
        for block in self.featurizer.config.blocks:
            arrays[f"{block}_vocabulary"] = self.featurizer.vocabularies[block]
            arrays[f"{block}_scale"] = self.featurizer.column_scales[block]
        meta = {"format": FORMAT, "feature_config": dataclasses.asdict(self.featurizer.config), "info": self.info}
        save_npz(path, arrays, meta)
        return Path(path)


def load_scorer(path) -> Scorer:
    """Read a reward.npz written by Scorer.save. Missing -> FileNotFoundError, unreadable or not a reward
    model -> ValueError saying so."""
    arrays, meta = load_npz(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a reward model (its format is {meta.get('format')!r}, expected "
                         f"{FORMAT!r}); pass a reward.npz written by this project")
    try:
        config = FeatureConfig(**meta["feature_config"])
        vocabularies = {b: arrays[f"{b}_vocabulary"] for b in config.blocks}
        scales = {b: arrays[f"{b}_scale"] for b in config.blocks}
        return Scorer(Featurizer(config, vocabularies, scales), arrays["w"], float(arrays["b"]), meta["info"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: reward.npz is incomplete or inconsistent ({type(e).__name__}: {e}); "
                         "re-create it") from e


__all__ = ["Scorer", "load_scorer"]
