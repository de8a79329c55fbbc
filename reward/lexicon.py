"""A judge of another kind: VADER (Hutto & Gilbert 2014), a human-built sentiment lexicon with rules, from the
PyPI package vaderSentiment==3.3.2. The lexicon ships inside the package, so nothing is downloaded at run time.

    compound(text) = s / sqrt(s^2 + 15),  s = the sum of the rated words' valences after the rules
                     (negation, boosters such as "very", "but", capitals, "!"), in [-1, 1]
    verdict        = positive if compound >= 0.05, negative if compound <= -0.05, neutral in between

The formula is `normalize(score, alpha=15)` in vaderSentiment/vaderSentiment.py:105 of the 3.3.2 wheel,
applied at line 485 and rounded to 4 decimals at line 509. The thresholds are the authors' typical values,
from the project README (github.com/cjhutto/vaderSentiment, README.rst lines 243-245 at commit 0150f59, the
3.3.2 release of 2020-05-22).

What such a judge cannot see, measured with vaderSentiment 3.3.2 (tests/reward/test_lexicon.py checks each number):
- Words it does not list. Its 7,506 entries are attuned to social media (its package summary says so), and
  many critics' words are missing ("letdown", "incoherent", "pretentious"). The rotten snippet
  "A well-crafted letdown." from the corpus's test split scores 0.0, a neutral verdict.
- Invented words. A word it has never seen counts as 0. The pretrained GPT's answer to a held-out prompt of the
  default run, "Even if you've neveraptits on funnyks into such coming-lin 'ticks'.", scores 0.0. A reader
  sees "funny" in "funnyks"; with "funny" written out the text scores 0.4404.
- Sarcasm. It adds up the listed words' valences as they stand. The rotten snippet "The movie is about as
  humorous as watching your favorite pet get buried alive." scores 0.802 from "humorous", "favorite" and "alive".
So a policy can please it by repeating a few listed words, as it can please the n-gram reward. It is a check of
another kind, not a gold.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from minigpt_np.checkpoint import load_npz, save_npz

from reward.gpt_reward import classification_metrics

FORMAT = "reward VADER"
VERSION = "3.3.2"             # the pinned vaderSentiment release whose lexicon and rules are meant
POSITIVE_THRESHOLD = 0.05     # compound >= this: positive (README.rst:243)
NEGATIVE_THRESHOLD = -0.05    # compound <= this: negative (README.rst:245); neutral strictly between


class VaderJudge:
    """score(texts) -> VADER's compound in [-1, 1]; verdicts, shares and metrics at the authors' thresholds."""

    def __init__(self):
        try:
            import vaderSentiment
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError as e:
            raise ImportError(f"the VADER judge needs the package vaderSentiment: pip install "
                              f"vaderSentiment=={VERSION} (a core dependency of minichatgpt)") from e
        found = _installed_version()
        if found != VERSION:
            raise RuntimeError(f"the VADER judge is pinned to vaderSentiment=={VERSION} but {found} is installed "
                               f"({vaderSentiment.__file__}); install the pinned version: "
                               f"pip install vaderSentiment=={VERSION}")
        self.analyzer = SentimentIntensityAnalyzer()

    def score(self, texts: Sequence[str], forward_batch_size: int = 256) -> np.ndarray:
        """compound(text_i).   texts (N,) -> (N,) float64. forward_batch_size is accepted for the scorer interface
        (VADER scores one text at a time)."""
        if isinstance(texts, str):
            raise TypeError("score expects a list of strings, got one string; wrap it in a list: [text]")
        return np.array([self.analyzer.polarity_scores(t)["compound"] for t in texts], dtype=np.float64)

    def verdicts(self, texts: Sequence[str]) -> np.ndarray:
        """+1 positive, -1 negative, 0 neutral per text, at the authors' thresholds.   (N,) int."""
        return verdicts(self.score(texts))

    def classes(self, compound) -> dict:
        """{"positive", "negative", "neutral"}: boolean (N,) arrays of each verdict, from scores already computed."""
        v = verdicts(compound)
        return {"positive": v == 1, "negative": v == -1, "neutral": v == 0}

    def metrics(self, texts: Sequence[str], labels: Sequence[int]) -> dict:
        """classification_metrics at threshold 0 (accuracy, log-loss, AUC), plus "verdict_accuracy": the share
        whose verdict is the label's class (a neutral verdict is never right), and the three shares."""
        compound = self.score(texts)
        y = np.asarray(labels)
        out = classification_metrics(compound, y)
        out["verdict_accuracy"] = float(np.mean(verdicts(compound) == np.where(y == 1, 1, -1)))
        return {**out, **shares(compound)}

    def save(self, path) -> Path:
        """Record the judge in a run folder: an .npz holding no arrays, only its format and pinned version."""
        save_npz(path, {}, {"format": FORMAT, "version": VERSION,
                            "thresholds": [NEGATIVE_THRESHOLD, POSITIVE_THRESHOLD]})
        return Path(path)


def verdicts(compound) -> np.ndarray:
    """sign at the authors' thresholds: +1 if compound >= 0.05, -1 if <= -0.05, else 0.   (N,) -> (N,) int."""
    c = np.asarray(compound, dtype=np.float64)
    return np.where(c >= POSITIVE_THRESHOLD, 1, np.where(c <= NEGATIVE_THRESHOLD, -1, 0))


def shares(compound) -> dict:
    """{"positive", "negative", "neutral"}: the shares of texts with each verdict (they sum to 1)."""
    v = verdicts(compound)
    if v.size == 0:
        raise ValueError("shares need at least one text")
    return {"positive": float(np.mean(v == 1)), "negative": float(np.mean(v == -1)), "neutral": float(np.mean(v == 0))}


def load_vader(path) -> VaderJudge:
    """The judge recorded by VaderJudge.save; refuses a file of another kind or another pinned version."""
    _, meta = load_npz(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a VADER judge (its format is {meta.get('format')!r}, expected {FORMAT!r})")
    if meta.get("version") != VERSION:
        raise ValueError(f"{path} records vaderSentiment {meta.get('version')}, this code pins {VERSION}: re-create it")
    return VaderJudge()


def _installed_version():
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("vaderSentiment")
    except PackageNotFoundError:
        return "an unknown version"


__all__ = ["NEGATIVE_THRESHOLD", "POSITIVE_THRESHOLD", "VaderJudge", "load_vader", "shares", "verdicts"]
