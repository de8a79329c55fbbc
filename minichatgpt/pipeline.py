"""The main job: corpus -> tokenizer -> pretrained GPT -> reward model -> PPO -> evaluation -> report.

Writes runs/<name>/: tokenizer.json, gpt_pretrained.npz, reward.npz (the n-gram model, or the GPT reward model with
--reward-model gpt), gold.npz, gpt_ppo.npz, ppo_log.jsonl,
curves.png, samples.md, tokens.html, summary.json, and manifest.json, the record of what each stage was built
from. Run again, it skips the finished stages and resumes an interrupted one; if an option or an input of a stage
changed, it refuses and names the change, so a run folder never mixes two runs. The evaluation and the report
read the finished run as every other command does, through `finished_run.FinishedRun`.
"""
import dataclasses
import functools
import logging
import os
import time

from minigpt_np.resume import FingerprintMismatch, sha256_of_file
from reward.lexicon import VaderJudge

from . import corpus, stages
from .config import OPTIONS, default_of
from .finished_run import FinishedRun
from .report import write_curves, write_samples
from .run_folder import DamagedFile, Lock, Manifest, Refused, path, write_json
from .stages import ARTIFACTS, STAGE_ORDER
from .token_view import write_token_view

log = logging.getLogger(__name__)


def built_from(config, stage, data):
    """What the manifest records for a stage: the corpus fingerprint and the options that shape the stage."""
    options = {o.flag: default_of(o, config) for o in OPTIONS if o.stage in ("data", stage)}
    if options.get("--reward-model") == "ngram":   # the n-gram proxy is recorded as before the option existed, so
        del options["--reward-model"]              # runs made then still resume; "gpt" is recorded
    return {"corpus sha256": data["corpus_sha256"], **options}


def affected(stage):
    """A stage and every stage built on it: what --restart STAGE rebuilds (STAGE_ORDER lists builders first)."""
    rebuilt = [stage]
    for s in STAGE_ORDER:
        if s not in rebuilt and any(d in rebuilt for d in stages.DEPENDS_ON[s]):
            rebuilt.append(s)
    return rebuilt


def restart_hint(stage):
    rebuilt = ", ".join(a for s in affected(stage) for a in ARTIFACTS[s])
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
        timings, t_start = {}, time.perf_counter()
        data, policy, history, metrics = _build(config, run_dir, progress, cache_dir, restart, timings)
        t = time.perf_counter()
        run = FinishedRun.open(run_dir, cache_dir, needs=STAGE_ORDER, config=config, data=data)
        before, after = run.evaluate(run.ref_model), run.evaluate(policy)
        timings["evaluate"] = time.perf_counter() - t
        wrote = _write_report(run, policy, history, before, after)
        timings["total"] = time.perf_counter() - t_start
        summary = _summary(run, history, before, after, metrics, timings, wrote)
        write_json(path(run_dir, "summary.json"), summary)
        return summary


class Stages:
    """The manifest's side of the main job: run a stage, skip it when it is finished, refuse it when it was built
    from other options or inputs. Every stage's options are checked up front, before any work."""

    def __init__(self, config, run_dir, restart, data):
        self.manifest = Manifest(run_dir)
        if restart:
            for stage in affected(restart):
                self.manifest.forget(stage, ARTIFACTS[stage])
        self.records = {stage: built_from(config, stage, data) for stage in STAGE_ORDER}
        for stage in STAGE_ORDER:
            self.manifest.check(stage, self.records[stage], ARTIFACTS[stage], restart_hint(stage), partial=True)

    def run(self, stage, inputs, build, load):
        """build() the stage, or load() it if it is finished with these options and inputs ({name: sha256})."""
        record = {**self.records[stage], **{f"{name} sha256": digest for name, digest in inputs.items()}}
        if self.manifest.check(stage, record, ARTIFACTS[stage], restart_hint(stage)):
            log.info("%s: done already", stage)
            return load()
        self.manifest.start(stage, record)
        try:
            result = build()
        except (FingerprintMismatch, DamagedFile) as e:
            raise Refused(f"{e}; or {restart_hint(stage)}") from e
        self.manifest.finish(stage, ARTIFACTS[stage])
        return result


def _build(config, run_dir, progress, cache_dir, restart, timings):
    """Every stage, run or loaded -> (the corpus's data, the policy, PPO's history, the metrics of the stages run)."""
    t = time.perf_counter()
    train, val, test, data = corpus.load_data(config, cache_dir)
    s = Stages(config, run_dir, restart, data)
    tokenizer_stage = functools.partial(stages.tokenizer_stage, config, run_dir, train)   # builds, or loads
    tokenizer = s.run("tokenizer", {}, tokenizer_stage, tokenizer_stage)
    timings["data_and_tokenizer"], t = time.perf_counter() - t, time.perf_counter()
    _, pretrain_metrics = s.run("pretrain", hashes(run_dir, ["tokenizer.json"]),
                                lambda: stages.pretrain_stage(config, run_dir, tokenizer, train, val, progress),
                                lambda: stages.load_pretrained(run_dir, tokenizer))
    timings["pretrain"], t = time.perf_counter() - t, time.perf_counter()
    if config.reward_model == "gpt":     # trained from the pretrained GPT: built on its files
        scorer, reward_metrics = s.run("reward", hashes(run_dir, ["tokenizer.json", "gpt_pretrained.npz"]),
                                       lambda: stages.gpt_reward_stage(config, run_dir, tokenizer, train, val, test,
                                                                       progress),
                                       lambda: (stages.load_scorer_of(run_dir, "reward"), None))
    else:
        scorer, reward_metrics = s.run("reward", {}, lambda: stages.reward_stage(run_dir, train, val, test),
                                       lambda: (stages.load_scorer_of(run_dir, "reward"), None))
    gold, gold_metrics = s.run("gold", hashes(run_dir, ["reward.npz"]),
                               lambda: stages.gold_stage(run_dir, train, val, test, scorer),
                               lambda: (stages.load_scorer_of(run_dir, "gold"), None))
    timings["reward"], t = time.perf_counter() - t, time.perf_counter()
    train_queries, _ = stages.prompts(config, tokenizer, test)
    inputs = hashes(run_dir, ["tokenizer.json", "gpt_pretrained.npz", "reward.npz"])
    policy, history = s.run("ppo", inputs, lambda: stages.ppo_stage(config, run_dir, tokenizer, scorer, train_queries,
                                                                    inputs, {"gold": gold, "lexicon": VaderJudge()}, progress),
                            lambda: stages.load_ppo(run_dir))
    timings["ppo"] = time.perf_counter() - t
    return (train, val, test, data), policy, history, {"pretrain": pretrain_metrics, "reward": reward_metrics,
                                                       "gold": gold_metrics}


def _write_report(run, policy, history, before, after):
    """samples.md, tokens.html and curves.png -> the names of the files the report wrote."""
    prompt_texts = [run.tokenizer.decode([int(t) for t in q]) for q in run.held_out()]
    write_samples(path(run.run_dir, "samples.md"), prompt_texts, before, after)
    kl_coef = next(h["objective/kl_coef"] for h in reversed(history) if "objective/kl_coef" in h)
    write_token_view(path(run.run_dir, "tokens.html"), run, policy, kl_coef)
    curves = write_curves(history, path(run.run_dir, "curves.png"))
    return sorted(["samples.md", "summary.json", "ppo_log.jsonl", "tokens.html"] + (["curves.png"] if curves else []))


def _summary(run, history, before, after, metrics, timings, wrote):
    """summary.json: the before/after metrics, a few examples, the data, what each stage was built with, the
    config, the timings, and the metrics of the stages this invocation ran."""
    (before, before_samples), (after, after_samples) = before, after
    prompt_texts = [run.tokenizer.decode([int(t) for t in q]) for q in run.held_out(3)]
    summary = {
        "reference": before, "policy": after, "ppo_steps": len(history), "timings_s": timings, "data": run.data[3],
        "built_with": {stage: run.manifest.stages[stage]["built_from"] for stage in STAGE_ORDER},
        "config": dataclasses.asdict(run.config), "wrote": wrote,
        "examples": [{"prompt": prompt_texts[i], "before": before_samples["texts"][i],
                      "before_score": float(before_samples["scores"]["reward"][i]), "after": after_samples["texts"][i],
                      "after_score": float(after_samples["scores"]["reward"][i]),
                      "before_lexicon": float(before_samples["scores"]["lexicon"][i]),
                      "after_lexicon": float(after_samples["scores"]["lexicon"][i])} for i in range(len(prompt_texts))],
    }
    if metrics["pretrain"] is not None:
        summary["pretrain"] = {k: metrics["pretrain"].get(k) for k in ("step", "val_loss", "tokens_per_s", "elapsed",
                                                                       "stop_reason")}
    if metrics["reward"] is not None:
        summary["reward"] = {k: metrics["reward"][k] for k in ("val", "test")}
    if metrics["gold"] is not None:
        summary["gold"] = {"test": metrics["gold"]}
    return summary
