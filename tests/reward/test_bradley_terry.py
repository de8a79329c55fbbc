"""reward.bradley_terry: the pairwise loss and its gradient (torch autograd, finite differences, a negative control),
maximum likelihood recovering known weights, a fit on text pairs that is a working Scorer, and agreement."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reward import load_scorer
from reward.bradley_terry import agreement, bradley_terry_loss, fit_bradley_terry
from reward.features import FeatureConfig, Featurizer
from reward.logreg import lbfgs
from reward.sparse import CSR

POSITIVE = ["A wonderful, funny and moving film.", "Brilliant, charming and great fun.",
            "One of the best movies of the year.", "A superb, delightful comedy.", "Funny, moving and superb."]
NEGATIVE = ["A dull, boring and tedious mess.", "Awful, stupid and lifeless.",
            "One of the worst movies of the year.", "A lazy, pointless waste of time.", "Boring, dull and awful."]


def random_csr(rng, n_rows, n_cols, density=0.4, empty_rows=()):
    dense = rng.normal(size=(n_rows, n_cols)) * (rng.random((n_rows, n_cols)) < density)
    dense[list(empty_rows)] = 0.0
    rows, cols = np.nonzero(dense)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_rows))])
    return dense, CSR(indptr, cols, dense[rows, cols], (n_rows, n_cols))


def test_loss_and_gradient_match_torch_autograd_and_finite_differences():
    rng = np.random.default_rng(0)
    dense_w, X_chosen = random_csr(rng, 12, 7, empty_rows=(3,))
    dense_l, X_rejected = random_csr(rng, 12, 7, empty_rows=(3, 5))      # row 3: two featureless texts
    w, l2 = rng.normal(size=7), 0.03
    loss, dw = bradley_terry_loss(w, X_chosen, X_rejected, l2)

    # torch, from the definition: -log sigmoid(r_w - r_l), averaged, plus the penalty
    wt = torch.tensor(w, requires_grad=True)
    ref = -F.logsigmoid(torch.tensor(dense_w) @ wt - torch.tensor(dense_l) @ wt).mean() + 0.5 * l2 * (wt * wt).sum()
    ref.backward()
    assert abs(loss - ref.item()) < 1e-14 and np.abs(dw - wt.grad.numpy()).max() < 1e-14

    eps = 1e-6
    numeric = np.array([(bradley_terry_loss(w + eps * e, X_chosen, X_rejected, l2)[0]
                         - bradley_terry_loss(w - eps * e, X_chosen, X_rejected, l2)[0]) / (2 * eps)
                        for e in np.eye(7)])
    assert np.abs(numeric - dw).max() < 1e-8
    # negative control: a gradient that forgets the rejected text's features is far off
    d = X_chosen.matvec(w) - X_rejected.matvec(w)
    wrong = X_chosen.rmatvec((1 / (1 + np.exp(-d)) - 1) / 12) + l2 * w
    assert np.abs(numeric - wrong).max() > 1e-3


def test_maximum_likelihood_recovers_the_weights_that_generated_the_preferences():
    rng = np.random.default_rng(1)
    w_true = np.array([1.5, -1.0, 0.5, 0.0, 2.0])
    _, X_a = random_csr(rng, 4000, 5, density=0.6)
    _, X_b = random_csr(rng, 4000, 5, density=0.6)
    a_wins = rng.random(4000) < 1 / (1 + np.exp(-(X_a.matvec(w_true) - X_b.matvec(w_true))))
    stack = np.where(a_wins[:, None], X_a.toarray(), X_b.toarray()), np.where(a_wins[:, None], X_b.toarray(),
                                                                              X_a.toarray())
    X_chosen, X_rejected = (CSR(np.arange(0, 4000 * 5 + 1, 5), np.tile(np.arange(5), 4000), m.reshape(-1), (4000, 5))
                            for m in stack)
    fit = lbfgs(lambda w: bradley_terry_loss(w, X_chosen, X_rejected, 0.0), np.zeros(5))
    print(f"true {w_true}, fitted {np.round(fit.x, 3)}")
    assert fit.converged and np.abs(fit.x - w_true).max() < 0.2


def fitted_featurizer():
    return Featurizer.fit(POSITIVE + NEGATIVE, None, FeatureConfig(char_ngram_max=0, min_df=1, scale="idf"))


def test_a_fit_on_text_pairs_is_a_scorer_that_ranks_held_out_pairs_and_round_trips(tmp_path):
    featurizer = fitted_featurizer()
    train = [(p, n) for i, p in enumerate(POSITIVE[:4]) for j, n in enumerate(NEGATIVE[:4]) if i != j]
    scorer = fit_bradley_terry(train, featurizer, l2=1e-3)
    assert scorer.info["model"] == "bradley_terry" and scorer.b == 0.0
    held_out = [(POSITIVE[4], n) for n in NEGATIVE] + [(p, NEGATIVE[4]) for p in POSITIVE]
    assert agreement(scorer, held_out) == 1.0 and agreement(scorer, [(b, a) for a, b in held_out]) == 0.0
    texts = POSITIVE + NEGATIVE + [""]
    scores = scorer.score(texts)
    assert np.array_equal(scorer.score(texts, forward_batch_size=1), scores)
    assert scores[-1] == 0.0, "no bias: a text with no known feature scores 0"
    loaded = load_scorer(scorer.save(tmp_path / "bt.npz"))
    assert np.array_equal(loaded.score(texts), scores) and loaded.info["model"] == "bradley_terry"


def test_a_pair_of_identical_texts_adds_log_2_and_no_gradient():
    featurizer = fitted_featurizer()
    X = featurizer.transform([POSITIVE[0]])
    w = np.random.default_rng(2).normal(size=len(featurizer))
    loss, dw = bradley_terry_loss(w, X, X, 0.0)
    assert abs(loss - np.log(2)) < 1e-15 and np.all(dw == 0.0)


class LengthOrConstantScorer:
    """A stand-in scorer: the score is the text's length, or a constant."""

    def __init__(self, constant=None):
        self.constant = constant

    def score(self, texts, forward_batch_size=256):
        return np.array([len(t) if self.constant is None else self.constant for t in texts], dtype=float)


def test_agreement_known_answers():
    pairs = [("long text", "short"), ("a", "bb"), ("same", "size"), ("xyz", "")]
    # length ranks the first text higher in pairs 1 and 4, lower in 2, ties in 3: (1 + 0 + 1/2 + 1) / 4
    assert agreement(LengthOrConstantScorer(), pairs) == 0.625
    assert agreement(LengthOrConstantScorer(constant=3.0), pairs) == 0.5
    with pytest.raises(ValueError, match="at least one pair"):
        agreement(LengthOrConstantScorer(), [])
    with pytest.raises(ValueError, match="pairs"):
        fit_bradley_terry([], fitted_featurizer())
