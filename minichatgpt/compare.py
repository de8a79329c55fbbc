"""PPO, RLOO, GRPO, DPO and best-of-n on one finished run, each given the same budget of generated responses.

Every method starts from the run's pretrained model and buys proxy reward (the run's reward model) with distance
from it; the gold scorer only judges. The budget is the number of responses a method may generate and have the
proxy score, N = budget:

    PPO, RLOO, GRPO  N / batch_size steps of batch_size policy samples, each scored once: PPO one response per
                     prompt, RLOO k and GRPO G consecutive responses per prompt (so N / k prompts, not N)
    DPO              N reference samples, two per prompt for N / 2 training prompts, scored once to choose each
                     pair's winner; then N / batch_size steps of batch_size / 2 pairs: one pass over the pairs
    best-of-n        no training: n = N / P reference samples for each of the P held-out prompts, at answer time,
                     the one the proxy scores highest kept

So every method asks the proxy exactly N questions (evaluation aside, which only measures). The RL methods and
DPO spend them before they answer and then answer each prompt with one sample; best-of-n spends them on the
prompts it answers, and would spend them again on every new prompt. That is its real price, which a budget of
training samples cannot show; what the budget does hold equal is the proxy's information about the task.
Each training method also makes the same number of gradient updates of the same size: `epochs` passes over
each step's batch_size responses, in mini-batches of the run's mini_batch_size responses (DPO: half as many
pairs, two responses each).

Every eval_every steps the policy answers P held-out prompts, one sample each from its own generator, measured
by `evaluate_policy` (proxy "reward" and "gold" scores, KL, collapse, length, reference NLL). Best-of-n is
measured on its picks; its KL is the formula log n - (n - 1)/n (an upper bound). Wall time is the logged time
of the training steps and of the up-front sampling and scoring (evaluations excluded); memory is one step's
working memory (`measured`). A Bradley-Terry reward model is fitted on DPO's pairs and its agreement with the
gold scorer is reported beside the classifier reward model's.

Everything is written under run_dir/compare/ (one checkpoint and JSON-lines log per method, DPO's pairs, the
best-of-n samples' results), so a killed comparison started again resumes; compare.json, compare.png and
compare.md go into the run folder.
"""
import dataclasses
import logging
import math
import os
import time
import tracemalloc

import numpy as np

import minigpt_np as mg
from minigpt_np.checkpoint import atomic_write
from ppo_np.dpo import DPOConfig, DPOTrainer, make_pairs
from ppo_np.grpo import GRPOConfig, GRPOTrainer
from ppo_np.rloo import RLOOConfig, RLOOTrainer
from reward import load_scorer
from reward.bradley_terry import agreement, fit_bradley_terry

from . import stages
from .evaluate import measure_responses
from .overopt import best_of_n, evaluator, finished_run, input_hashes, kl_best_of_n, reference_responses
from .pipeline import EVAL_SEED_OFFSET
from .report import TABLE, write_compare_plot
from .rlhf import PromptStream, fingerprint, rollout_step, texts_of, train_loop, train_ppo
from .run_folder import Lock, Manifest, path, read_json, write_json

log = logging.getLogger(__name__)

METHODS = ("ppo", "rloo", "grpo", "dpo", "best_of_n")
LABELS = {"reference": "reference", "ppo": "PPO", "rloo": "RLOO", "grpo": "GRPO", "dpo": "DPO",
          "best_of_n": "best-of-n"}
PAIRS_SEED_OFFSET = 2          # DPO's reference samples: rlhf.seed + 2 (the loop draws from seed and seed + 1)
BEST_OF_N_SEED_OFFSET = EVAL_SEED_OFFSET + 1   # best-of-n's samples differ from the evaluation's one per prompt


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """What the comparison is built from: the main run's PPO settings for every method, and each method's own
    coefficient. Those were measured on the default run (README, "Beyond PPO"): RLOO's beta is PPO's, so both
    optimise one objective; GRPO's and DPO's replace TRL's defaults, which ran far from the reference here."""
    budget: int = 3584            # generated responses per method, each scored once by the proxy: 56 x 64, the main
                                  # run's 55 steps rounded up to a multiple of eval_prompts (best-of-n's n = 14)
    batch_size: int = 64          # responses per training step, every method (DPO: batch_size / 2 pairs)
    epochs: int = 4               # passes over each step's batch (PPO ppo_epochs, GRPO num_iterations, RLOO, DPO)
    lr: float = 2e-4              # Adam learning rate of every method (the run's PPO lr)
    rloo_k: int = 4               # RLOO: responses per prompt
    rloo_kl_coef: float = 0.2     # RLOO: beta of the sequence KL in the reward; PPO's init_kl_coef: PPO's objective
    grpo_group_size: int = 4      # GRPO: responses per prompt, G
    grpo_beta: float = 0.2        # GRPO: weight of the k3 KL in the loss. TRL 0.14.0's 0.04 let the run reach 35.6
                                  # nats with "smart" in 76% of the answers (measured); 0.2 keeps it near 8
    dpo_beta: float = 0.5         # DPO: beta of the implicit reward. TRL's 0.1 drifted to 23.8 nats and raised the
                                  # reference's NLL of the answers from 5.15 to 6.61 (measured); 0.5: 8.2 and 5.63
    eval_prompts: int = 256       # held-out prompts per evaluation (the run's); best-of-n's n = budget / eval_prompts
    eval_every: int = 5           # training steps between evaluations

    def __post_init__(self):
        for name in ("budget", "batch_size", "epochs", "rloo_k", "grpo_group_size", "eval_prompts", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name, positive in (("lr", True), ("rloo_kl_coef", False), ("grpo_beta", False), ("dpo_beta", True)):
            value = getattr(self, name)
            if not (math.isfinite(value) and (value > 0 if positive else value >= 0)):
                raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value}")
        if self.rloo_k < 2 or self.grpo_group_size < 2:
            raise ValueError("rloo_k and grpo_group_size must be >= 2: the baseline is the other responses to a prompt")
        for name in ("rloo_k", "grpo_group_size"):
            if self.batch_size % getattr(self, name):
                raise ValueError(f"batch_size {self.batch_size} must be a multiple of {name} {getattr(self, name)}")
        if self.batch_size % 2:
            raise ValueError(f"batch_size must be even: DPO takes batch_size / 2 pairs per step, got {self.batch_size}")
        if self.budget % self.batch_size:
            raise ValueError(f"budget {self.budget} must be a multiple of batch_size {self.batch_size}")
        if self.budget % self.eval_prompts or self.budget < 2 * self.eval_prompts:
            raise ValueError(f"budget {self.budget} must be a multiple of eval_prompts {self.eval_prompts}, at least "
                             "twice it: best-of-n spends it as n = budget / eval_prompts >= 2 samples per prompt")

    @property
    def steps(self):
        """Training steps of every method: budget / batch_size."""
        return self.budget // self.batch_size


def trainer_configs(cfg, ppo):
    """Each training method's config: the comparison's lr, batch and epochs, the run's forward and mini-batch sizes,
    clip range and seed, and the method's own coefficients -> {method: config}. ppo: the run's PPOConfig."""
    for name in ("forward_batch_size", "mini_batch_size"):
        if cfg.batch_size % getattr(ppo, name):
            raise ValueError(f"--batch-size {cfg.batch_size} must be a multiple of the run's {name} "
                             f"{getattr(ppo, name)}")
    shared = dict(lr=cfg.lr, batch_size=cfg.batch_size, forward_batch_size=ppo.forward_batch_size,
                  mini_batch_size=ppo.mini_batch_size, seed=ppo.seed)
    return {
        "ppo": dataclasses.replace(ppo, ppo_epochs=cfg.epochs, **shared),
        "rloo": RLOOConfig(ppo_epochs=cfg.epochs, rloo_k=cfg.rloo_k, kl_coef=cfg.rloo_kl_coef,
                           cliprange=ppo.cliprange, **shared),
        "grpo": GRPOConfig(num_iterations=cfg.epochs, group_size=cfg.grpo_group_size, beta=cfg.grpo_beta,
                           epsilon=ppo.cliprange, **shared),
        # a pair is two rows: half as many pairs per step, per forward pass and per gradient update
        "dpo": DPOConfig(lr=cfg.lr, beta=cfg.dpo_beta, batch_size=cfg.batch_size // 2,
                         forward_batch_size=max(1, ppo.forward_batch_size // 2),
                         mini_batch_size=max(1, ppo.mini_batch_size // 2), epochs=cfg.epochs, seed=ppo.seed),
    }


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
    """What every method starts from and is measured with: the run's files, settings, models, scorers, prompts."""
    run_dir: str
    folder: str                   # run_dir/compare
    config: object                # the run's RunConfig
    tokenizer: object
    ref_model: object
    proxy: object                 # the run's reward model, what every method optimises
    gold: object                  # the gold scorer, which only judges
    train_queries: list
    eval_queries: list
    inputs: dict                  # sha256 of the run's files, part of every checkpoint's fingerprint
    evaluate: object              # evaluate(policy) -> {"eval/<metric>": value} on eval_queries

    @property
    def fbs(self):
        return self.config.ppo.forward_batch_size

    def loop_config(self, cfg):
        """The run's RLHFConfig (prompt and response lengths, eos, seed, checkpoint period) for cfg.steps steps."""
        return dataclasses.replace(self.config.rlhf, steps=cfg.steps, max_seconds=None)

    def pretrained(self):
        return mg.load_checkpoint(path(self.run_dir, "gpt_pretrained.npz"))


def train_rl(name, setup, trainer_config, cfg, progress):
    """PPO (through train_ppo), RLOO or GRPO from the pretrained model against the proxy -> (policy, history)."""
    s, rlhf = setup, setup.loop_config(cfg)
    files = path(s.folder, f"{name}.npz"), path(s.folder, f"{name}.jsonl")
    policy = s.pretrained()
    if name == "ppo":
        policy.add_value_head(seed=s.config.seed)
        history = train_ppo(policy, s.ref_model, s.tokenizer, s.proxy, s.train_queries, trainer_config, rlhf, *files,
                            inputs=s.inputs, progress=progress, evaluate=s.evaluate, evaluate_every=cfg.eval_every,
                            measure=lambda step: measured(step, cfg.batch_size))
        return policy, history
    trainer_class, group_size = {"rloo": (RLOOTrainer, cfg.rloo_k), "grpo": (GRPOTrainer, cfg.grpo_group_size)}[name]
    trainer = trainer_class(policy, s.ref_model, trainer_config, pad_token_id=s.tokenizer.eos_token_id)

    def step(prompts, rng):
        return rollout_step(trainer, s.tokenizer, s.proxy, prompts, rlhf, rng, group_size=group_size)

    fp = fingerprint(trainer_config, rlhf, s.train_queries, s.inputs, key=name)
    return policy, train_loop(trainer, measured(step, cfg.batch_size), s.train_queries, rlhf, *files, fp,
                              name=LABELS[name], progress=progress, evaluate=s.evaluate, evaluate_every=cfg.eval_every)


def dpo_pairs(setup, cfg, progress):
    """DPO's data, made once and kept in compare/dpo_pairs.json: two reference samples for each of budget / 2
    training prompts (the first ones PPO's prompt stream draws), scored by the proxy, which chooses the winner
    (ppo_np.dpo.make_pairs); the gold scorer's verdict is kept for the reward models' agreement."""
    file = path(setup.folder, "dpo_pairs.json")
    try:
        return read_json(file)
    except FileNotFoundError:
        pass
    s, rlhf = setup, setup.config.rlhf
    t0 = time.perf_counter()
    prompts = PromptStream(s.train_queries, np.random.default_rng(rlhf.seed)).next_batch(cfg.budget // 2)
    rng = np.random.default_rng(rlhf.seed + PAIRS_SEED_OFFSET)
    queries, responses = reference_responses(s.ref_model, s.tokenizer, prompts, 2, rlhf, rng, s.fbs, progress)
    texts = texts_of(s.tokenizer, queries, responses)
    proxy = s.proxy.score(texts, forward_batch_size=s.fbs).reshape(-1, 2)
    chosen = make_pairs(proxy, rng)
    seconds = time.perf_counter() - t0
    gold = s.gold.score(texts, forward_batch_size=s.fbs).reshape(-1, 2)
    pairs = {"generated": len(responses), "seconds": seconds,
             "pairs": [{"query": prompts[p].tolist(), "responses": [responses[2 * p].tolist(),
                                                                      responses[2 * p + 1].tolist()],
                        "texts": texts[2 * p:2 * p + 2], "proxy": proxy[p].tolist(), "gold": gold[p].tolist(),
                        "chosen": int(chosen[p])} for p in range(len(prompts))]}
    write_json(file, pairs)
    return pairs


def dpo_step(trainer, pairs):
    """One DPO step on the next batch_size fixed pairs of the stream -> stats (with time/step, as rollout_step's)."""
    t0 = time.perf_counter()
    queries, chosen, rejected = (list(column) for column in zip(*pairs.next_batch(trainer.config.batch_size)))
    stats = trainer.step(queries, chosen, rejected)
    stats["time/step"] = time.perf_counter() - t0
    return stats


def train_dpo(setup, trainer_config, cfg, pairs, progress):
    """DPO from the pretrained model on the fixed pairs, one pass in budget / batch_size steps -> (policy, history)."""
    s, rlhf = setup, setup.loop_config(cfg)
    items = [tuple(np.asarray(a, dtype=np.int64) for a in (p["query"], p["responses"][p["chosen"]],
                                                           p["responses"][1 - p["chosen"]])) for p in pairs["pairs"]]
    policy = s.pretrained()
    trainer = DPOTrainer(policy, s.ref_model, trainer_config, pad_token_id=s.tokenizer.eos_token_id)
    fp = fingerprint(trainer_config, rlhf, [np.concatenate(item) for item in items], s.inputs, key="dpo")
    history = train_loop(trainer, measured(lambda stream, rng: dpo_step(trainer, stream), cfg.batch_size), items, rlhf,
                         path(s.folder, "dpo.npz"), path(s.folder, "dpo.jsonl"), fp, name="DPO", progress=progress,
                         evaluate=s.evaluate, evaluate_every=cfg.eval_every)
    return policy, history


def run_best_of_n(setup, cfg, progress):
    """Best-of-n on the held-out prompts, n = budget / P, made once and kept in compare/best_of_n.json -> its record:
    the picks' metrics, the curve over n = 1, 2, 4, ..., n, its cost, and each prompt's first two samples with their
    gold scores (the held-out pairs on which the reward models' agreement is measured)."""
    file = path(setup.folder, "best_of_n.json")
    try:
        return read_json(file)
    except FileNotFoundError:
        pass
    s, P = setup, len(setup.eval_queries)
    n = cfg.budget // P
    t0 = time.perf_counter()
    rng = np.random.default_rng(s.config.seed + BEST_OF_N_SEED_OFFSET)
    queries, responses = reference_responses(s.ref_model, s.tokenizer, s.eval_queries, n, s.config.rlhf, rng, s.fbs,
                                             progress)
    texts = texts_of(s.tokenizer, queries, responses)
    proxy = s.proxy.score(texts, forward_batch_size=s.fbs).reshape(P, n)
    seconds = time.perf_counter() - t0
    gold = s.gold.score(texts, forward_batch_size=s.fbs).reshape(P, n)
    picks = np.argmax(proxy, axis=1) + n * np.arange(P)       # the first of equal maxima, as best_of_n breaks ties
    metrics, _ = measure_responses(s.ref_model, s.ref_model, s.tokenizer, {"reward": s.proxy, "gold": s.gold},
                                   s.eval_queries, [responses[i] for i in picks], s.fbs)
    metrics["kl_to_reference"] = kl_best_of_n(n)
    _, peak = traced_peak_mb(lambda: sample_and_score(s, s.eval_queries[:1], n))
    record = {"n": n, "generated": len(responses), "seconds": seconds, "peak_mb": peak, "metrics": metrics,
              "curve": best_of_n_points(proxy, gold, n),
              "held_out_pairs": [{"texts": texts[i * n:i * n + 2], "gold": gold[i, :2].tolist()} for i in range(P)]}
    write_json(file, record)
    return record


def sample_and_score(setup, queries, n):
    """n reference samples per query, scored by the proxy, from a throwaway generator: best-of-n's work, for
    measuring its memory apart from the timed run."""
    s = setup
    repeated, responses = reference_responses(s.ref_model, s.tokenizer, queries, n, s.config.rlhf,
                                              np.random.default_rng(0), s.fbs)
    return s.proxy.score(texts_of(s.tokenizer, repeated, responses), forward_batch_size=s.fbs)


def best_of_n_points(proxy, gold, n_max):
    """The curve of best-of-n for n = 1, 2, 4, ... and n_max: expected proxy and gold scores and positive shares of
    the proxy's pick (overopt.best_of_n, over every n-subset), KL_bon and the samples it took. (P, n_max) each."""
    P = len(proxy)
    ns = sorted({2 ** k for k in range(int(math.log2(n_max)) + 1)} | {n_max})
    return [{"n": n, "generated": n * P, "kl": kl_best_of_n(n),
             "reward_mean": best_of_n(proxy, proxy, n), "gold_mean": best_of_n(proxy, gold, n),
             "reward_positive": best_of_n(proxy, (proxy > 0).astype(float), n),
             "gold_positive": best_of_n(proxy, (gold > 0).astype(float), n)} for n in ns]


# ---------------------------------------------------------------------------------------------- summaries


def rl_summary(history, final, batch_size, extra_seconds=0.0):
    """One trained method's record: final metrics, its curve (evaluated steps), generated responses, wall time and
    memory. final: the metrics of the final policy. extra_seconds: up-front work (DPO's sampling and scoring)."""
    curve = [{"step": h["step"], "generated": h["step"] * batch_size, "kl": max(h["eval/kl_to_reference"], 0.0),
              **{k: h[f"eval/{k}"] for k in ("reward_mean", "gold_mean", "reward_positive", "gold_positive")}}
             for h in history if "eval/reward_mean" in h]
    if curve[-1]["step"] != history[-1]["step"]:
        step = history[-1]["step"]
        curve.append({"step": step, "generated": step * batch_size, "kl": max(final["kl_to_reference"], 0.0),
                      **{k: final[k] for k in ("reward_mean", "gold_mean", "reward_positive", "gold_positive")}})
    peaks = [h["memory/step_peak_mb"] for h in history if "memory/step_peak_mb" in h]
    return {"steps": history[-1]["step"], "generated": int(sum(h.get("compare/responses", 0) for h in history)),
            "wall_seconds": float(sum(h.get("time/step", 0.0) for h in history) + extra_seconds),
            "peak_mb": max(peaks) if peaks else None, "metrics": final, "curve": curve}


def final_metrics(history, policy, evaluate):
    """The last step's evaluation, or the final policy evaluated now if the last step was not an evaluated one."""
    last = history[-1] if "eval/reward_mean" in history[-1] else {"step": history[-1]["step"], **evaluate(policy)}
    return {k[len("eval/"):]: v for k, v in last.items() if k.startswith("eval/")}


def reward_model_agreement(setup, pairs, bon):
    """A Bradley-Terry reward model fitted on DPO's pairs (the proxy's choices, the proxy's features), and how often
    it and the classifier (the proxy) agree with the gold scorer on which text of a pair is better -> dict.

    Pairs whose two texts the gold scorer scores alike are left out. On DPO's own pairs the proxy's agreement is the
    share of DPO's labels that the gold scorer confirms."""
    train = [(p["texts"][p["chosen"]], p["texts"][1 - p["chosen"]]) for p in pairs["pairs"]]
    bradley_terry = fit_bradley_terry(train, setup.proxy.featurizer)
    bradley_terry.save(path(setup.folder, "bradley_terry.npz"))
    out = {"fitted_on_pairs": len(train),
           "bradley_terry_fit": {k: bradley_terry.info[k] for k in ("n_iter", "train_loss")}}
    for split, rows in (("dpo_pairs", pairs["pairs"]), ("held_out_pairs", bon["held_out_pairs"])):
        ordered = [tuple(r["texts"]) if r["gold"][0] > r["gold"][1] else tuple(r["texts"][::-1])
                   for r in rows if r["gold"][0] != r["gold"][1]]
        out[split] = {"pairs": len(ordered), **{name: agreement(scorer, ordered, setup.fbs) if ordered else None
                                                for name, scorer in (("proxy", setup.proxy),
                                                                     ("bradley_terry", bradley_terry))}}
    return out


# ---------------------------------------------------------------------------------------------- the experiment


def run_compare(run_dir, cfg, progress=True, cache_dir=None):
    """The comparison on a finished run -> results, also written to compare.json, compare.png and compare.md.

    Refuses when the run is not finished, when compare/ holds results of other settings (its manifest), or while
    another process works in the run folder. Resumes from the files under compare/ after a kill.
    """
    folder = path(run_dir, "compare")
    finished_run(run_dir)                   # refuse before the lock, which would create the folder
    with Lock(run_dir):
        run, config = finished_run(run_dir)
        configs = trainer_configs(cfg, config.ppo)
        own = Manifest(folder)
        built_from = {**{k: str(v) for k, v in dataclasses.asdict(cfg).items()}, **input_hashes(run),
                      "run ppo": str(dataclasses.asdict(config.ppo)), "run rlhf": str(dataclasses.asdict(config.rlhf)),
                      "run seed": str(config.seed)}
        own.check("compare", built_from, [], f"delete {folder} to compare with these settings")
        if "compare" not in own.stages:
            own.start("compare", built_from)
        setup = load_setup(run_dir, folder, config, cfg, run, cache_dir)
        results = compare_methods(setup, cfg, configs, progress)
        write_json(path(run_dir, "compare.json"), results)
        write_compare_plot(results, path(run_dir, "compare.png"))
        with atomic_write(path(run_dir, "compare.md"), "w") as f:
            f.write(format_report(results))
        own.finish("compare", [])
        return results


def load_setup(run_dir, folder, config, cfg, run, cache_dir):
    """The run's tokenizer, reference, proxy and gold scorer, training prompts and cfg.eval_prompts held-out ones."""
    _, _, test, _ = stages.load_data(config, cache_dir)
    tokenizer = mg.load_tokenizer(path(run_dir, "tokenizer.json"))
    ref_model = mg.load_checkpoint(path(run_dir, "gpt_pretrained.npz"))
    proxy, gold = load_scorer(path(run_dir, "reward.npz")), load_scorer(path(run_dir, "gold.npz"))
    train_queries, eval_queries = stages.prompts(config, tokenizer, test)
    if cfg.eval_prompts > len(eval_queries):
        raise ValueError(f"the run has {len(eval_queries)} held-out prompts, fewer than --eval-prompts "
                         f"{cfg.eval_prompts}; use --eval-prompts {len(eval_queries)} or fewer")
    eval_queries = eval_queries[:cfg.eval_prompts]
    evaluate = evaluator(ref_model, tokenizer, {"reward": proxy, "gold": gold}, eval_queries, config.rlhf,
                         config.ppo.forward_batch_size, config.seed + EVAL_SEED_OFFSET)
    return Setup(run_dir, folder, config, tokenizer, ref_model, proxy, gold, train_queries, eval_queries,
                 input_hashes(run), evaluate)


def compare_methods(setup, cfg, configs, progress):
    """Every method in turn, each resuming from its files -> results (the dict compare.json holds)."""
    os.makedirs(setup.folder, exist_ok=True)
    methods, reference = {}, None
    for name in ("ppo", "rloo", "grpo"):
        log.info("compare: %s", LABELS[name])
        policy, history = train_rl(name, setup, configs[name], cfg, progress)
        reference = reference or {k[len("eval/"):]: v for k, v in history[0].items() if k.startswith("eval/")}
        methods[name] = rl_summary(history, final_metrics(history, policy, setup.evaluate), cfg.batch_size)
    log.info("compare: DPO")
    pairs = dpo_pairs(setup, cfg, progress)
    policy, history = train_dpo(setup, configs["dpo"], cfg, pairs, progress)
    methods["dpo"] = rl_summary(history, final_metrics(history, policy, setup.evaluate), cfg.batch_size,
                                pairs["seconds"])
    methods["dpo"]["generated"] = pairs["generated"]     # sampled up front; its log counts the pairs' use
    log.info("compare: best-of-n")
    bon = run_best_of_n(setup, cfg, progress)
    methods["best_of_n"] = {"steps": 0, "n": bon["n"], "generated": bon["generated"], "wall_seconds": bon["seconds"],
                            "peak_mb": bon["peak_mb"], "metrics": bon["metrics"], "curve": bon["curve"]}
    for name, config in configs.items():
        methods[name]["config"] = dataclasses.asdict(config)
    for name in methods:
        methods[name]["label"] = LABELS[name]
    return {"settings": dataclasses.asdict(cfg), "reference": reference, "methods": methods,
            "reward_models": reward_model_agreement(setup, pairs, bon)}


# ---------------------------------------------------------------------------------------------- the table


def format_table(results):
    """The comparison as a Markdown table, aligned so that it also reads as plain text: one column per method
    (the reference first), one row per measure of report.TABLE, then the cost of each method."""
    columns = ["reference", *results["methods"]]
    rows = [[f"held-out prompts (n={results['reference']['n']})", *(LABELS[c] for c in columns)]]
    metrics = {"reference": results["reference"], **{m: r["metrics"] for m, r in results["methods"].items()}}

    def cell(m, key, fmt):
        keys = key if isinstance(key, tuple) else (key,)
        return " / ".join(fmt.format(m[k]) for k in keys if k in m) or "-"

    for label, key, fmt in TABLE:
        rows.append([label, *(cell(metrics[c], key, fmt) for c in columns)])
    rows.append(["the top word", *(metrics[c].get("top_word") or "-" for c in columns)])
    cost = {"reference": {}, **results["methods"]}
    for label, key, fmt in (("generated responses", "generated", "{:,d}"), ("training steps", "steps", "{:d}"),
                            ("wall time (s)", "wall_seconds", "{:.1f}"), ("step memory (MB)", "peak_mb", "{:.1f}")):
        rows.append([label, *(fmt.format(cost[c][key]) if cost[c].get(key) is not None else "-" for c in columns)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns) + 1)]
    lines = ["| " + " | ".join(text.ljust(w) if i == 0 else text.rjust(w) for i, (text, w) in enumerate(zip(r, widths)))
             + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|")
    return "\n".join(lines)


def format_agreement(results):
    """The reward models' agreement with the gold scorer, as text."""
    a = results["reward_models"]
    lines = [f"Agreement with the gold scorer on which text of a pair is better (1 = always, 1/2 = chance); the "
             f"Bradley-Terry model is fitted on DPO's {a['fitted_on_pairs']:,} pairs, labelled by the proxy:"]
    for split, what in (("dpo_pairs", "DPO's pairs (training prompts)"), ("held_out_pairs", "held-out pairs")):
        if a[split]["pairs"]:
            lines.append(f"- {what}, n={a[split]['pairs']}: classifier reward model {a[split]['proxy']:.3f}, "
                         f"Bradley-Terry {a[split]['bradley_terry']:.3f}")
        else:
            lines.append(f"- {what}: none whose two texts the gold scorer tells apart")
    return "\n".join(lines)


def format_report(results):
    """compare.md: what was compared and how, the table and the reward models' agreement."""
    s, bon = results["settings"], results["methods"]["best_of_n"]
    return "\n".join([
        "# PPO, RLOO, GRPO, DPO and best-of-n with the same budget", "",
        f"Every method generated {s['budget']:,} responses, each scored once by the proxy (the run's reward model): "
        f"PPO, RLOO (k={s['rloo_k']}) and GRPO (G={s['grpo_group_size']}) in {s['budget'] // s['batch_size']} steps of "
        f"{s['batch_size']}; DPO as two reference samples for each of {s['budget'] // 2:,} prompts, the proxy choosing "
        f"each pair's winner; best-of-n as n={bon['n']} reference samples for each held-out prompt. The gold scorer "
        "only judges. Metrics are measured on the held-out prompts, one response each (best-of-n: the proxy's pick); "
        "best-of-n's KL is the bound log n - (n-1)/n. Wall time: training steps and up-front sampling and scoring, "
        "without evaluations. Step memory: tracemalloc's high-water mark of one step's allocations (best-of-n: "
        "sampling and scoring one prompt's n responses).", "",
        format_table(results), "", format_agreement(results), ""])
