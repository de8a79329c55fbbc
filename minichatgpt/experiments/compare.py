"""Every method of ppo_np.METHODS (PPO, RLOO, GRPO, REINFORCE, DPO, ...) and best-of-n on one finished run, each
given the same budget of generated responses.

Every method starts from the run's pretrained model and buys proxy reward (the run's reward model) with distance
from it; the gold scorer only judges. The budget is the number of responses a method may generate and have the
proxy score, N = budget:

    PPO, RLOO, GRPO, N / batch_size steps of batch_size policy samples, each scored once: PPO and REINFORCE one
    REINFORCE        response per prompt, RLOO k and GRPO G consecutive responses per prompt (so N / k prompts, not N)
    DPO              N reference samples, two per prompt for N / 2 training prompts, scored once to choose each
                     pair's winner; then N / batch_size steps of batch_size / 2 pairs: one pass over the pairs
    best-of-n        no training: n = N / P reference samples for each of the P held-out prompts, at answer time,
                     the one the proxy scores highest kept

So every method asks the proxy exactly N questions (evaluation aside, which only measures). The RL methods and
DPO spend them before they answer and then answer each prompt with one sample; best-of-n spends them on the
prompts it answers, and would spend them again on every new prompt. That is its real price, which a budget of
training samples cannot show; what the budget does hold equal is the proxy's information about the task.
What it does not hold equal is the number of optimizer steps, since each method steps as its trainer steps
(each Method's group and pairs, as the main job's --method drives it too): PPO and RLOO one AdamW step per mini-batch,
`epochs` passes over each batch (N / mini_batch_size x epochs steps); GRPO one per pass over the batch, whole groups
in each (N / batch_size x epochs); REINFORCE, on-policy, one per batch (N / batch_size); DPO one per mini-batch of
pairs, `epochs` passes over them. The rule is the budget of generated and scored responses, not the updates.

Every eval_every steps, and after the last step, the policy answers P held-out prompts, one sample each from its
own generator, measured as every evaluation of a run is (`FinishedRun.evaluate`: proxy "reward", "gold" and
"lexicon" (VADER) scores, KL, collapse, length, reference NLL), with the exact KL: at each position of each answer,
the KL between the policy's and the reference's next-token distributions over the whole vocabulary, summed over the
answer (`evaluate.exact_kl`). Unlike the sampled sum of log-ratios the main job reports, it is never negative, and it
is what compare.json, the table and the plot call kl_to_reference. Best-of-n is measured on its picks; its KL is the
formula log n - (n - 1)/n (an upper bound). Wall time is the logged time
of the training steps and of the up-front sampling and scoring (evaluations excluded); memory is one step's
working memory (`measured`). A Bradley-Terry reward model is fitted on DPO's pairs and its agreement with the
gold scorer is reported beside the classifier reward model's.

Everything is written under run_dir/compare/ (one checkpoint and JSON-lines log per method, DPO's pairs, the
best-of-n samples' results), whose manifest records the sha256 of each file once it is finished, so a killed
comparison started again resumes, and a file changed since is refused; compare.json, compare.png and compare.md go
into the run folder.
"""
import dataclasses
import functools
import logging
import time
import tracemalloc

import numpy as np

import minigpt_np as mg
from minigpt_np.checkpoint import atomic_write
from reward.bradley_terry import agreement, fit_bradley_terry

from ..evaluation.evaluate import EVAL_SEED_OFFSET, measure_responses, measured_in
from ..evaluation.report import format_table as format_metrics
from ..evaluation.report import write_compare_plot
from ..loop.best_of_n import curve as best_of_n_curve
from ..loop.best_of_n import kl_best_of_n
from ..run.finished_run import experiment
from ..settings.config import compare_options
from ..settings.options import UsageError, multiple_of
from ppo_np import METHODS

from ..loop import methods, rlhf
from ..loop.sampling import sample_n, score, texts_of
from ..run.run_folder import path, read_json, write_json, writing

log = logging.getLogger(__name__)

BEST_OF_N = "best-of-n"        # how the table and the plot name best-of-n, which trains nothing
PAIRS = "dpo_pairs.json"       # the preference pairs, in compare/
BEST_OF_N_SEED_OFFSET = EVAL_SEED_OFFSET + 1   # best-of-n's samples differ from the evaluation's one per prompt
CURVE_KEYS = ("reward_mean", "gold_mean", "reward_positive", "gold_positive", "lexicon_positive",
              "lexicon_negative")   # what a method's curve plots


def trainer_configs(cfg, ppo, response_tokens):
    """Each training method's config (methods.trainer_config): the comparison's lr, batch and epochs, the run's
    forward and mini-batch sizes, clip range, response length and seed, and the method's own coefficients
    -> {method: config}. ppo: the run's PPOConfig; response_tokens: its sampling's."""
    sizes = {"--batch-size": cfg.batch_size, "the run's forward_batch_size": ppo.forward_batch_size,
             "the run's mini_batch_size": ppo.mini_batch_size}
    for of in ("the run's forward_batch_size", "the run's mini_batch_size"):   # the main job's rule, on the run's
        try:
            multiple_of(sizes.get, str, "--batch-size", of)
        except ValueError as e:
            raise UsageError(str(e)) from None
    return {name: methods.trainer_config(name, ppo, cfg.methods, lr=cfg.lr, batch_size=cfg.batch_size,
                                         epochs=cfg.epochs, response_tokens=response_tokens)
            for name in compared()}


def compared():
    """The methods compared, in ppo_np.METHODS's order: those that sample in their loop, then those that step over
    pairs (their pairs are sampled once, up front)."""
    return [*(name for name, m in METHODS.items() if not m.pairs), *(name for name, m in METHODS.items() if m.pairs)]


# ---------------------------------------------------------------------------------------------- measuring


def traced_peak_mb(fn):
    """Run fn() under tracemalloc -> (its result, MB): the high-water mark of the memory allocated during the call
    and alive at once, NumPy arrays included (NumPy reports its buffers to tracemalloc). What existed before the
    call (models, optimizer moments) is not counted."""
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    try:
        result = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        if not was_tracing:
            tracemalloc.stop()
    return result, (peak - before) / 2 ** 20


def measured(step, responses_per_step):
    """A loop step -> the same step whose stats also hold "compare/responses" (the generated responses it used)
    and, on its first call in this process only, "memory/step_peak_mb" (`traced_peak_mb` of the whole step).

    One step is enough, since every step of a method allocates alike, and only one is traced because tracing
    slows allocation down: 1.7x for sampling and 1.2x for a PPO update of the default model (measured), which
    would distort the wall time of a traced run.
    """
    traced = False

    def step_and_measure(stream, rng):
        nonlocal traced
        if traced:
            stats = step(stream, rng)
        else:
            traced = True
            stats, peak = traced_peak_mb(lambda: step(stream, rng))
            stats["memory/step_peak_mb"] = peak
        stats["compare/responses"] = responses_per_step
        return stats
    return step_and_measure


# ---------------------------------------------------------------------------------------------- the methods


@dataclasses.dataclass
class Setup:
    """One comparison: the finished run every method starts from, the experiment whose folder its files go to
    (run_dir/compare), the held-out prompts every method answers, and their evaluation."""
    run: object                   # a FinishedRun
    experiment: object            # its finished_run.Experiment
    eval_queries: list
    evaluate: object              # evaluate(policy) -> {"eval/<metric>": value} on eval_queries

    def loop_config(self, cfg):
        """The run's RLHFConfig (prompt lengths, seed, checkpoint period) for cfg.steps steps."""
        return dataclasses.replace(self.run.config.rlhf, steps=cfg.steps, max_seconds=None)


def trained(setup, name, train):
    """train(checkpoint, log) -> (policy, history), run or resumed, then its two files recorded as finished."""
    ex = setup.experiment
    policy, history = train(ex.file(f"{name}.npz"), ex.file(f"{name}.jsonl"))
    ex.wrote(f"{name}.npz", f"{name}.jsonl")
    return policy, history


def train_rl(name, setup, trainer_config, cfg, progress):
    """A method that samples in its loop (PPO, RLOO, GRPO, REINFORCE) from the pretrained model against the proxy
    -> (policy, history)."""
    return trained(setup, name, lambda *files: _train(name, setup, trainer_config, cfg, progress, files))


def _train(name, setup, trainer_config, cfg, progress, files, pairs=None):
    """Method `name` as the main job drives it (rlhf.train), each step measured, evaluated every eval_every."""
    run = setup.run
    policy = run.policy_start(METHODS[name].values)
    history = rlhf.train(name, policy, run.task(), trainer_config, setup.loop_config(cfg), *files, pairs=pairs,
                            progress=progress, evaluate=setup.evaluate, evaluate_every=cfg.eval_every,
                            measure=lambda step: measured(step, cfg.batch_size))
    return policy, history


def preference_pairs(setup, cfg, progress):
    """The preference pairs, made once and kept in compare/dpo_pairs.json (named after DPO, which they were made for):
    two reference samples for each of budget / 2 training prompts (the first ones PPO's prompt stream draws), scored by
    the proxy, which chooses the winner (rlhf.sample_pairs, as the main job's --method dpo makes them); the gold
    scorer's verdict is kept for the reward models' agreement. Every method that steps over pairs takes them."""
    file = setup.experiment.file(PAIRS)
    if setup.experiment.kept(PAIRS):
        return read_json(file)
    run = setup.run
    t0 = time.perf_counter()
    prompts, responses, texts, proxy, chosen = rlhf.sample_pairs(run.task(), cfg.budget // 2, run.config.rlhf.seed,
                                                                    progress)
    seconds = time.perf_counter() - t0
    gold = score(run.gold, texts, run.config.sampling).reshape(-1, 2)
    pairs = {"generated": len(responses), "seconds": seconds,
             "pairs": [{"query": prompts[p].tolist(), "responses": [responses[2 * p].tolist(),
                                                                      responses[2 * p + 1].tolist()],
                        "texts": texts[2 * p:2 * p + 2], "proxy": proxy[p].tolist(), "gold": gold[p].tolist(),
                        "chosen": int(chosen[p])} for p in range(len(prompts))]}
    write_json(file, pairs)
    setup.experiment.wrote(PAIRS)
    return pairs


def train_on_pairs(name, setup, trainer_config, cfg, pairs, progress):
    """A method that steps over pairs (DPO) from the pretrained model on the fixed pairs, one pass in
    budget / batch_size steps -> (policy, history)."""
    items = rlhf.pair_items([p["query"] for p in pairs["pairs"]],
                               [r for p in pairs["pairs"] for r in p["responses"]],
                               [p["chosen"] for p in pairs["pairs"]])
    return trained(setup, name, lambda *files: _train(name, setup, trainer_config, cfg, progress, files, items))


def run_best_of_n(setup, cfg, progress):
    """Best-of-n on the held-out prompts, n = budget / P, made once and kept in compare/best_of_n.json -> its record:
    the picks' metrics, the curve over n = 1, 2, 4, ..., n (best_of_n.curve), its cost, and each prompt's first two
    samples with their gold scores (the held-out pairs on which the reward models' agreement is measured)."""
    file = setup.experiment.file("best_of_n.json")
    if setup.experiment.kept("best_of_n.json"):
        return read_json(file)
    run, queries, sampling = setup.run, setup.eval_queries, setup.run.config.sampling
    P, n = len(queries), cfg.budget // len(queries)
    t0 = time.perf_counter()
    rng = np.random.default_rng(run.config.seed + BEST_OF_N_SEED_OFFSET)
    repeated, responses = sample_n(run.ref_model, run.tokenizer, queries, n, sampling, rng, progress)
    texts = texts_of(run.tokenizer, repeated, responses)
    proxy = score(run.proxy, texts, sampling).reshape(P, n)
    seconds = time.perf_counter() - t0
    gold = score(run.gold, texts, sampling).reshape(P, n)
    lexicon = score(run.lexicon, texts, sampling).reshape(P, n)
    picks = np.argmax(proxy, axis=1) + n * np.arange(P)       # the first of equal maxima, as best_of_n breaks ties
    metrics, _ = measure_responses(run.ref_model, run.ref_model, run.tokenizer, run.scorers, queries,
                                   [responses[i] for i in picks], sampling)
    metrics["kl_to_reference"] = kl_best_of_n(n)
    _, peak = traced_peak_mb(lambda: sample_and_score(run, queries[:1], n))
    record = {"n": n, "generated": len(responses), "seconds": seconds, "peak_mb": peak, "metrics": metrics,
              "curve": [{"n": r["n"], "generated": r["n"] * P, **{k: v for k, v in r.items() if k != "n"}}
                        for r in best_of_n_curve(proxy, {"reward": proxy, "gold": gold, "lexicon": lexicon},
                                                       run.scorers, n)],
              "held_out_pairs": [{"texts": texts[i * n:i * n + 2], "gold": gold[i, :2].tolist()} for i in range(P)]}
    write_json(file, record)
    setup.experiment.wrote("best_of_n.json")
    return record


def sample_and_score(run, queries, n):
    """n reference samples per query, scored by the proxy, from a throwaway generator: best-of-n's work, for
    measuring its memory apart from the timed run."""
    sampling = run.config.sampling
    repeated, responses = sample_n(run.ref_model, run.tokenizer, queries, n, sampling, np.random.default_rng(0))
    return score(run.proxy, texts_of(run.tokenizer, repeated, responses), sampling)


# ---------------------------------------------------------------------------------------------- summaries


def rl_summary(history, final, batch_size, extra_seconds=0.0):
    """One trained method's record: final metrics, its curve (evaluated steps), generated responses, wall time and
    memory. final: the metrics of the final policy. extra_seconds: up-front work (DPO's sampling and scoring)."""
    def point(step, metrics):
        return {"step": step, "generated": step * batch_size, "kl": metrics["kl_to_reference"],
                **{k: metrics[k] for k in CURVE_KEYS}}

    curve = [point(h["step"], measured_in(h)) for h in history if measured_in(h)]
    if curve[-1]["step"] != history[-1]["step"]:
        curve.append(point(history[-1]["step"], final))
    peaks = [h["memory/step_peak_mb"] for h in history if "memory/step_peak_mb" in h]
    return {"steps": history[-1]["step"], "generated": int(sum(h.get("compare/responses", 0) for h in history)),
            "wall_seconds": float(sum(h.get("time/step", 0.0) for h in history) + extra_seconds),
            "peak_mb": max(peaks) if peaks else None, "metrics": final, "curve": curve}


def final_metrics(history, policy, evaluate):
    """The last step's evaluation, or the final policy evaluated now if the last step was not an evaluated one."""
    return measured_in(history[-1]) or measured_in(evaluate(policy))


def reward_model_agreement(setup, pairs, bon):
    """A Bradley-Terry reward model fitted on DPO's pairs (the proxy's choices, the proxy's n-gram features; a GPT
    reward model proxy has none, and the gold scorer's, of the same recipe, stand in), and how often
    it and the classifier (the proxy) agree with the gold scorer on which text of a pair is better -> dict.

    Pairs whose two texts the gold scorer scores alike are left out. On DPO's own pairs the proxy's agreement is the
    share of DPO's labels that the gold scorer confirms."""
    run = setup.run
    train = [(p["texts"][p["chosen"]], p["texts"][1 - p["chosen"]]) for p in pairs["pairs"]]
    featurizer = getattr(run.proxy, "featurizer", None) or run.gold.featurizer
    bradley_terry = fit_bradley_terry(train, featurizer)
    with writing(setup.experiment.file("bradley_terry.npz")):
        bradley_terry.save(setup.experiment.file("bradley_terry.npz"))
    setup.experiment.wrote("bradley_terry.npz")
    out = {"fitted_on_pairs": len(train),
           "bradley_terry_fit": {k: bradley_terry.info[k] for k in ("n_iter", "train_loss")}}
    # compare.json's keys: "dpo_pairs" the preference pairs (made for DPO), "held_out_pairs" best-of-n's
    for split, rows in (("dpo_pairs", pairs["pairs"]), ("held_out_pairs", bon["held_out_pairs"])):
        ordered = [tuple(r["texts"]) if r["gold"][0] > r["gold"][1] else tuple(r["texts"][::-1])
                   for r in rows if r["gold"][0] != r["gold"][1]]
        out[split] = {"pairs": len(ordered), **{
            name: agreement(scorer, ordered, run.config.sampling.forward_batch_size) if ordered else None
            for name, scorer in (("proxy", run.proxy), ("bradley_terry", bradley_terry))}}
    return out


# ---------------------------------------------------------------------------------------------- the experiment


def run_compare(run_dir, cfg, progress=True, cache_dir=None, kernels="fast"):
    """The comparison on a finished run -> results, also written to compare.json, compare.png and compare.md.

    Refuses when the run is not finished, when compare/ holds results of other settings (its manifest, which also
    records the engine's `kernels`), or while another process works in the run folder. Resumes from the files under
    compare/ after a kill.
    """
    settings = functools.partial(built_from, cfg, kernels=kernels)
    names = {o.field.removeprefix("methods."): o.flag for o in compare_options()}
    with experiment(run_dir, "compare", settings, cache_dir, names=names) as (run, ex), mg.kernels.using(kernels):
        eval_queries = run.held_out(cfg.eval_prompts)
        setup = Setup(run, ex, eval_queries, run.evaluator(run.scorers, eval_queries, kl="exact"))
        results = compare_methods(setup, cfg, trainer_configs(cfg, run.config.ppo, run.config.sampling.response_tokens),
                                  progress)
        write_json(path(run_dir, "compare.json"), results)
        write_compare_plot(results, path(run_dir, "compare.png"))
        with writing(path(run_dir, "compare.md")), atomic_write(path(run_dir, "compare.md"), "w") as f:
            f.write(format_report(results))
        return results


def built_from(cfg, run, kernels="fast"):
    """What the comparison is built from besides the run's files: its settings, the run's own settings that shape it
    (FinishedRun.shaping), the KL it measures and the engine's kernels. Refuses settings that do not fit the run (a
    batch its chunks do not divide, more held-out prompts than it has) before anything is written."""
    trainer_configs(cfg, run.config.ppo, run.config.sampling.response_tokens)
    run.held_out(cfg.eval_prompts, "--eval-prompts")
    return {**cfg.record(), **run.shaping(), "kl_to_reference": "exact", "kernels": kernels}


def compare_methods(setup, cfg, configs, progress):
    """Every method in turn, each resuming from its files -> results (the dict compare.json holds)."""
    results, reference, pairs = {}, None, None
    for name in compared():
        log.info("compare: %s", METHODS[name].label)
        if METHODS[name].pairs:
            pairs = pairs or preference_pairs(setup, cfg, progress)
            policy, history = train_on_pairs(name, setup, configs[name], cfg, pairs, progress)
            results[name] = rl_summary(history, final_metrics(history, policy, setup.evaluate), cfg.batch_size,
                                       pairs["seconds"])
            results[name]["generated"] = pairs["generated"]     # sampled up front; its log counts the pairs' use
            continue
        policy, history = train_rl(name, setup, configs[name], cfg, progress)
        reference = reference or measured_in(history[0])
        results[name] = rl_summary(history, final_metrics(history, policy, setup.evaluate), cfg.batch_size)
    log.info("compare: best-of-n")
    bon = run_best_of_n(setup, cfg, progress)
    results["best_of_n"] = {"steps": 0, "n": bon["n"], "generated": bon["generated"], "wall_seconds": bon["seconds"],
                            "peak_mb": bon["peak_mb"], "metrics": bon["metrics"], "curve": bon["curve"]}
    for name, config in configs.items():
        results[name]["config"] = dataclasses.asdict(config)
    for name in results:
        results[name]["label"] = label_of(name)
    return {"settings": cfg.record(), "reference": reference, "methods": results,
            "reward_models": reward_model_agreement(setup, pairs or preference_pairs(setup, cfg, progress), bon)}


def label_of(column):
    """How the table and the plot name a column: "reference", a method's label, or best-of-n."""
    return {"reference": "reference", "best_of_n": BEST_OF_N}.get(column) or METHODS[column].label


# ---------------------------------------------------------------------------------------------- the table

# the KL row says which KL it is: the exact one (evaluate.exact_kl), and best-of-n's formula
LABELS_OF_METRICS = {"kl_to_reference": "KL to reference (exact; best-of-n: bound)"}
COSTS = (("generated responses", "generated", "{:,d}"), ("training steps", "steps", "{:d}"),
         ("wall time (s)", "wall_seconds", "{:.1f}"), ("step memory (MB)", "peak_mb", "{:.1f}"))


def format_table(results):
    """The comparison as report.format_table makes it: one column per method (the reference first), one row per
    measure, then the cost of each method."""
    cost = {"reference": {}, **results["methods"]}
    columns = {label_of(c): results["reference"] if c == "reference" else results["methods"][c]["metrics"]
               for c in cost}
    return format_metrics(columns, [(label, [fmt.format(cost[c][key]) if cost[c].get(key) is not None else "-"
                                             for c in cost]) for label, key, fmt in COSTS], labels=LABELS_OF_METRICS)


def format_agreement(results):
    """The reward models' agreement with the gold scorer, as text."""
    a = results["reward_models"]
    lines = [f"Agreement with the gold scorer on which text of a pair is better (1 = always, 1/2 = chance); the "
             f"Bradley-Terry model is fitted on the {a['fitted_on_pairs']:,} preference pairs, labelled by the proxy:"]
    for split, what in (("dpo_pairs", "the preference pairs (training prompts)"), ("held_out_pairs",
                                                                                   "held-out pairs")):
        if a[split]["pairs"]:
            lines.append(f"- {what}, n={a[split]['pairs']}: classifier reward model {a[split]['proxy']:.3f}, "
                         f"Bradley-Terry {a[split]['bradley_terry']:.3f}")
        else:
            lines.append(f"- {what}: none whose two texts the gold scorer tells apart")
    return "\n".join(lines)


def in_words(names):
    """["a", "b", "c"] -> "a, b and c"."""
    return " and ".join(filter(None, (", ".join(names[:-1]), names[-1]))) if names else ""


def format_report(results):
    """compare.md: what was compared and how, the table and the reward models' agreement."""
    s, bon, compared = results["settings"], results["methods"]["best_of_n"], list(results["methods"])[:-1]
    sampling = [n for n in compared if n in METHODS and not METHODS[n].pairs]
    on_pairs = [n for n in compared if n in METHODS and METHODS[n].pairs]

    def sampled(name):
        group = METHODS[name].group
        per_prompt = results["methods"][name].get("config", {}).get(group) if group else None
        return f"{label_of(name)} ({per_prompt} responses per prompt)" if per_prompt else label_of(name)

    names = ", ".join(label_of(n) for n in compared)
    return "\n".join([
        f"# {names} and best-of-n with the same budget", "",
        f"Every method generated {s['budget']:,} responses, each scored once by the proxy (the run's reward model): "
        f"{in_words([sampled(n) for n in sampling])} in {s['budget'] // s['batch_size']} steps of {s['batch_size']}; "
        f"{in_words([label_of(n) for n in on_pairs])} as two reference samples for each of {s['budget'] // 2:,} "
        f"prompts, the proxy choosing each pair's winner; best-of-n as n={bon['n']} reference samples for each "
        "held-out prompt. The gold scorer only judges. Metrics are measured on the held-out prompts, one response "
        "each (best-of-n: the proxy's pick); best-of-n's KL is the bound log n - (n-1)/n. Wall time: training steps "
        "and up-front sampling and scoring, without evaluations. Step memory: tracemalloc's high-water mark of one "
        "step's allocations (best-of-n: sampling and scoring one prompt's n responses).", "",
        format_table(results), "", format_agreement(results), ""])
