"""The reward model: sparse products, features, the logistic loss gradient (finite differences and torch
autograd), L-BFGS against Newton's method, a scorer trained on a fixture, reward.npz round trips and errors."""
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from minichatgpt.data import corpus, text_files
from minichatgpt.run.stages import train_reward_model
from minigpt_np.checkpoint import load_npz, save_npz
from reward import Scorer, load_scorer, train_scorer
from reward.features import (FEATURE_PRESETS, FeatureConfig, Featurizer, char_ngrams, idf, nb_log_count_ratio,
                             tokenize, word_ngrams)
from reward.logreg import fit_logistic_regression, lbfgs, log_loss, logistic_loss, sigmoid
from reward.sparse import CSR, hstack

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

POSITIVE = ["A wonderful, funny and moving film.", "Brilliant, charming and great fun.",
            "One of the best movies of the year.", "A superb, delightful comedy."]
NEGATIVE = ["A dull, boring and tedious mess.", "Awful, stupid and lifeless.",
            "One of the worst movies of the year.", "A lazy, pointless waste of time."]


def random_csr(rng, n_rows, n_cols, density=0.3, empty_rows=(1,)):
    dense = rng.normal(size=(n_rows, n_cols)) * (rng.random((n_rows, n_cols)) < density)
    dense[list(empty_rows)] = 0.0
    rows, cols = np.nonzero(dense)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_rows))])
    return dense, CSR(indptr, cols, dense[rows, cols], (n_rows, n_cols))


def max_rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), 1e-8)))


# ---------------------------------------------------------------------------------------------------------
# sparse matrix

def test_csr_products_match_dense_including_empty_rows():
    rng = np.random.default_rng(0)
    dense, X = random_csr(rng, 9, 6, empty_rows=(0, 4, 8))
    w, v = rng.normal(size=6), rng.normal(size=9)
    errors = {"matvec": np.abs(X.matvec(w) - dense @ w).max(), "rmatvec": np.abs(X.rmatvec(v) - dense.T @ v).max(),
              "toarray": np.abs(X.toarray() - dense).max(),
              "take_rows": np.abs(X.take_rows(np.array([3, 0, 3])).toarray() - dense[[3, 0, 3]]).max()}
    norms = np.linalg.norm(dense, axis=1, keepdims=True)
    errors["normalize_rows"] = np.abs(X.normalize_rows().toarray() - dense / np.where(norms == 0, 1, norms)).max()
    _, Y = random_csr(rng, 9, 4)
    errors["hstack"] = np.abs(hstack([X, Y]).toarray() - np.hstack([dense, Y.toarray()])).max()
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-12, f"worst: {worst} off by {errors[worst]:.2e}"


def test_csr_all_empty_and_invalid_inputs():
    X = CSR(np.zeros(4, dtype=np.int64), [], [], (3, 5))
    assert np.array_equal(X.matvec(np.ones(5)), np.zeros(3)) and np.array_equal(X.rmatvec(np.ones(3)), np.zeros(5))
    with pytest.raises(ValueError, match="indptr"):
        CSR([0, 2, 1], [0, 1], [1.0, 1.0], (2, 3))
    with pytest.raises(ValueError, match="column indices"):
        CSR([0, 1], [7], [1.0], (1, 3))


# ---------------------------------------------------------------------------------------------------------
# features

def test_tokenize_and_ngrams_known_answers():
    assert tokenize("Don\u2019t GO! It's 2 good_ones?") == ["don't", "go", "!", "it's", "2", "good", "ones", "?"]
    assert tokenize("Caf\u00e9 na\u00efve") == ["caf\u00e9", "na\u00efve"]
    assert word_ngrams(["a", "b", "c"], 2) == ["a", "b", "c", "a b", "b c"]
    assert char_ngrams(["ok", "no"], 3, 4) == [" ok", "ok ", "k n", " no", "no ", " ok ", "ok n", "k no", " no "]
    assert word_ngrams([], 2) == [] and char_ngrams([], 3, 5) == []


def test_nb_log_count_ratio_and_idf_known_answers():
    present = CSR([0, 1, 3, 4], [0, 0, 1, 1], np.ones(4), (3, 2))  # B = [[1,0],[1,1],[0,1]]
    r = nb_log_count_ratio(present, np.array([1.0, 1.0, 0.0]), alpha=1.0)
    # p = 1 + [2, 1] = [3, 2], q = 1 + [0, 1] = [1, 2]
    expected = np.log(np.array([3, 2]) / 5) - np.log(np.array([1, 2]) / 3)
    assert np.abs(r - expected).max() < 1e-12, f"r = {r}, expected {expected}"
    expected_idf = np.log(4 / np.array([3, 3])) + 1
    assert np.abs(idf(present) - expected_idf).max() < 1e-12


def test_featurizer_keeps_ngrams_in_min_df_texts_and_normalises_each_block():
    texts = ["good film", "good fun", "bad film", "unique words here"]
    config = FeatureConfig(min_df=2)
    featurizer = Featurizer.fit(texts, [1, 1, 0, 0], config)
    assert featurizer.vocabularies["words"].tolist() == ["film", "good"]
    X = featurizer.transform(texts + ["", "nothing known"])
    n_words = len(featurizer.vocabularies["words"])
    dense = X.toarray()
    word_norms = np.linalg.norm(dense[:, :n_words], axis=1)
    char_norms = np.linalg.norm(dense[:, n_words:], axis=1)
    assert np.allclose(word_norms, [1, 1, 1, 0, 0, 0]), word_norms
    assert np.allclose(char_norms[:3], 1) and char_norms[4] == 0, char_norms
    fit_X = Featurizer.fit_transform(texts, [1, 1, 0, 0], config)[1]
    assert np.array_equal(fit_X.toarray(), featurizer.transform(texts).toarray())


def test_feature_config_round_trips_through_json_and_rejects_nonsense():
    for config in FEATURE_PRESETS.values():
        assert FeatureConfig(**json.loads(json.dumps(dataclasses.asdict(config)))) == config
    with pytest.raises(ValueError, match="scale"):
        FeatureConfig(scale="bm25")
    with pytest.raises(ValueError, match="no features"):
        FeatureConfig(word_ngram_max=0, char_ngram_max=0)
    with pytest.raises(ValueError, match="min_df"):
        Featurizer.fit(["a b", "c d"], [1, 0], FeatureConfig(min_df=2))


# ---------------------------------------------------------------------------------------------------------
# the loss and its gradient

def loss_problem(seed=0, n=40, d=7):
    rng = np.random.default_rng(seed)
    dense, X = random_csr(rng, n, d, density=0.5, empty_rows=(3,))
    y = (rng.random(n) < 0.5).astype(np.float64)
    return dense, X, y, rng.normal(size=d), float(rng.normal()), 0.3


def finite_difference_grads(X, y, w, b, l2, eps=1e-6):
    """Central differences of logistic_loss in w and b, float64."""
    dw = np.zeros_like(w)
    for j in range(len(w)):
        e = np.zeros_like(w)
        e[j] = eps
        dw[j] = (logistic_loss(w + e, b, X, y, l2)[0] - logistic_loss(w - e, b, X, y, l2)[0]) / (2 * eps)
    db = (logistic_loss(w, b + eps, X, y, l2)[0] - logistic_loss(w, b - eps, X, y, l2)[0]) / (2 * eps)
    return dw, db


def test_logistic_loss_grads_match_finite_differences():
    _, X, y, w, b, l2 = loss_problem()
    _, dw, db = logistic_loss(w, b, X, y, l2)
    num_dw, num_db = finite_difference_grads(X, y, w, b, l2)
    err = max_rel_err(np.append(dw, db), np.append(num_dw, num_db))
    assert err < 1e-6, f"worst relative error vs finite differences {err:.2e}"
    # negative control: the same check must catch a gradient that forgets the L2 term
    wrong = np.append(dw - l2 * w, db)
    wrong_err = max_rel_err(wrong, np.append(num_dw, num_db))
    assert wrong_err > 1e-3, f"the check cannot tell a wrong gradient apart ({wrong_err:.2e})"


def test_logistic_loss_grads_match_torch_autograd():
    dense, X, y, w, b, l2 = loss_problem(seed=1)
    loss, dw, db = logistic_loss(w, b, X, y, l2)
    tw = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    tb = torch.tensor(b, dtype=torch.float64, requires_grad=True)
    z = torch.tensor(dense) @ tw + tb
    t_loss = torch.nn.functional.binary_cross_entropy_with_logits(z, torch.tensor(y)) + 0.5 * l2 * (tw * tw).sum()
    t_loss.backward()
    errors = {"loss": abs(loss - t_loss.item()), "dw": np.abs(dw - tw.grad.numpy()).max(),
              "db": abs(db - tb.grad.item())}
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-12, f"worst: {worst} off by {errors[worst]:.2e}"


def test_log_loss_and_sigmoid_are_stable_at_extreme_logits():
    z = np.array([-1000.0, -30.0, 0.0, 30.0, 1000.0])
    y = np.array([0.0, 0.0, 1.0, 1.0, 1.0])
    p = sigmoid(z)
    assert np.all(np.isfinite(p)) and p[0] == 0.0 and p[-1] == 1.0 and p[2] == 0.5
    t = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(z), torch.tensor(y)).item()
    assert abs(log_loss(z, y) - t) < 1e-12, f"log_loss {log_loss(z, y)} vs torch {t}"


# ---------------------------------------------------------------------------------------------------------
# the optimiser

def newton_solution(dense, y, l2, iters=30):
    """Exact minimiser of the same objective by Newton's method (dense, small problems only)."""
    n, d = dense.shape
    A = np.hstack([dense, np.ones((n, 1))])
    theta = np.zeros(d + 1)
    reg = np.full(d + 1, l2)
    reg[-1] = 0.0  # the bias is not penalised
    for _ in range(iters):
        p = sigmoid(A @ theta)
        grad = A.T @ (p - y) / n + reg * theta
        hess = (A * (p * (1 - p))[:, None]).T @ A / n + np.diag(reg)
        theta -= np.linalg.solve(hess, grad)
    return theta


def test_lbfgs_fit_reaches_the_newton_minimiser():
    dense, X, y, _, _, _ = loss_problem(seed=2, n=200, d=10)
    l2 = 1e-2
    fit = fit_logistic_regression(X, y, l2, max_iter=500, gtol=1e-10)
    theta = newton_solution(dense, y, l2)
    err = np.abs(np.append(fit.w, fit.b) - theta).max()
    assert err < 1e-6, f"L-BFGS is {err:.2e} from the Newton minimiser after {fit.n_iter} iterations"
    assert np.abs(fit.w).max() > 0.1, "the optimiser did not move the weights"


def test_lbfgs_minimises_an_ill_conditioned_quadratic():
    scales = np.logspace(0, 3, 20)  # condition number 1000
    target = np.linspace(-1, 1, 20)
    result = lbfgs(lambda x: (0.5 * np.sum(scales * (x - target) ** 2), scales * (x - target)), np.zeros(20),
                   max_iter=1000, gtol=1e-8, ftol=0.0)
    err = np.abs(result.x - target).max()
    assert result.message == "gradient below gtol" and err < 1e-8, f"{result.message}; off by {err:.2e}"


def test_early_stopping_keeps_the_weights_with_the_best_validation_loss():
    dense, X, y, _, _, _ = loss_problem(seed=3, n=120, d=30)
    X_train, X_val = X.take_rows(np.arange(60)), X.take_rows(np.arange(60, 120))
    fit = fit_logistic_regression(X_train, y[:60], 1e-6, X_val=X_val, y_val=y[60:], patience=5)
    val_losses = [v for _, _, v in fit.history]
    kept = log_loss(X_val.matvec(fit.w) + fit.b, y[60:])
    assert abs(kept - fit.val_log_loss) < 1e-12 and fit.val_log_loss <= min(val_losses) + 1e-12
    assert fit.n_iter - fit.best_iter <= 5, "training went on past the patience"


# ---------------------------------------------------------------------------------------------------------
# the scorer

@pytest.fixture(scope="module")
def fixture_scorer():
    snippets = text_files.load_labelled_file(FIXTURES / "sentiment.csv")
    train, val, _ = corpus.split(snippets, seed=0)
    return train_scorer([s.text for s in train], [s.label for s in train], [s.text for s in val],
                        [s.label for s in val])


def test_scorer_trained_on_a_fixture_separates_positive_from_negative(fixture_scorer):
    pos, neg = fixture_scorer.score(POSITIVE), fixture_scorer.score(NEGATIVE)
    print("positive", np.round(pos, 2), "negative", np.round(neg, 2))
    assert pos.min() > 0.5 and neg.max() < -0.5, f"positive {pos}, negative {neg}"
    metrics = fixture_scorer.metrics(POSITIVE + NEGATIVE, [1] * 4 + [0] * 4)
    assert metrics["accuracy"] == 1.0 and metrics["n"] == 8 and metrics["log_loss"] < 0.3, metrics


def test_validation_choice_is_recorded_and_reproducible(fixture_scorer):
    info = fixture_scorer.info
    assert info["features"] == "nb" and info["l2"] in (3e-4, 1e-4, 3e-5, 1e-5)
    snippets = text_files.load_labelled_file(FIXTURES / "sentiment.csv")
    train, val, _ = corpus.split(snippets, seed=0)
    again = train_scorer([s.text for s in train], [s.label for s in train], [s.text for s in val],
                         [s.label for s in val])
    assert np.array_equal(again.score(POSITIVE), fixture_scorer.score(POSITIVE))
    assert abs(fixture_scorer.metrics([s.text for s in val], [s.label for s in val])["log_loss"]
               - info["val_log_loss"]) < 1e-12


def test_score_is_independent_of_forward_batch_size_and_survives_odd_text(fixture_scorer):
    odd = ["", " ", "\x00\x01\x02", "\U0001F600" * 50, "a" * 100_000, "Don\u2019t!!!", "\n\n", "the the the",
           "\u00c9NORME \u00e9chec", "<br /><br />", "\ud800"]  # the last is a lone surrogate
    texts = POSITIVE + odd + NEGATIVE
    scores = {bs: fixture_scorer.score(texts, forward_batch_size=bs) for bs in (1, 3, 256)}
    assert scores[1].shape == (len(texts),) and scores[1].dtype == np.float64
    assert np.all(np.isfinite(scores[1]))
    assert np.array_equal(scores[1], scores[3]) and np.array_equal(scores[1], scores[256])
    assert scores[1][len(POSITIVE)] == fixture_scorer.b, "the empty string must score the bias"
    assert fixture_scorer.score([]).shape == (0,)


def test_score_rejects_a_bare_string_and_non_strings(fixture_scorer):
    with pytest.raises(TypeError, match="wrap it in a list"):
        fixture_scorer.score("a fine film")
    with pytest.raises(TypeError, match="text 1"):
        fixture_scorer.score(["fine", None])
    with pytest.raises(ValueError, match="forward_batch_size"):
        fixture_scorer.score(["fine"], forward_batch_size=0)


def test_top_features_are_sentiment_words_in_order(fixture_scorer):
    positive, negative = fixture_scorer.top_features(10, block="words")
    pos_words, neg_words = {name for name, _ in positive}, {name for name, _ in negative}
    print("positive", positive, "\nnegative", negative)
    assert pos_words & {"wonderful", "funny", "best", "brilliant", "great", "charming", "superb", "delightful"}
    assert neg_words & {"dull", "boring", "awful", "worst", "stupid", "tedious", "lazy", "pointless"}
    assert all(w > 0 for _, w in positive) and all(w < 0 for _, w in negative)
    assert [w for _, w in positive] == sorted((w for _, w in positive), reverse=True)
    assert [w for _, w in negative] == sorted(w for _, w in negative)
    all_positive, _ = fixture_scorer.top_features(5)
    assert len(all_positive) == 5
    with pytest.raises(ValueError, match="block"):
        fixture_scorer.top_features(5, block="sentences")


# ---------------------------------------------------------------------------------------------------------
# reward.npz

def test_save_load_round_trip_gives_identical_scores(fixture_scorer, tmp_path):
    path = fixture_scorer.save(tmp_path / "model" / "reward.npz")
    loaded = load_scorer(path)
    texts = POSITIVE + NEGATIVE + ["", "never seen words"]
    assert np.array_equal(loaded.score(texts), fixture_scorer.score(texts))
    assert loaded.info == fixture_scorer.info and loaded.featurizer.config == fixture_scorer.featurizer.config
    assert os.listdir(tmp_path / "model") == ["reward.npz"], "a temporary file was left behind"
    with np.load(path, allow_pickle=False) as npz:
        assert npz["words_vocabulary"].dtype.kind == "U" and npz["chars_vocabulary"].dtype.kind == "U"
    assert FeatureConfig(**load_npz(path)[1]["feature_config"]) == fixture_scorer.featurizer.config


def test_a_failed_save_leaves_the_old_file_and_no_temporary(fixture_scorer, tmp_path, monkeypatch):
    path = fixture_scorer.save(tmp_path / "reward.npz")
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        fixture_scorer.save(path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["reward.npz"]


def test_missing_or_corrupt_reward_npz_gives_clear_errors(fixture_scorer, tmp_path):
    with pytest.raises(FileNotFoundError, match="run the stage that writes it"):
        load_scorer(tmp_path / "absent.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(os.urandom(2000))
    with pytest.raises(ValueError, match="not a readable"):
        load_scorer(garbage)
    good = fixture_scorer.save(tmp_path / "good.npz").read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="truncated.npz"):
        load_scorer(truncated)
    arrays, meta = load_npz(tmp_path / "good.npz")
    save_npz(tmp_path / "no_weights.npz", {k: v for k, v in arrays.items() if k != "w"}, meta)
    with pytest.raises(ValueError, match="incomplete or inconsistent.*'w'"):
        load_scorer(tmp_path / "no_weights.npz")
    save_npz(tmp_path / "short_weights.npz", {**arrays, "w": arrays["w"][:-1]}, meta)
    with pytest.raises(ValueError, match="inconsistent"):
        load_scorer(tmp_path / "short_weights.npz")
    save_npz(tmp_path / "other.npz", {"weights": np.zeros(3)}, {"format": "minigpt_np GPT"})
    with pytest.raises(ValueError, match="not a reward model"):
        load_scorer(tmp_path / "other.npz")
    np.savez(tmp_path / "pickled.npz", format=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="not a readable"):
        load_scorer(tmp_path / "pickled.npz")


# ---------------------------------------------------------------------------------------------------------
# training end to end on the fixture, library and command line

def test_train_reward_model_reports_splits_and_metrics():
    snippets = text_files.load_labelled_file(FIXTURES / "sentiment.csv")
    scorer, metrics = train_reward_model(*corpus.split(snippets, seed=0))
    assert isinstance(scorer, Scorer)
    assert sum(s["labelled"] for s in metrics["splits"].values()) == 80
    assert sum(s["snippets"] for s in metrics["splits"].values()) == 80
    assert sum(s["movies"] for s in metrics["splits"].values()) == 8
    assert metrics["test"]["accuracy"] >= 0.9, metrics["test"]
    json.dumps(metrics)  # the pipeline writes it into summary.json


def test_reward_command_writes_a_loadable_model(tmp_path, capsys):
    from minichatgpt.commands import cli
    out = tmp_path / "reward.npz"
    cli.reward_main(["--corpus", str(FIXTURES / "sentiment.csv"), "--out", str(out),
                     "--metrics", str(tmp_path / "metrics.json"), "--l2", "1e-4"])
    printed = capsys.readouterr().out
    assert "test : accuracy" in printed and "top positive" in printed and str(out) in printed
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["l2"] == 1e-4 and metrics["test"]["accuracy"] >= 0.9
    assert np.isfinite(load_scorer(out).score(["a wonderful film"])).all()


def test_train_scorer_rejects_bad_labels():
    with pytest.raises(ValueError, match="0 or 1"):
        train_scorer(["a", "b"], [1, 2], ["a"], [1])
    with pytest.raises(ValueError, match="both classes"):
        train_scorer(["a b", "a b"], [1, 1], ["a"], [1])
    with pytest.raises(ValueError, match="unknown feature variant"):
        train_scorer(["a b", "a b"], [1, 0], ["a"], [1], features="bert")
