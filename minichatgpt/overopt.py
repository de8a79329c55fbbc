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
falls. The distance between the two curves is what the policy merely got the scorer to say. Best-of-n's curve is
`best_of_n.curve`; the run is opened, and evaluated, through `finished_run`.
"""
import dataclasses
import logging
import os

import numpy as np

from minigpt_np.checkpoint import load_npz, save_npz
from reward import load_scorer, train_scorer

from .best_of_n import curve
from .evaluate import EVAL_SEED_OFFSET, measured_in
from .finished_run import experiment
from .report import write_overopt_plot
from .rlhf import train_ppo
from .run_folder import path, write_json
from .sampling import sample_n, score, texts_of
from .stages import labelled

log = logging.getLogger(__name__)

JUDGES = ("gold", "lexicon")   # the scorers that only judge; every other one is a proxy

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


def scorers_of(run, folder, cfg):
    """The run's reward model ("full"), its judges (the gold scorer, the VADER lexicon) and a smaller proxy per size
    (fitted once, then kept as overopt/proxy_<size>.npz) -> ({name: scorer}, {name: labelled training snippets it was fitted on})."""
    train, val, _, _ = run.data
    scorers = {"full": run.proxy, "gold": run.gold, "lexicon": run.lexicon}
    os.makedirs(folder, exist_ok=True)
    for size in cfg.proxy_sizes:
        file = path(folder, f"proxy_{size}.npz")
        if not os.path.exists(file):
            train_proxies(train, val, [size], cfg.seed)[str(size)].save(file)
        scorers[str(size)] = load_scorer(file)
    n_train, n_val = len(labelled(train)[0]), len(labelled(val)[0])
    return scorers, {**{str(s): s for s in cfg.proxy_sizes}, "full": n_train, "gold": n_train + n_val, "lexicon": 0}


# ---------------------------------------------------------------------------------------------- the two curves


def best_of_n_rows(run, folder, cfg, scorers, queries, progress):
    """Best-of-n for every proxy, judged by the gold: n_max reference samples per held-out prompt, scored by every
    scorer once and kept in overopt/best_of_n_scores.npz -> [{"proxy", "n", "kl", "proxy_score", "gold_score"}]."""
    file = path(folder, "best_of_n_scores.npz")
    if not os.path.exists(file):
        sampling = dataclasses.replace(run.config.sampling, forward_batch_size=cfg.n_max)   # a prompt's n_max a pass
        rng = np.random.default_rng(run.config.seed + EVAL_SEED_OFFSET)
        repeated, responses = sample_n(run.ref_model, run.tokenizer, queries, cfg.n_max, sampling, rng, progress)
        texts = texts_of(run.tokenizer, repeated, responses)
        save_npz(file, {name: score(scorer, texts, sampling).reshape(len(queries), cfg.n_max)
                        for name, scorer in scorers.items()}, {"texts_per_prompt": cfg.n_max})
    scores, _ = load_npz(file)
    return [{"proxy": name, "n": r["n"], "kl": r["kl"], **judged_row(r)} for name in scorers if name not in JUDGES
            for r in curve(scores[name], {"reward": scores[name], **{j: scores[j] for j in JUDGES}},
                           {"reward": scorers[name], **scorers}, cfg.n_max)]


def rl_rows(run, folder, cfg, name, scorers, queries, progress):
    """PPO from the run's policy start against one proxy, with a small fixed KL penalty, evaluated by that proxy and
    the gold every eval_every steps; resumes from overopt/rl_<name>.npz -> its curve (rl_curve)."""
    ppo_config = dataclasses.replace(run.config.ppo, adap_kl_ctrl=False, init_kl_coef=cfg.rl_kl_coef)
    loop = dataclasses.replace(run.config.rlhf, steps=cfg.rl_steps, checkpoint_every=cfg.eval_every)
    evaluate = run.evaluator({"reward": scorers[name], **{j: scorers[j] for j in JUDGES}}, queries)
    history = train_ppo(run.policy_start(), run.task(scorers[name]), ppo_config, loop, path(folder, f"rl_{name}.npz"),
                        path(folder, f"rl_{name}.jsonl"), progress=progress, evaluate=evaluate,
                        evaluate_every=cfg.eval_every)
    return rl_curve(history, name)


def rl_curve(history, proxy_name):
    """The evaluated steps of a PPO log -> [{"proxy", "step", "kl", "proxy_score", "gold_score", ...}]."""
    return [{"proxy": proxy_name, "step": h["step"], "kl": max(m["kl_to_reference"], 0.0), **judged_row(m),
             "gold_positive": m["gold_positive"], "top_word_share": m["top_word_share"]}
            for h in history for m in [measured_in(h)] if m]


def judged_row(m):
    """A point of a curve as the experiment names it: the proxy's and the gold's mean scores, and the lexicon's mean
    compound and positive and negative shares, from an evaluation's metrics or a best-of-n curve's row."""
    return {"proxy_score": m["reward_mean"], "gold_score": m["gold_mean"], "lexicon_score": m["lexicon_mean"],
            "lexicon_positive": m["lexicon_positive"], "lexicon_negative": m["lexicon_negative"]}


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
    """Each curve's fitted functional form, gold's and the proxy's own -> {"<kind>/<proxy>/<score>": alpha, beta}."""
    out = {}
    for kind, rows, fit in (("best_of_n", bon, fit_bon), ("rl", rl, fit_rl)):
        for name in sorted({r["proxy"] for r in rows}):
            rows_of = [r for r in rows if r["proxy"] == name]
            for key in ("gold_score", "proxy_score"):
                alpha, beta = fit(*gains(rows_of, key))
                out[f"{kind}/{name}/{key}"] = {"alpha": alpha, "beta": beta}
    return out


# ---------------------------------------------------------------------------------------------- the experiment


def run_overopt(run_dir, cfg, progress=True, cache_dir=None):
    """The whole experiment on a finished run -> results, also written to overopt.json and overopt.png.

    Reuses the run's tokenizer, pretrained model, reward model (the proxy fitted on the full training split) and
    gold scorer; trains the smaller proxies; writes its own files under run_dir/overopt/ and resumes from them
    after a kill. Refuses when the run is not finished, or when overopt/ holds results of other settings.
    """
    with experiment(run_dir, "overopt", lambda run: dataclasses.asdict(cfg), cache_dir) as (run, folder):
        scorers, sizes = scorers_of(run, folder, cfg)
        test_texts, test_labels = labelled(run.data[2])
        accuracy = {name: scorer.metrics(test_texts, test_labels)["accuracy"] for name, scorer in scorers.items()}
        queries = run.held_out(cfg.prompts)
        bon = best_of_n_rows(run, folder, cfg, scorers, queries, progress)
        rl = [row for name in (str(min(cfg.proxy_sizes)), "full")     # PPO against the smallest proxy and the largest
              for row in rl_rows(run, folder, cfg, name, scorers, queries, progress)]
        results = {"settings": dataclasses.asdict(cfg),
                   "scorers": {name: {"train_snippets": sizes[name], "test_accuracy": accuracy[name]}
                               for name in scorers},
                   "best_of_n": bon, "rl": rl, "fits": fits(bon, rl)}
        write_json(path(run_dir, "overopt.json"), results)
        write_overopt_plot(results, path(run_dir, "overopt.png"))
        return results


def format_results(results):
    """The experiment as text: the scorers, both curves (score gains over the reference) and the fits."""
    lines = ["scorer      train snippets   test accuracy"]
    for name, s in results["scorers"].items():
        lines.append(f"{name:10s} {s['train_snippets']:15,d} {s['test_accuracy']:15.3f}")
    for kind, title in (("best_of_n", "best-of-n (n: KL)"), ("rl", "PPO (step: KL)")):
        lines += ["", f"{title}; gain in mean log-odds over the reference, proxy / gold"]
        for name in dict.fromkeys(r["proxy"] for r in results[kind]):
            curve = [r for r in results[kind] if r["proxy"] == name]
            points = [f"{r.get('n', r.get('step'))}: {r['kl']:.1f} {r['proxy_score'] - curve[0]['proxy_score']:+.2f}"
                      f"/{r['gold_score'] - curve[0]['gold_score']:+.2f}" for r in curve]
            fit = results["fits"][f"{kind}/{name}/gold_score"]
            lines.append(f"  proxy {name:5s} gold fit alpha {fit['alpha']:+.3f} beta {fit['beta']:+.3f} | "
                         + ", ".join(points))
    return "\n".join(lines)
