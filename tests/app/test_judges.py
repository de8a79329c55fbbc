"""The judge of another kind in every evaluation: one vocabulary (sampling.judged, sampling.verdicts) for the table,
summary.json, samples.md, the rollouts' log, best-of-n's curve; and a judge only reads (training ignores it)."""
import json

import numpy as np
import pytest

from minichatgpt.commands import cli
from minichatgpt.loop.best_of_n import curve
from minichatgpt.run.finished_run import FinishedRun
from minichatgpt.loop.sampling import judged, verdicts
from reward.lexicon import VaderJudge, shares

from tiny_run import fixture_corpus, tiny_args


class LogOdds:
    """A reward model's stand-in: score = a fixed number per text."""
    def __init__(self, table):
        self.table = table

    def score(self, texts, forward_batch_size=256):
        return np.array([self.table[t] for t in texts])


def test_a_reward_model_is_judged_by_its_sign_and_the_lexicon_by_its_three_bands():
    s = np.array([2.0, -1.0, 0.0, 0.5])
    assert judged("gold", LogOdds({}), s) == {"gold_mean": 0.375, "gold_positive": 0.5}
    compound = np.array([0.9, 0.05, 0.0, -0.0499, -0.05, -0.7])
    out = judged("lexicon", VaderJudge(), compound)
    assert out == {"lexicon_mean": pytest.approx(compound.mean()),
                   **{f"lexicon_{k}": v for k, v in shares(compound).items()}}
    assert (out["lexicon_positive"], out["lexicon_negative"], out["lexicon_neutral"]) == (2 / 6, 2 / 6, 2 / 6)


def test_best_of_n_curve_gives_each_verdict_share_of_the_proxy_pick():
    rng = np.random.default_rng(0)
    proxy = rng.normal(size=(5, 4))
    compound = np.round(rng.uniform(-1, 1, size=(5, 4)), 2)
    rows = curve(proxy, {"reward": proxy, "lexicon": compound}, {"reward": LogOdds({}), "lexicon": VaderJudge()}, 4)
    first, last = rows[0], rows[-1]
    for key, is_it in verdicts("lexicon", VaderJudge(), compound).items():
        assert first[key] == pytest.approx(is_it.mean())                     # n = 1: any sample, on average
        assert last[key] == pytest.approx(is_it[np.arange(5), proxy.argmax(1)].mean())   # n = N: the proxy's argmax
    assert last["reward_positive"] == pytest.approx(np.mean(proxy.max(1) > 0))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, built_runs):
    tmp_path = tmp_path_factory.mktemp("judges")
    run_dir = built_runs.copy(tmp_path, "demo")
    return tmp_path, built_runs.corpus, json.loads((run_dir / "summary.json").read_text())


def test_every_report_of_the_main_job_shows_the_lexicon_beside_proxy_and_gold(tiny, capsys):
    tmp_path, corpus, summary = tiny
    run_dir = tmp_path / "runs" / "demo"
    run = FinishedRun.open(str(run_dir))
    for column in ("reference", "policy"):
        m = summary[column]
        assert m["lexicon_positive"] + m["lexicon_negative"] + m["lexicon_neutral"] == pytest.approx(1)
    # the summary's shares are VADER's own verdicts on the policy's answers
    _, samples = run.evaluate(run.ref_model)
    expected = shares(VaderJudge().score(samples["texts"]))
    assert {k: summary["reference"][f"lexicon_{k}"] for k in expected} == expected
    assert "before_lexicon" in summary["examples"][0]
    text = (run_dir / "samples.md").read_text()
    assert "lexicon (VADER): pos / neg / neutral" in text and ", v " in text
    log = [json.loads(line) for line in (run_dir / "ppo_log.jsonl").read_text().splitlines()]
    for key in ("env/lexicon_positive", "env/lexicon_negative", "env/lexicon_neutral", "env/lexicon_mean",
                "env/gold_positive", "env/reward_positive"):
        assert all(key in record for record in log), f"{key} missing from the rollouts' log"
    cli.run_main(tiny_args(tmp_path, "demo", corpus))          # a finished run prints its table again
    assert "lexicon (VADER): mean compound" in capsys.readouterr().out


def test_the_lexicon_only_judges_training_does_not_read_it(tiny, tmp_path, monkeypatch):
    _, corpus, summary = tiny
    monkeypatch.setattr(VaderJudge, "score", lambda self, texts, forward_batch_size=256: -np.ones(len(texts)))
    other = cli.run_main(tiny_args(tmp_path, "demo", corpus))
    assert other["policy"]["lexicon_negative"] == 1.0
    for key in ("reward_mean", "gold_mean", "kl_to_reference", "top_word_share", "reference_nll"):
        assert other["policy"][key] == summary["policy"][key]


def test_the_main_job_runs_end_to_end_against_a_gpt_reward_model_and_resumes(tmp_path, monkeypatch, capsys):
    from minichatgpt.run import stages
    from reward.gpt_reward import GPTRewardModel
    corpus = fixture_corpus(tmp_path / "reviews.csv")
    args = tiny_args(tmp_path, "gpt", corpus, "--reward-model", "gpt")
    real_update = __import__("reward.gpt_reward_train", fromlist=["_update"])._update
    calls = {"n": 0}

    def dies(*a, **k):          # killed at the reward model's third update, after no checkpoint: it starts again
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_update(*a, **k)
    monkeypatch.setattr("reward.gpt_reward_train._update", dies)
    with pytest.raises(SystemExit):
        cli.main(args)
    monkeypatch.undo()
    summary = cli.run_main(args)
    run_dir = tmp_path / "runs" / "gpt"
    run = FinishedRun.open(str(run_dir))
    assert isinstance(run.proxy, GPTRewardModel) and type(run.gold).__name__ == "Scorer"
    assert not (run_dir / "reward_gpt_train.npz").exists()
    assert summary["built_with"]["reward"]["--reward-model"] == "gpt"
    assert 0 <= summary["reward"]["test"]["accuracy"] <= 1
    # the policy was trained against the GPT: its logged rewards are the GPT's scores of its rollouts
    assert summary["policy"]["reward_mean"] == pytest.approx(float(np.mean(run.proxy.score(run.evaluate(
        stages.load_policy(str(run_dir))[0])[1]["texts"]))))
    # the GPT reward model is built on the pretrained GPT: --restart pretrain rebuilds it (and the gold), where the
    # n-gram proxy is kept
    from minichatgpt.run.pipeline import affected
    assert affected("pretrain", "gpt") == ["pretrain", "reward", "gold", *stages.METHODS]
    assert affected("pretrain") == ["pretrain", *stages.METHODS]
    again = cli.run_main([*args, "--restart", "pretrain"])   # the summary has a stage's metrics if it ran
    assert "pretrain" in again and "reward" in again and "gold" in again
    assert again["reward"]["test"] == summary["reward"]["test"] and again["policy"] == summary["policy"]
    # the default run's manifest does not name the option, so runs made before it existed still resume
    ngram = cli.run_main(tiny_args(tmp_path, "ngram", corpus))
    assert "--reward-model" not in ngram["built_with"]["reward"]
    with pytest.raises(SystemExit) as e:
        cli.main(tiny_args(tmp_path, "ngram", corpus, "--reward-model", "gpt"))
    err = capsys.readouterr().err
    assert e.value.code == 1 and "its reward stage: --reward-model: " in err and "-> gpt" in err, err


def test_validation_prompts_come_from_the_validation_split_not_the_held_out_test_prompts(tiny):
    tmp_path, _, _ = tiny
    run = FinishedRun.open(str(tmp_path / "runs" / "demo"))
    decode = run.tokenizer.decode
    val_texts = [s.text for s in run.data[1]]
    prompts = [decode([int(t) for t in q]) for q in run.validation_prompts]
    assert prompts and all(any(t.startswith(p) for t in val_texts) for p in prompts)
    held_out = {decode([int(t) for t in q]) for q in run.held_out()}
    test_movies = {s.movie for s in run.data[2]}
    assert not test_movies & {s.movie for s in run.data[1]} and held_out != set(prompts)
