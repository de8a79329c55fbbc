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
falls. The distance between the two curves is what the policy merely got the scorer to say.
"""
import dataclasses
import logging
import math
import os

import numpy as np

import minigpt_np as mg
from minigpt_np.checkpoint import load_npz, save_npz
from ppo_np.rollout import generate_responses
from reward import load_scorer, train_scorer

from . import stages
from .config import from_dict
from .evaluate import evaluate_policy
from .pipeline import EVAL_SEED_OFFSET
from .report import write_overopt_plot
from .rlhf import texts_of, train_ppo
from .run_folder import Lock, Manifest, Refused, path, read_json, write_json
from .stages import labelled

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class OveroptConfig:
    proxy_sizes: tuple = (250, 1000, 4000)   # labelled training snippets per small proxy (+ the run's reward model)
    prompts: int = 128                       # held-out prompts for best-of-n and for every RL evaluation
    n_max: int = 64                          # best-of-n for n = 1, 2, 4, ..., n_max
    rl_steps: int = 60                       # PPO steps per proxy
    rl_kl_coef: float = 0.02                 # a small fixed KL penalty, so that PPO travels far along the KL axis
    eval_every: int = 5                      # PPO steps between evaluations
    seed: int = 0

    def __post_init__(self):
        if not self.proxy_sizes or min(self.proxy_sizes) < 2:
            raise ValueError(f"proxy_sizes must name at least one size >= 2, got {self.proxy_sizes}")
        if self.n_max < 2 or self.n_max & (self.n_max - 1):
            raise ValueError(f"n_max must be a power of two >= 2, got {self.n_max}")
        if self.prompts < 1 or self.rl_steps < 1 or self.eval_every < 1 or not self.rl_kl_coef >= 0:
            raise ValueError("prompts, rl_steps and eval_every must be >= 1 and rl_kl_coef >= 0")


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


# ---------------------------------------------------------------------------------------------- best-of-n


def kl_best_of_n(n):
    """KL(best-of-n || reference) = log n - (n - 1) / n nats (the formula Stiennon et al. 2020 and Gao et al. 2022
    use; exact for a continuous distribution of scores, an upper bound otherwise, Beirami et al. 2024)."""
    return math.log(n) - (n - 1) / n


def pick_probabilities(N, n):
    """P[the sample ranked i (0 = highest proxy score) of N is the best of a uniform random n-subset]
    = C(N - 1 - i, n - 1) / C(N, n)  -> (N,). It is the best iff it is drawn and no higher-ranked one is."""
    return np.array([math.comb(N - 1 - i, n - 1) for i in range(N)], dtype=np.float64) / math.comb(N, n)


def best_of_n(proxy_scores, judge_scores, n):
    """The expected judge score of the response the proxy picks among n of the N samples of each prompt.

    proxy_scores, judge_scores (P, N) for P prompts and N >= n samples each -> float. Averaging over every
    n-subset (not only the first n samples) is the unbiased, low-variance estimator; the proxy's ties are broken
    by sample index.
    """
    P, N = proxy_scores.shape
    order = np.argsort(-proxy_scores, axis=1, kind="stable")
    ranked = np.take_along_axis(judge_scores, order, axis=1)            # (P, N), best proxy score first
    return float((ranked @ pick_probabilities(N, n)).mean())


def sample_reference(ref_model, tokenizer, queries, n, config, seed, progress=False):
    """n responses per query from the reference -> texts (prompt + response), len(queries) * n, query-major."""
    return texts_of(tokenizer, *reference_responses(ref_model, tokenizer, queries, n, config,
                                                    np.random.default_rng(seed), n, progress))


def reference_responses(ref_model, tokenizer, queries, n, config, rng, forward_batch_size, progress=False):
    """n responses per query from the reference -> (each query repeated n times, the responses), query-major.

    forward_batch_size rows per generate call; n keeps each call to one query's n responses."""
    repeated = [q for q in queries for _ in range(n)]
    responses = []
    for i in _bar(range(0, len(repeated), forward_batch_size), progress, "reference samples"):
        responses += generate_responses(ref_model, repeated[i:i + forward_batch_size], config.response_tokens,
                                        forward_batch_size=forward_batch_size, rng=rng,
                                        eos_token_id=tokenizer.eos_token_id, stop_at_eos=config.stop_at_eos)
    return repeated, responses


def _bar(items, enabled, desc):
    if not enabled:
        return items
    from tqdm.auto import tqdm
    return tqdm(items, desc=desc, unit="batch")


def best_of_n_curve(scores, proxy_names, judge_name, n_max):
    """For each n = 1, 2, 4, ..., n_max and each proxy: KL_bon, the proxy's own score and the judge's.

    scores: {name: (P, N)} -> [{"n", "kl", "proxy": name, "proxy_score", "gold_score"}]."""
    rows = []
    for name in proxy_names:
        for k in range(int(math.log2(n_max)) + 1):
            n = 2 ** k
            rows.append({"proxy": name, "n": n, "kl": kl_best_of_n(n),
                         "proxy_score": best_of_n(scores[name], scores[name], n),
                         "gold_score": best_of_n(scores[name], scores[judge_name], n)})
    return rows


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


def evaluator(ref_model, tokenizer, scorers, queries, rlhf, forward_batch_size, seed):
    """evaluate(policy) -> {"eval/<metric>": value} on fixed held-out prompts with its own generator (for train_ppo)."""
    def evaluate(policy):
        metrics, _ = evaluate_policy(policy, ref_model, tokenizer, scorers, queries, rlhf, forward_batch_size, seed)
        return {f"eval/{k}": v for k, v in metrics.items()}
    return evaluate


def rl_curve(history, proxy_name):
    """The evaluated steps of a PPO log -> [{"proxy", "step", "kl", "proxy_score", "gold_score"}]."""
    return [{"proxy": proxy_name, "step": h["step"], "kl": max(h["eval/kl_to_reference"], 0.0),
             "proxy_score": h["eval/proxy_mean"], "gold_score": h["eval/gold_mean"],
             "gold_positive": h["eval/gold_positive"], "top_word_share": h["eval/top_word_share"]}
            for h in history if "eval/gold_mean" in h]


def gains(rows, key):
    """(d, score gain over the first row) of one curve: d = sqrt(KL) and the key's increase from d = 0."""
    d = np.sqrt([r["kl"] for r in rows])
    return d, np.array([r[key] for r in rows]) - rows[0][key]


# ---------------------------------------------------------------------------------------------- the experiment


def finished_run(run_dir):
    """The manifest and RunConfig of a finished run of the main job -> (Manifest, RunConfig); Refused otherwise."""
    run = Manifest(run_dir)
    missing = [s for s in ("tokenizer", "pretrain", "reward", "gold") if not run.stages.get(s, {}).get("finished")]
    if missing or not os.path.exists(path(run_dir, "summary.json")):
        what = f"its {', '.join(missing)} stages are not finished" if missing else "it has no summary.json"
        raise Refused(f"{run_dir} is not a finished run ({what}); run minichatgpt --name "
                      f"{os.path.basename(run_dir)} first")
    return run, from_dict(read_json(path(run_dir, "summary.json"))["config"])


def input_hashes(run):
    """{"<file> sha256": digest} of what an experiment reuses from a finished run: tokenizer, models, scorers."""
    return {f"{n} sha256": run.stages[s]["outputs"][n] for s, n in
            (("tokenizer", "tokenizer.json"), ("pretrain", "gpt_pretrained.npz"), ("reward", "reward.npz"),
             ("gold", "gold.npz"))}


def run_overopt(run_dir, cfg, progress=True, cache_dir=None):
    """The whole experiment on a finished run -> results, also written to overopt.json and overopt.png.

    Reuses the run's tokenizer, pretrained model, reward model (the proxy fitted on the full training split) and
    gold scorer; trains the smaller proxies; writes its own files under run_dir/overopt/ and resumes from them
    after a kill. Refuses when the run is not finished, or when overopt/ holds results of other settings.
    """
    folder = path(run_dir, "overopt")
    finished_run(run_dir)                   # refuse before the lock, which would create the folder
    with Lock(run_dir):
        run, config = finished_run(run_dir)
        train, val, test, data = stages.load_data(config, cache_dir)
        own = Manifest(folder)
        built_from = {**{k: str(v) for k, v in dataclasses.asdict(cfg).items()}, **input_hashes(run)}
        own.check("overopt", built_from, [], f"delete {folder} to run the experiment with these settings")
        if "overopt" not in own.stages:
            own.start("overopt", built_from)
        results = _experiment(run_dir, folder, config, cfg, train, val, test, progress)
        write_json(path(run_dir, "overopt.json"), results)
        write_overopt_plot(results, path(run_dir, "overopt.png"))
        own.finish("overopt", [])
        return results


def _experiment(run_dir, folder, config, cfg, train, val, test, progress):
    tokenizer = mg.load_tokenizer(path(run_dir, "tokenizer.json"))
    ref_model = mg.load_checkpoint(path(run_dir, "gpt_pretrained.npz"))
    scorers = {"full": load_scorer(path(run_dir, "reward.npz")), "gold": load_scorer(path(run_dir, "gold.npz"))}
    os.makedirs(folder, exist_ok=True)
    for size in cfg.proxy_sizes:
        file = path(folder, f"proxy_{size}.npz")
        if not os.path.exists(file):
            train_proxies(train, val, [size], cfg.seed)[str(size)].save(file)
        scorers[str(size)] = load_scorer(file)
    test_texts, test_labels = labelled(test)
    sizes = {**{str(s): s for s in cfg.proxy_sizes}, "full": len(labelled(train)[0]),
             "gold": len(labelled(train)[0]) + len(labelled(val)[0])}
    accuracy = {name: scorer.metrics(test_texts, test_labels)["accuracy"] for name, scorer in scorers.items()}
    train_queries, eval_queries = stages.prompts(config, tokenizer, test)
    eval_queries = eval_queries[:cfg.prompts]
    seed, fbs = config.seed + EVAL_SEED_OFFSET, config.ppo.forward_batch_size

    bon_file = path(folder, "best_of_n_scores.npz")
    if not os.path.exists(bon_file):
        texts = sample_reference(ref_model, tokenizer, eval_queries, cfg.n_max, config.rlhf, seed, progress)
        save_npz(bon_file, {name: scorer.score(texts).reshape(len(eval_queries), cfg.n_max)
                            for name, scorer in scorers.items()}, {"texts_per_prompt": cfg.n_max})
    bon_scores, _ = load_npz(bon_file)
    proxies = [name for name in scorers if name != "gold"]
    bon = best_of_n_curve(bon_scores, proxies, "gold", cfg.n_max)

    rl = []
    for name in (str(min(cfg.proxy_sizes)), "full"):     # PPO against the smallest proxy and the largest
        policy = mg.load_checkpoint(path(run_dir, "gpt_pretrained.npz"))
        policy.add_value_head(seed=config.seed)
        ppo_config = dataclasses.replace(config.ppo, adap_kl_ctrl=False, init_kl_coef=cfg.rl_kl_coef)
        rlhf = dataclasses.replace(config.rlhf, steps=cfg.rl_steps, checkpoint_every=cfg.eval_every)
        evaluate = evaluator(ref_model, tokenizer, {"proxy": scorers[name], "gold": scorers["gold"]}, eval_queries,
                             config.rlhf, fbs, seed)
        history = train_ppo(policy, ref_model, tokenizer, scorers[name], train_queries, ppo_config, rlhf,
                            path(folder, f"rl_{name}.npz"), path(folder, f"rl_{name}.jsonl"), progress=progress,
                            evaluate=evaluate, evaluate_every=cfg.eval_every)
        rl += rl_curve(history, name)

    fits = {}
    for kind, rows, fit in (("best_of_n", bon, fit_bon), ("rl", rl, fit_rl)):
        for name in sorted({r["proxy"] for r in rows}):
            curve = [r for r in rows if r["proxy"] == name]
            for score in ("gold_score", "proxy_score"):
                alpha, beta = fit(*gains(curve, score))
                fits[f"{kind}/{name}/{score}"] = {"alpha": alpha, "beta": beta}
    return {"settings": dataclasses.asdict(cfg), "scorers": {name: {"train_snippets": sizes[name],
                                                                    "test_accuracy": accuracy[name]}
                                                             for name in scorers},
            "best_of_n": bon, "rl": rl, "fits": fits}


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
