"""What RLHF really gained: collapse metrics, best-of-n, the over-optimisation fits, and the overopt command."""
import itertools
import json
import math

import numpy as np
import pytest

import minigpt_np as mg
from minichatgpt.loop import best_of_n
from minichatgpt.commands import cli
from minichatgpt.experiments import overopt
from minichatgpt.loop.collapse import collapse_metrics, distinct_n, top_content_word, unique_share, words
from ppo_np import batch as batch_module
from tiny_run import fixture_corpus, kill_ppo_in_step, tiny_args


# ---------------------------------------------------------------------------------------------- collapse


def test_collapse_metrics_known_answers():
    responses = ["is an entertaining film.", "an entertaining mess", "Is an ENTERTAINING film.",
                 "a dull, dull movie", "the film"]
    # content words per response: {entertaining, film}, {entertaining, mess}, {entertaining, film},
    # {dull, movie}, {film}: "entertaining" and "film" are in 3 of 5; ties go to the alphabetically first
    assert top_content_word(responses) == ("entertaining", 0.6)
    assert unique_share(responses) == 0.8                   # the 1st and 3rd differ only in case
    # 4 + 3 + 4 + 4 + 2 = 17 whitespace tokens, 11 distinct once lower-cased ("dull," and "dull" differ)
    assert distinct_n(responses, 1) == pytest.approx(11 / 17)
    # bigrams: 3 + 2 + 3 + 3 + 1 = 12; "is an", "an entertaining", "entertaining film." repeat: 12 - 3 - 1 = 8 distinct
    assert distinct_n(responses, 2) == pytest.approx(8 / 12)
    assert words("It's a sharp, well-made film!") == ["it's", "a", "sharp", "well", "made", "film"]
    m = collapse_metrics(responses)
    assert m["top_word"] == "entertaining" and m["top_word_share"] == 0.6 and m["unique_share"] == 0.8
    assert top_content_word([]) == ("", 0.0) and top_content_word(["the a of"]) == ("", 0.0)


def test_a_collapsed_set_scores_worse_than_a_varied_one():
    collapsed = ["an entertaining."] * 8 + ["is an entertaining film."] * 2
    varied = [f"a {adjective} tale of {topic}" if k == 0 else f"a {adjective} {topic}" for k, (adjective, topic) in enumerate(
              zip(["warm", "sharp", "tender", "funny", "bold", "quiet", "smart", "odd", "grim", "wry"],
                  ["love", "war", "home", "music", "chess", "rain", "trains", "cats", "time", "work"]))]
    a, b = collapse_metrics(collapsed), collapse_metrics(varied)
    assert a["top_word_share"] == 1.0 and b["top_word_share"] == 0.1
    assert a["unique_share"] == 0.2 and b["unique_share"] == 1.0
    assert a["distinct_2"] < b["distinct_2"]


# ---------------------------------------------------------------------------------------------- best-of-n


def test_pick_probabilities_sum_to_one_and_match_counting():
    for N, n in ((5, 1), (5, 2), (6, 3), (8, 8)):
        p = best_of_n.pick_probabilities(N, n)
        assert abs(p.sum() - 1) < 1e-12
        counts = np.zeros(N)
        for subset in itertools.combinations(range(N), n):
            counts[min(subset)] += 1          # rank 0 is the best: the subset's best is its lowest rank
        np.testing.assert_allclose(p, counts / counts.sum(), atol=1e-15)


def test_best_of_n_is_the_judge_score_of_the_proxy_argmax_averaged_over_every_subset():
    rng = np.random.default_rng(0)
    proxy, judge = rng.normal(size=(3, 6)), rng.normal(size=(3, 6))
    for n in (1, 2, 3, 6):
        brute = np.mean([np.mean([judge[p, max(s, key=lambda i: proxy[p, i])]
                                  for s in itertools.combinations(range(6), n)]) for p in range(3)])
        assert abs(best_of_n.best_of_n(proxy, judge, n) - brute) < 1e-12, n
    # n = 1 is the plain mean; n = N is the judge score of each prompt's proxy argmax
    assert abs(best_of_n.best_of_n(proxy, judge, 1) - judge.mean()) < 1e-12
    assert abs(best_of_n.best_of_n(proxy, judge, 6) - judge[np.arange(3), proxy.argmax(1)].mean()) < 1e-12
    # and the proxy's own best-of-n score only rises with n
    own = [best_of_n.best_of_n(proxy, proxy, n) for n in (1, 2, 4)]
    assert own[0] < own[1] < own[2]


def test_best_of_n_kl_formula_matches_a_monte_carlo_estimate_on_a_tiny_model():
    """KL(best-of-n || pi) for a tiny GPT whose every sequence can be enumerated: the exact KL of the best-of-n
    distribution, a Monte Carlo estimate from actual best-of-n sampling, and log n - (n - 1)/n."""
    V, L = 7, 3
    model = mg.GPT(mg.GPTConfig(vocab_size=V, block_size=L + 1, n_layer=1, n_head=1, n_embd=8), dtype=np.float64,
                   seed=3)
    seqs = np.array(list(itertools.product(range(V), repeat=L)))            # every response of L tokens
    query = np.zeros((len(seqs), 1), dtype=np.int64)
    batch = batch_module.layout(list(query), list(seqs))
    logp = batch_module.response_logprobs(model, batch, 512).sum(axis=1)   # log pi(y), (V^L,)
    p = np.exp(logp)
    assert abs(p.sum() - 1) < 1e-12 and p.max() < 0.02                      # spread: ties are rare
    reward = np.random.default_rng(0).normal(size=len(seqs))               # distinct rewards
    order = np.argsort(reward)
    cdf = np.cumsum(p[order])
    rng = np.random.default_rng(1)
    for n in (2, 4, 16):
        p_bon = np.empty_like(p)
        p_bon[order] = cdf ** n - np.concatenate([[0.0], cdf[:-1]]) ** n    # P(the best of n is y)
        exact = float(np.sum(p_bon * (np.log(p_bon) - logp)))
        # Monte Carlo: draw n samples from pi, keep the best; average log p_bon(y) - log pi(y) over the picks
        draws = rng.choice(len(seqs), size=(20000, n), p=p)
        picks = draws[np.arange(len(draws)), np.argmax(reward[draws], axis=1)]
        monte_carlo = float(np.mean(np.log(p_bon[picks]) - logp[picks]))
        formula = best_of_n.kl_best_of_n(n)
        print(f"n={n}: formula {formula:.4f}, exact {exact:.4f}, Monte Carlo {monte_carlo:.4f}")
        assert abs(monte_carlo - exact) < 0.03
        assert exact <= formula + 1e-9 and formula - exact < 0.02 * formula + 0.01


# ---------------------------------------------------------------------------------------------- the fits


def test_the_fits_recover_alpha_and_beta_from_synthetic_points():
    d = np.linspace(0.2, 4.0, 12)
    for alpha, beta in ((1.2, 0.3), (0.5, -0.1)):
        assert np.allclose(overopt.fit_bon(d, d * (alpha - beta * d)), (alpha, beta), atol=1e-10)
        assert np.allclose(overopt.fit_rl(np.r_[0.0, d], np.r_[0.0, d * (alpha - beta * np.log(d))]), (alpha, beta),
                           atol=1e-10)
    noisy = d * (1.0 - 0.25 * d) + np.random.default_rng(0).normal(scale=0.01, size=d.size)
    a, b = overopt.fit_bon(d, noisy)
    assert abs(a - 1.0) < 0.05 and abs(b - 0.25) < 0.02


def test_kl_best_of_n_values():
    assert best_of_n.kl_best_of_n(1) == 0.0
    assert abs(best_of_n.kl_best_of_n(64) - (math.log(64) - 63 / 64)) < 1e-15


# ---------------------------------------------------------------------------------------------- the command


TINY = ["--proxy-sizes", "10", "30", "--prompts", "3", "--n-max", "4", "--rl-steps", "4", "--eval-every", "2",
        "--quiet"]


def test_overopt_command_end_to_end_with_resume_after_a_kill(tmp_path, capsys, monkeypatch):
    corpus = fixture_corpus(tmp_path / "reviews.csv")
    cli.run_main(tiny_args(tmp_path, "run", corpus))
    where = ["--name", "run", "--runs-dir", str(tmp_path / "runs")]
    kill_ppo_in_step(monkeypatch, 3)             # killed during the first PPO run, after its step-2 checkpoint
    with pytest.raises(SystemExit):
        cli.overopt_main(where + TINY)
    assert "interrupted" in capsys.readouterr().err
    monkeypatch.undo()
    cli.overopt_main(where + TINY)
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "runs" / "run" / "overopt.json").read_text())
    assert (tmp_path / "runs" / "run" / "overopt.png").stat().st_size > 10000
    assert set(results["scorers"]) == {"10", "30", "full", "gold", "lexicon"}
    for row in results["best_of_n"] + results["rl"]:      # the lexicon judges every point beside the gold
        assert 0 <= row["lexicon_positive"] + row["lexicon_negative"] <= 1 and -1 <= row["lexicon_score"] <= 1
    assert [r["n"] for r in results["best_of_n"] if r["proxy"] == "10"] == [1, 2, 4]
    assert [r["step"] for r in results["rl"] if r["proxy"] == "10"] == [0, 2, 4]
    assert {"best_of_n/10/gold_score", "rl/full/gold_score"} <= set(results["fits"])
    assert "test accuracy" in out
    # the resumed PPO run equals one never interrupted
    uninterrupted = tmp_path / "again"
    cli.run_main(tiny_args(uninterrupted, "run", corpus))
    cli.overopt_main(["--name", "run", "--runs-dir", str(uninterrupted / "runs")] + TINY)
    again = json.loads((uninterrupted / "runs" / "run" / "overopt.json").read_text())
    assert again["rl"] == results["rl"] and again["best_of_n"] == results["best_of_n"]
    # other settings on the same folder are refused
    with pytest.raises(SystemExit) as e:
        cli.overopt_main(where + TINY[:-1] + ["--rl-kl-coef", "0.1", "--quiet"])
    assert e.value.code == 1 and "--rl-kl-coef: 0.02 -> 0.1" in capsys.readouterr().err


def test_overopt_refuses_an_unfinished_run(tmp_path, capsys):
    (tmp_path / "runs" / "nothing").mkdir(parents=True)
    with pytest.raises(SystemExit) as e:
        cli.overopt_main(["--name", "nothing", "--runs-dir", str(tmp_path / "runs"), "--quiet"])
    assert e.value.code == 1 and "is not a finished run" in capsys.readouterr().err


def test_a_downturn_is_called_only_beyond_two_standard_errors():
    def rows(shares):
        return [{"proxy": "p", "step": i, "kl": float(i), "gold_positive": g, "lexicon_positive": g,
                 "lexicon_negative": 1 - g, "samples": [f"s{i}"]} for i, g in enumerate(shares)]
    n = 100
    flat, = [d for d in overopt.downturns([], rows([0.5, 0.8, 0.75]), n) if d["judge"] == "gold_positive"]
    assert not flat["turns_down"] and flat["peak"]["at"] == 1     # 0.05 below a peak, s.e. of the gap 0.06
    falls, = [d for d in overopt.downturns([], rows([0.5, 0.8, 0.5]), n) if d["judge"] == "gold_positive"]
    assert falls["turns_down"] and falls["samples_at_peak"] == ["s1"] and falls["samples_at_last"] == ["s2"]
    assert falls["drop"] == pytest.approx(0.3) and falls["se"] == pytest.approx(np.sqrt((0.16 + 0.25) / n))
    negative, = [d for d in overopt.downturns([], rows([0.5, 0.8, 0.5]), n) if d["judge"] == "lexicon_negative"]
    assert negative["turns_down"] and negative["peak"]["share"] == pytest.approx(0.2)   # its lowest point


def test_cross_kind_judges_each_proxy_by_a_gold_of_the_other_kind(tmp_path, capsys):
    corpus = fixture_corpus(tmp_path / "reviews.csv")
    cli.run_main(tiny_args(tmp_path, "run", corpus))
    where = ["--name", "run", "--runs-dir", str(tmp_path / "runs")]
    cli.overopt_main(where + TINY[3:] + ["--cross-kind"])      # one proxy of each kind: no --proxy-sizes
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "runs" / "run" / "overopt_cross.json").read_text())
    assert (tmp_path / "runs" / "run" / "overopt_cross.png").stat().st_size > 10000
    assert results["golds"] == {"ngram": "gpt_gold", "gpt": "gold"}
    assert set(results["scorers"]) == {"ngram", "gpt", "gold", "gpt_gold", "lexicon"}
    assert {r["proxy"] for r in results["rl"]} == {"ngram", "gpt"}
    assert all(r["gold"] == results["golds"][r["proxy"]] for r in results["rl"] + results["best_of_n"])
    # every point keeps its first answers: all 3 of the tiny run's held-out prompts (fewer than SAMPLES = 4)
    assert [len(r["samples"]) for r in results["rl"] + results["best_of_n"]] == [3] * (6 + 6)
    assert len(results["downturns"]) == 2 * 2 * 3 and "where each judge's share peaks" in out
    assert not (tmp_path / "runs" / "run" / "overopt_cross" / "gold_gpt_train.npz").exists()
    # the gold of the n-gram proxy's best-of-n at n = 1 is the GPT gold's mean over every reference sample
    import minichatgpt.experiments.overopt as o
    from minigpt_np.checkpoint import load_npz
    scores, _ = load_npz(tmp_path / "runs" / "run" / "overopt_cross" / "best_of_n_scores.npz")
    first = next(r for r in results["best_of_n"] if r["proxy"] == "ngram")
    assert first["gold_score"] == pytest.approx(scores["gpt_gold"].mean()) and o.CROSS_GOLD["ngram"] == "gpt_gold"
    # the plain experiment still runs beside it, in its own folder
    cli.overopt_main(where + TINY)
    assert (tmp_path / "runs" / "run" / "overopt.json").exists()
