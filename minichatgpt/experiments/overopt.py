"""What did RLHF really gain? Reward-model over-optimisation, as in Gao, Schulman & Hilton (2022), "Scaling Laws
for Reward Model Overoptimization", in miniature.

PPO optimises a proxy: a reward model fitted on a few thousand labelled snippets. A gold scorer, fitted on every
labelled training and validation snippet, only judges. Smaller proxies are fitted on subsets of the training
split. Two ways to buy proxy score with distance d = sqrt(KL) from the reference model:

    best-of-n   sample n responses from the reference, keep the one the proxy likes best.
                KL_bon = log n - (n - 1) / n    (nats; exact for a continuous score, an upper bound otherwise)
                gold(d) - gold(0) = d (alpha - beta d)                         (Gao et al., eq. 1)
    RL          PPO against the proxy; the sampled KL is measured every few steps.
                gold(d) - gold(0) = d (alpha - beta log d)                     (Gao et al., eq. 2)

The proxy score keeps rising with d; the gold score rises, flattens and, if the proxy is exploitable enough,
falls. The distance between the two curves is what the policy merely got the scorer to say. A gold of the proxy's
own kind shares its blind spots, so `--cross-kind` judges each proxy by a gold of the other kind: the n-gram proxy
by a GPT reward model fitted on every label, a GPT reward model proxy by the n-gram gold. Every point is also
judged by VADER's lexicon, a judge of a third kind. `downturns` says where each judge's positive share peaks and
whether it then falls by more than two standard errors, with the samples there. Best-of-n's curve is
`best_of_n.curve`; the run is opened, and evaluated, through `finished_run`. Every file the experiment writes
under its folder is recorded in the folder's manifest once finished, and checked before it is used again.
"""
import dataclasses
import functools
import os
import logging

import numpy as np

import minigpt_np as mg
from minigpt_np.checkpoint import load_npz, save_npz
from reward import load_gpt_reward, load_scorer, train_scorer

from ..evaluation.evaluate import EVAL_SEED_OFFSET, logged, measured_in
from ..evaluation.report import KINDS, write_overopt_plot
from ..loop.best_of_n import curve
from ..loop.rlhf import train_ppo
from ..loop.sampling import sample_n, score, texts_of
from ..run.finished_run import experiment
from ..run.run_folder import path, write_json, writing
from ..run.stages import labelled, train_gpt_reward_model, train_reward_model
from ..settings.config import OVEROPT_OPTIONS
from ..settings.options import UsageError

log = logging.getLogger(__name__)

JUDGES = ("gold", "gpt_gold", "lexicon")   # the scorers that only judge; every other one is a proxy
CROSS_GOLD = {"ngram": "gpt_gold", "gpt": "gold"}   # --cross-kind: each proxy's gold is of the other kind
SAMPLES = 4                                # answers kept with every evaluated point, to read beside its numbers

# ---------------------------------------------------------------------------------------------- scorers


def train_proxies(train, val, sizes, seed):
    """One scorer per size, fitted on that many labelled training snippets (a seeded random subset), with l2
    chosen on the validation split as the reward model's is -> {str(size): Scorer}."""
    texts, labels = labelled(train)
    val_texts, val_labels = labelled(val)
    order = np.random.default_rng(seed).permutation(len(texts))
    proxies = {}
    for size in sizes:
        if size >= len(texts):
            raise ValueError(f"a proxy of {size} snippets needs more than the {len(texts)} labelled training snippets")
        rows = order[:size]
        proxies[str(size)] = train_scorer([texts[i] for i in rows], labels[rows], val_texts, val_labels,
                                          log=log.debug)
    return proxies


def scorers_of(run, ex, cfg):
    """The run's reward model ("full"), its judges (the gold scorer, the VADER lexicon) and a smaller proxy per size
    (fitted once, then kept as overopt/proxy_<size>.npz) -> ({name: scorer}, {name: labelled training snippets it
    was fitted on}, {name: its kind}). The smaller proxies are n-gram models whatever the run's proxy is: with a GPT
    reward model run, "full" is of another kind than they are, which the results say."""
    train, val, _, _ = run.data
    scorers = {"full": run.proxy, "gold": run.gold, "lexicon": run.lexicon}
    for size in cfg.proxy_sizes:
        name = f"proxy_{size}.npz"
        if not ex.kept(name):
            with writing(ex.file(name)):
                train_proxies(train, val, [size], cfg.seed)[str(size)].save(ex.file(name))
            ex.wrote(name)
        scorers[str(size)] = load_scorer(ex.file(name))
    n_train, n_val = len(labelled(train)[0]), len(labelled(val)[0])
    kinds = {**{str(s): "ngram" for s in cfg.proxy_sizes}, "full": run.config.reward_model, "gold": "ngram",
             "lexicon": "lexicon"}
    sizes = {**{str(s): s for s in cfg.proxy_sizes}, "full": n_train, "gold": n_train + n_val, "lexicon": 0}
    return scorers, sizes, kinds


def cross_kind_scorers(run, ex, progress):
    """--cross-kind: a proxy of each kind fitted on the training split ("ngram", "gpt"; the run's reward model is one
    of them), the n-gram gold ("gold") and a GPT reward model fitted on every labelled training and validation
    snippet ("gpt_gold", trained once, resumably, and kept as overopt_cross/gold_gpt.npz), and the lexicon
    -> (scorers, {name: labelled snippets it was fitted on}, {name: its kind})."""
    train, val, test, _ = run.data
    kind = run.config.reward_model     # the run's --reward-model, as its manifest records it
    scorers = {kind: run.proxy}

    def fitted_once(name, fit, load):      # fit, save and record the first time; load after that
        file, checkpoint = ex.file(f"{name}.npz"), ex.file(f"{name}_train.npz")
        if not ex.kept(f"{name}.npz"):
            model = fit(checkpoint)
            with writing(file):
                model.save(file)
            ex.wrote(f"{name}.npz")
            if os.path.exists(checkpoint):
                os.unlink(checkpoint)
        return load(file)

    gpt = functools.partial(train_gpt_reward_model, run.config, run.run_dir, run.tokenizer, progress=progress)
    if kind == "ngram":
        scorers["gpt"] = fitted_once("proxy_gpt", lambda ckpt: gpt(labelled(train), labelled(val), ckpt), load_gpt_reward)
    else:
        scorers["ngram"] = fitted_once("proxy_ngram", lambda ckpt: train_reward_model(train, val, test)[0], load_scorer)
    every = labelled(list(train) + list(val))
    # no held-out split is left to choose its weights on: validation is among its texts, so the choice is a formality
    scorers.update(gold=run.gold, gpt_gold=fitted_once("gold_gpt", lambda ckpt: gpt(every, labelled(val), ckpt),
                                                       load_gpt_reward), lexicon=run.lexicon)
    n_train, n_val = len(labelled(train)[0]), len(labelled(val)[0])
    return scorers, {"ngram": n_train, "gpt": n_train, "gold": n_train + n_val, "gpt_gold": n_train + n_val,
                     "lexicon": 0}, {"ngram": "ngram", "gpt": "gpt", "gold": "ngram", "gpt_gold": "gpt",
                                     "lexicon": "lexicon"}


def judges_of(name, scorers, gold_of):
    """What one proxy's points are scored with: {"reward": the proxy, "gold": its gold, "lexicon": VADER}."""
    return {"reward": scorers[name], "gold": scorers[gold_of[name]], "lexicon": scorers["lexicon"]}


# ---------------------------------------------------------------------------------------------- the two curves


def best_of_n_rows(run, ex, cfg, scorers, gold_of, queries, progress):
    """Best-of-n for every proxy, judged by its gold and the lexicon: n_max reference samples per held-out prompt,
    scored by every scorer once and kept, with the first SAMPLES prompts' texts, in <folder>/best_of_n_scores.npz
    -> [{"proxy", "gold", "n", "kl", "proxy_score", "gold_score", "lexicon_*", "samples": the proxy's picks}]."""
    file = ex.file("best_of_n_scores.npz")
    if not ex.kept("best_of_n_scores.npz"):
        sampling = dataclasses.replace(run.config.sampling, forward_batch_size=cfg.n_max)   # a prompt's n_max a pass
        rng = np.random.default_rng(run.config.seed + EVAL_SEED_OFFSET)
        repeated, responses = sample_n(run.ref_model, run.tokenizer, queries, cfg.n_max, sampling, rng, progress)
        texts = texts_of(run.tokenizer, repeated, responses)
        with writing(file):
            save_npz(file, {**{name: score(scorer, texts, sampling).reshape(len(queries), cfg.n_max)
                               for name, scorer in scorers.items()},
                            "texts": np.array(texts[:SAMPLES * cfg.n_max]).reshape(-1, cfg.n_max)},
                     {"texts_per_prompt": cfg.n_max})
        ex.wrote("best_of_n_scores.npz")
    scores, _ = load_npz(file)
    rows = []
    for name in (n for n in scorers if n not in JUDGES):
        judges = judges_of(name, scorers, gold_of)
        own = {"reward": scores[name], "gold": scores[gold_of[name]], "lexicon": scores["lexicon"]}
        for r in curve(scores[name], own, judges, cfg.n_max):
            rows.append({"proxy": name, "gold": gold_of[name], "n": r["n"], "kl": r["kl"], **judged_row(r),
                         "samples": picks(scores, name, gold_of[name], r["n"])})
    return rows


def picks(scores, name, gold, n):
    """The proxy's pick among the first n samples of each of the first SAMPLES prompts, with its three scores."""
    texts = scores.get("texts")
    if texts is None:                  # a score file written before the texts were kept
        return []
    out = []
    for p in range(len(texts)):
        i = int(np.argmax(scores[name][p, :n]))
        out.append({"text": str(texts[p, i]), "proxy": float(scores[name][p, i]), "gold": float(scores[gold][p, i]),
                    "lexicon": float(scores["lexicon"][p, i])})
    return out


def rl_configs(run, cfg):
    """The PPO runs' settings: the run's PPO with a fixed KL coefficient, and its loop for rl_steps steps, without
    the main job's time budget (each runs to its end, so that its files are finished when recorded)
    -> (PPOConfig, RLHFConfig)."""
    return (dataclasses.replace(run.config.ppo, adap_kl_ctrl=False, init_kl_coef=cfg.rl_kl_coef),
            dataclasses.replace(run.config.rlhf, steps=cfg.rl_steps, checkpoint_every=cfg.eval_every,
                                max_seconds=None))


def rl_rows(run, ex, cfg, name, scorers, gold_of, queries, progress):
    """PPO from the run's policy start against one proxy, with a small fixed KL penalty, evaluated by that proxy, its
    gold and the lexicon every eval_every steps and after the last; resumes from <folder>/rl_<name>.npz -> its
    curve (rl_curve)."""
    ppo_config, loop = rl_configs(run, cfg)
    judges = judges_of(name, scorers, gold_of)

    def evaluate(policy):              # FinishedRun.evaluate's metrics, and the first answers to read beside them
        metrics, samples = run.evaluate(policy, judges, queries)
        shown = [{"text": samples["texts"][i], **{("proxy" if j == "reward" else j): float(samples["scores"][j][i])
                                                  for j in judges}} for i in range(min(SAMPLES, len(queries)))]
        return logged({**metrics, "samples": shown})
    files = f"rl_{name}.npz", f"rl_{name}.jsonl"
    history = train_ppo(run.policy_start(), run.task(scorers[name]), ppo_config, loop, *map(ex.file, files),
                        progress=progress, evaluate=evaluate, evaluate_every=cfg.eval_every)
    ex.wrote(*files)
    return rl_curve(history, name, gold_of[name])


def rl_curve(history, proxy_name, gold="gold"):
    """The evaluated steps of a PPO log -> [{"proxy", "gold", "step", "kl", "proxy_score", "gold_score", ...}]."""
    return [{"proxy": proxy_name, "gold": gold, "step": h["step"], "kl": max(m["kl_to_reference"], 0.0),
             **judged_row(m), "top_word_share": m["top_word_share"], "samples": m.get("samples", [])}
            for h in history for m in [measured_in(h)] if m]


def judged_row(m):
    """A point of a curve as the experiment names it: the proxy's and the gold's mean scores and positive shares, and
    the lexicon's mean compound and positive and negative shares, from an evaluation's metrics or a best-of-n row."""
    return {"proxy_score": m["reward_mean"], "gold_score": m["gold_mean"], "gold_positive": m["gold_positive"],
            "lexicon_score": m["lexicon_mean"], "lexicon_positive": m["lexicon_positive"],
            "lexicon_negative": m["lexicon_negative"]}


# ---------------------------------------------------------------------------------------------- the fits


def fit_bon(d, gain):
    """Least squares of gain = d (alpha - beta d) = alpha d - beta d^2 -> (alpha, beta)."""
    d, gain = np.asarray(d, float), np.asarray(gain, float)
    (alpha, minus_beta), *_ = np.linalg.lstsq(np.stack([d, d ** 2], axis=1), gain, rcond=None)
    return float(alpha), float(-minus_beta)


def fit_rl(d, gain):
    """Least squares of gain = d (alpha - beta log d) = alpha d - beta d log d, over d > 0 -> (alpha, beta)."""
    d, gain = np.asarray(d, float), np.asarray(gain, float)
    keep = d > 0
    d, gain = d[keep], gain[keep]
    (alpha, minus_beta), *_ = np.linalg.lstsq(np.stack([d, d * np.log(d)], axis=1), gain, rcond=None)
    return float(alpha), float(-minus_beta)


def gains(rows, key):
    """(d, score gain over the first row) of one curve: d = sqrt(KL) and the key's increase from d = 0."""
    d = np.sqrt([r["kl"] for r in rows])
    return d, np.array([r[key] for r in rows]) - rows[0][key]


def fits(bon, rl):
    """Each curve's fitted functional form, gold's, the lexicon's and the proxy's own
    -> {"<kind>/<proxy>/<score>": alpha, beta}.

    Two parameters need two points past d = 0: a curve with fewer has no fit (alpha and beta None)."""
    out = {}
    for kind, rows, fit in (("best_of_n", bon, fit_bon), ("rl", rl, fit_rl)):
        for name in sorted({r["proxy"] for r in rows}):
            rows_of = [r for r in rows if r["proxy"] == name]
            for key in ("gold_score", "proxy_score", "lexicon_score"):
                d, gain = gains(rows_of, key)
                alpha, beta = fit(d, gain) if np.sum(d > 0) >= 2 else (None, None)
                out[f"{kind}/{name}/{key}"] = {"alpha": alpha, "beta": beta}
    return out


# ---------------------------------------------------------------------------------------------- the experiment


def run_overopt(run_dir, cfg, progress=True, cache_dir=None, kernels="fast"):
    """The whole experiment on a finished run -> results, also written to overopt.json and overopt.png
    (--cross-kind: overopt_cross.json and overopt_cross.png).

    Reuses the run's tokenizer, pretrained model, reward model (the proxy fitted on the full training split) and
    gold scorer; trains the smaller proxies (--cross-kind: the proxy of the other kind and the GPT gold); writes its
    own files under run_dir/overopt/ (overopt_cross/) and resumes from them after a kill. Refuses when the run is not
    finished, or when that folder holds results of other settings (its manifest, which also records the engine's
    `kernels`).
    """
    name = "overopt_cross" if cfg.cross_kind else "overopt"
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "cross_kind"}   # the folder's name says it
    if cfg.cross_kind:
        settings.pop("proxy_sizes")
    with experiment(run_dir, name, lambda run: {**built_from(cfg, run, settings), "kernels": kernels}, cache_dir,
                    names={o.field: o.flag for o in OVEROPT_OPTIONS}) as (run, ex), mg.kernels.using(kernels):
        if cfg.cross_kind:
            scorers, sizes, kinds = cross_kind_scorers(run, ex, progress)
            gold_of, trained = CROSS_GOLD, ("ngram", "gpt")
        else:
            scorers, sizes, kinds = scorers_of(run, ex, cfg)
            gold_of, trained = {n: "gold" for n in scorers}, (str(min(cfg.proxy_sizes)), "full")   # smallest, largest
        test_texts, test_labels = labelled(run.data[2])
        accuracy = {n: scorer.metrics(test_texts, test_labels)["accuracy"] for n, scorer in scorers.items()}
        queries = run.held_out(cfg.prompts)
        bon = best_of_n_rows(run, ex, cfg, scorers, gold_of, queries, progress)
        rl = [row for proxy in trained for row in rl_rows(run, ex, cfg, proxy, scorers, gold_of, queries, progress)]
        results = {"settings": settings if cfg.cross_kind else dataclasses.asdict(cfg),
                   "scorers": {n: {"train_snippets": sizes[n], "test_accuracy": accuracy[n], "kind": kinds[n]}
                               for n in scorers},
                   "golds": {proxy: gold_of[proxy] for proxy in scorers if proxy not in JUDGES},
                   "best_of_n": bon, "rl": rl, "fits": fits(bon, rl), "downturns": downturns(bon, rl, len(queries))}
        write_json(path(run_dir, f"{name}.json"), results)
        write_overopt_plot(results, path(run_dir, f"{name}.png"))
        return results


def built_from(cfg, run, settings):
    """What the experiment is built from besides the run's files: its settings and the run's own that shape it
    (FinishedRun.shaping). Refuses settings that do not fit the run (a proxy as large as the run's labelled training
    split, more prompts than it holds out) before anything is written."""
    n_train = len(labelled(run.data[0])[0])
    too_large = [size for size in cfg.proxy_sizes if size >= n_train] if not cfg.cross_kind else []
    if too_large:
        raise UsageError(f"--proxy-sizes {too_large[0]} is too large: the run has {n_train} labelled training "
                         f"snippets, and a smaller proxy is fitted on fewer; use sizes below {n_train}")
    run.held_out(cfg.prompts, "--prompts")
    try:
        rl_configs(run, cfg)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return {**settings, **run.shaping()}


# ---------------------------------------------------------------------------------------------- where a judge turns


def downturns(bon, rl, n):
    """Where each judge's positive share peaks along each curve, and whether it falls after -> [{"kind", "proxy",
    "judge", "peak", "last", "drop", "se", "turns_down", "samples_at_peak", "samples_at_last"}].

    A share p measured on n prompts has standard error sqrt(p (1 - p) / n); the curve turns down when the last
    point lies below the peak by more than two standard errors of their difference. The lexicon's negative share
    is read the other way: it turns (for the worse) when it rises above its lowest point by as much. peak / last:
    {"at" (n or step), "kl", "share"}.
    """
    out = []
    for kind, rows in (("best_of_n", bon), ("rl", rl)):
        for proxy in dict.fromkeys(r["proxy"] for r in rows):
            curve_ = [r for r in rows if r["proxy"] == proxy]
            for key, sign in (("gold_positive", 1), ("lexicon_positive", 1), ("lexicon_negative", -1)):
                shares = np.array([r[key] for r in curve_]) * sign
                best, last = int(np.argmax(shares)), len(curve_) - 1
                p, q = abs(shares[best]), abs(shares[last])
                se = float(np.sqrt((p * (1 - p) + q * (1 - q)) / n))
                drop = float(shares[best] - shares[last])
                out.append({"kind": kind, "proxy": proxy, "judge": key, "peak": point(curve_[best], key),
                            "last": point(curve_[last], key), "drop": drop, "se": se, "turns_down": drop > 2 * se,
                            "samples_at_peak": curve_[best]["samples"], "samples_at_last": curve_[last]["samples"]})
    return out


def point(row, key):
    return {"at": row.get("n", row.get("step")), "kl": row["kl"], "share": row[key]}


def format_results(results):
    """The experiment as text: the scorers, both curves (score gains over the reference, the lexicon's shares), the
    fits, and where each judge turns down."""
    lines = ["scorer     kind               train snippets   test accuracy"]
    for name, s in results["scorers"].items():
        lines.append(f"{name:10s} {KINDS[s['kind']]:16s} {s['train_snippets']:16,d} "
                     f"{s['test_accuracy']:15.3f}")
    golds = results.get("golds", {})
    for kind, title in (("best_of_n", "best-of-n (n: KL)"), ("rl", "PPO (step: KL)")):
        lines += ["", f"{title}; gain in mean log-odds over the reference, proxy / gold; lexicon positive / negative"]
        for name in dict.fromkeys(r["proxy"] for r in results[kind]):
            curve = [r for r in results[kind] if r["proxy"] == name]
            points = [f"{r.get('n', r.get('step'))}: {r['kl']:.1f} {r['proxy_score'] - curve[0]['proxy_score']:+.2f}"
                      f"/{r['gold_score'] - curve[0]['gold_score']:+.2f}; "
                      f"{r['lexicon_positive']:.2f}/{r['lexicon_negative']:.2f}" for r in curve]
            fit = results["fits"][f"{kind}/{name}/gold_score"]
            fitted = (f"gold fit alpha {fit['alpha']:+.3f} beta {fit['beta']:+.3f}" if fit["alpha"] is not None
                      else "no gold fit (fewer than 2 points past d = 0)")
            of_kind = KINDS[results["scorers"][name]["kind"]]
            lines.append(f"  proxy {name:5s} ({of_kind}; gold {golds.get(name, 'gold')}) {fitted} | "
                         + ", ".join(points))
    lines += ["", "where each judge's share peaks; it turns down if the last point is below the peak by > 2 s.e."]
    for d in results.get("downturns", []):
        lines.append(f"  {d['kind']:9s} proxy {d['proxy']:5s} {d['judge']:16s} peak {d['peak']['share']:.3f} at "
                     f"{d['peak']['at']} (KL {d['peak']['kl']:.1f}), last {d['last']['share']:.3f} at {d['last']['at']} "
                     f"(KL {d['last']['kl']:.1f}): {'TURNS DOWN' if d['turns_down'] else 'no downturn'} "
                     f"(drop {d['drop']:+.3f}, s.e. {d['se']:.3f})")
    return "\n".join(lines)
