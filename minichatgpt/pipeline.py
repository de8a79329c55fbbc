"""The main job: corpus -> tokenizer -> pretrained GPT -> reward model -> PPO -> evaluation -> report.

Writes runs/<name>/: tokenizer.json, gpt_pretrained.npz, reward.npz, gold.npz, gpt_ppo.npz, ppo_log.jsonl,
curves.png, samples.md, tokens.html, summary.json, and manifest.json, the record of what each stage was built
from. Run again, it
skips the finished stages and resumes an interrupted one; if an option or an input of a stage changed, it
refuses and names the change, so a run folder never mixes two runs.
"""
import dataclasses
import logging
import os
import time

from minigpt_np.resume import FingerprintMismatch, sha256_of_file

from . import stages
from .config import OPTIONS, default_of
from .evaluate import evaluate_policy
from .report import write_curves, write_samples
from .run_folder import DamagedFile, Lock, Manifest, Refused, path, write_json
from .token_view import write_token_view

log = logging.getLogger(__name__)

STAGE_ORDER = ("tokenizer", "pretrain", "reward", "gold", "ppo")
EVAL_SEED_OFFSET = 12345   # the evaluation samples with its own generator, seed + this


def built_from(config, stage, data):
    """What the manifest records for a stage: the corpus fingerprint and the options that shape the stage."""
    options = {o.flag: default_of(o, config) for o in OPTIONS if o.stage in ("data", stage)}
    return {"corpus sha256": data["corpus_sha256"], **options}


def affected(stage):
    """A stage and every stage built on it: what --restart STAGE rebuilds (STAGE_ORDER lists builders first)."""
    rebuilt = [stage]
    for s in STAGE_ORDER:
        if s not in rebuilt and any(d in rebuilt for d in stages.DEPENDS_ON[s]):
            rebuilt.append(s)
    return rebuilt


def restart_hint(stage):
    rebuilt = ", ".join(a for s in affected(stage) for a in stages.ARTIFACTS[s])
    return f"--restart {stage} to rebuild it (deletes {rebuilt})"


def hashes(run_dir, names):
    return {name: sha256_of_file(path(run_dir, name)) for name in names}


def run_pipeline(config, run_dir, progress=True, cache_dir=None, restart=None):
    """Run every stage that is not finished yet -> the summary, also written to summary.json.

    cache_dir: where the default corpus is cached (None: $MINICHATGPT_CACHE or ~/.cache/minichatgpt).
    restart: a stage name; that stage and those built on it are deleted and run again.
    Raises Refused when the run folder holds a stage built from other options or inputs, or a file it did not
    make, or is in use by another process.
    """
    os.makedirs(run_dir, exist_ok=True)
    with Lock(run_dir):
        return _run(config, run_dir, progress, cache_dir, restart)


def _run(config, run_dir, progress, cache_dir, restart):
    manifest, timings, t_start = Manifest(run_dir), {}, time.perf_counter()
    t = time.perf_counter()
    train, val, test, data = stages.load_data(config, cache_dir)
    if restart:
        for stage in affected(restart):
            manifest.forget(stage, stages.ARTIFACTS[stage])
    records = {stage: built_from(config, stage, data) for stage in STAGE_ORDER}
    for stage in STAGE_ORDER:    # refuse changed options or foreign files before any work
        manifest.check(stage, records[stage], stages.ARTIFACTS[stage], restart_hint(stage), partial=True)

    def run_stage(stage, inputs, run, load):
        record = {**records[stage], **{f"{name} sha256": digest for name, digest in inputs.items()}}
        if manifest.check(stage, record, stages.ARTIFACTS[stage], restart_hint(stage)):
            log.info("%s: done already", stage)
            return load()
        manifest.start(stage, record)
        try:
            result = run()
        except (FingerprintMismatch, DamagedFile) as e:
            raise Refused(f"{e}; or {restart_hint(stage)}") from e
        manifest.finish(stage, stages.ARTIFACTS[stage])
        return result

    tokenizer = run_stage("tokenizer", {}, lambda: stages.tokenizer_stage(config, run_dir, train),
                          lambda: stages.tokenizer_stage(config, run_dir, train))
    timings["data_and_tokenizer"] = time.perf_counter() - t

    t = time.perf_counter()
    ref_model, pretrain_metrics = run_stage(
        "pretrain", hashes(run_dir, ["tokenizer.json"]),
        lambda: stages.pretrain_stage(config, run_dir, tokenizer, train, val, progress),
        lambda: stages.load_pretrained(run_dir, tokenizer))
    timings["pretrain"] = time.perf_counter() - t

    t = time.perf_counter()
    scorer, reward_metrics = run_stage("reward", {}, lambda: stages.reward_stage(run_dir, train, val, test),
                                       lambda: (stages.load_scorer_of(run_dir, "reward"), None))
    gold, gold_metrics = run_stage("gold", hashes(run_dir, ["reward.npz"]),
                                   lambda: stages.gold_stage(run_dir, train, val, test, scorer),
                                   lambda: (stages.load_scorer_of(run_dir, "gold"), None))
    timings["reward"] = time.perf_counter() - t

    t = time.perf_counter()
    train_queries, eval_queries = stages.prompts(config, tokenizer, test)
    inputs = hashes(run_dir, ["tokenizer.json", "gpt_pretrained.npz", "reward.npz"])
    policy, history = run_stage(
        "ppo", inputs, lambda: stages.ppo_stage(config, run_dir, tokenizer, scorer, train_queries, inputs, gold,
                                                progress),
        lambda: stages.load_ppo(run_dir))
    timings["ppo"] = time.perf_counter() - t

    t = time.perf_counter()
    seed, fbs, scorers = config.seed + EVAL_SEED_OFFSET, config.ppo.forward_batch_size, {"reward": scorer, "gold": gold}
    before, before_samples = evaluate_policy(ref_model, ref_model, tokenizer, scorers, eval_queries, config.rlhf, fbs,
                                             seed)
    after, after_samples = evaluate_policy(policy, ref_model, tokenizer, scorers, eval_queries, config.rlhf, fbs, seed)
    timings["evaluate"] = time.perf_counter() - t
    prompt_texts = [tokenizer.decode([int(t) for t in q]) for q in eval_queries]
    write_samples(path(run_dir, "samples.md"), prompt_texts, (before, before_samples), (after, after_samples))
    kl_coef = next(h["objective/kl_coef"] for h in reversed(history) if "objective/kl_coef" in h)
    write_token_view(path(run_dir, "tokens.html"), policy, ref_model, tokenizer, scorer, eval_queries, config, kl_coef,
                     seed)
    wrote = ["samples.md", "summary.json", "ppo_log.jsonl", "tokens.html"] + (["curves.png"] if write_curves(
        history, path(run_dir, "curves.png")) else [])
    timings["total"] = time.perf_counter() - t_start
    summary = {
        "reference": before, "policy": after, "ppo_steps": len(history), "timings_s": timings, "data": data,
        "built_with": {stage: manifest.stages[stage]["built_from"] for stage in STAGE_ORDER},
        "config": dataclasses.asdict(config), "wrote": sorted(wrote),
        "examples": [{"prompt": prompt_texts[i], "before": before_samples["texts"][i],
                      "before_score": float(before_samples["scores"]["reward"][i]), "after": after_samples["texts"][i],
                      "after_score": float(after_samples["scores"]["reward"][i])}
                     for i in range(min(3, len(prompt_texts)))],
    }
    if pretrain_metrics is not None:
        summary["pretrain"] = {k: pretrain_metrics.get(k) for k in ("step", "val_loss", "tokens_per_s", "elapsed",
                                                                    "stop_reason")}
    if reward_metrics is not None:
        summary["reward"] = {k: reward_metrics[k] for k in ("val", "test")}
    if gold_metrics is not None:
        summary["gold"] = {"test": gold_metrics}
    write_json(path(run_dir, "summary.json"), summary)
    return summary
