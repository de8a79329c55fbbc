"""The VADER judge: known verdicts, the authors' thresholds at their edges, the shares, its blind spots as the
module docstring states them (measured), and its file."""
import numpy as np
import pytest

from minigpt_np.checkpoint import save_npz
from reward.lexicon import NEGATIVE_THRESHOLD, POSITIVE_THRESHOLD, VaderJudge, load_vader, shares, verdicts


@pytest.fixture(scope="module")
def judge():
    return VaderJudge()


def test_known_sentences_get_their_verdicts(judge):
    texts = ["Brilliant, charming and great fun.", "A dull, boring and tedious mess.", "The movie is about a man.",
             "not bad at all"]
    compound = judge.score(texts)
    assert compound.dtype == np.float64
    assert compound.tolist() == [0.9432, -0.7579, 0.0, 0.431]     # VADER rounds the compound to 4 decimals
    assert judge.verdicts(texts).tolist() == [1, -1, 0, 1]        # "not bad": its negation rule flips "bad"


def test_thresholds_are_the_authors_and_inclusive():
    assert (POSITIVE_THRESHOLD, NEGATIVE_THRESHOLD) == (0.05, -0.05)
    assert verdicts([0.05, 0.0499, 0.0, -0.0499, -0.05, 1.0, -1.0]).tolist() == [1, 0, 0, 0, -1, 1, -1]


def test_shares_sum_to_one():
    s = shares([0.9, 0.06, 0.0, -0.3])
    assert s == {"positive": 0.5, "negative": 0.25, "neutral": 0.25}
    with pytest.raises(ValueError, match="at least one"):
        shares([])


def test_what_the_judge_cannot_see_as_the_docstring_says(judge):
    """The module docstring's measured examples: rotten snippets from the corpus's test split, a model sample."""
    lexicon = judge.analyzer.lexicon
    assert len(lexicon) == 7506
    # words it does not list: neither "well-crafted" nor "letdown" is rated, so a verdict becomes neutral
    assert judge.score(["A well-crafted letdown."]).tolist() == [0.0]
    assert "letdown" not in lexicon and "well-crafted" not in lexicon
    assert not {"incoherent", "pretentious"} & set(lexicon)
    # invented words: the pretrained GPT's "funnyks" counts as 0, while "funny" (1.9) would make the text positive
    invented = "Even if you've neveraptits on funnyks into such coming-lin 'ticks'."
    assert judge.score([invented, invented.replace("funnyks", "funny")]).tolist() == [0.0, 0.4404]
    # sarcasm: the rated words are read at face value
    sarcasm = "The movie is about as humorous as watching your favorite pet get buried alive."
    assert judge.score([sarcasm]).tolist() == [0.802]
    assert (lexicon["humorous"], lexicon["favorite"], lexicon["alive"]) == (1.6, 2.0, 1.6)


def test_metrics_and_interface(judge, tmp_path):
    texts, labels = ["A wonderful film.", "An awful film.", "A film."], [1, 0, 1]
    m = judge.metrics(texts, labels)
    assert m["verdict_accuracy"] == pytest.approx(2 / 3) and m["neutral"] == pytest.approx(1 / 3)
    assert {"accuracy", "log_loss", "auc", "n", "positive", "negative", "neutral"} <= set(m)
    with pytest.raises(TypeError, match="wrap it in a list"):
        judge.score("one text")
    loaded = load_vader(judge.save(tmp_path / "vader.npz"))
    assert np.array_equal(loaded.score(texts), judge.score(texts))
    save_npz(tmp_path / "other.npz", {}, {"format": "reward VADER", "version": "3.3.1"})
    with pytest.raises(ValueError, match="3.3.1"):
        load_vader(tmp_path / "other.npz")
