"""The main job: corpus -> tokenizer -> pretrained GPT -> reward model -> RL (--method, PPO by default) ->
evaluation -> report.

Writes runs/<name>/: tokenizer.json, gpt_pretrained.npz, reward.npz (the n-gram model, or the GPT reward model with
--reward-model gpt), gold.npz, gpt_<method>.npz, <method>_log.jsonl (gpt_ppo.npz and ppo_log.jsonl for PPO),
curves.png, samples.md, tokens.html, summary.json, and manifest.json, the record of what each stage was built from.
A run folder holds one method's RL stage, and its report describes that method's policy (each report file names
it); another method is another --name, or replaces this run's RL stage with --restart <the run's method>, on the
same pretrained model and reward model. Run again, it skips the finished stages and resumes an interrupted one; if
an option or an input of a stage changed, it refuses and names the change, so a run folder never mixes two runs.
--restart STAGE checks every other stage first, then deletes STAGE, the stages built on it, the report and the
experiments built on the run. The evaluation and the report read the finished run as every other command does,
through `finished_run.FinishedRun`; the manifest records the report last, with the run's whole config.
"""
import dataclasses
import functools
import logging
import os
import time

import minigpt_np as mg
from minigpt_np.resume import FingerprintMismatch, sha256_of_file
from reward.lexicon import VaderJudge

from . import corpus, methods, stages
from .config import OPTIONS, default_of
from .finished_run import FinishedRun
from .methods import DRIVING
from .report import write_curves, write_samples
from .rlhf import Task
from .run_folder import DamagedFile, Lock, Manifest, Refused, path, refuse_links, write_json
from .stages import ARTIFACTS, BASE_STAGES, BUILT_ON_RUN, METHODS, REPORT, RUN_FILES, stage_order
from .token_view import write_token_view

log = logging.getLogger(__name__)


def built_from(config, stage, data):
    """What the manifest records for a stage: the corpus fingerprint and the options that shape the stage (an RL
    stage, named after its method: the options every method shares and the method's own)."""
    options = {o.flag: default_of(o, config) for o in OPTIONS
               if o.stage in ("data", stage) or (o.stage == "rl" and stage in METHODS)}
    if options.get("--reward-model") == "ngram":   # the n-gram proxy is recorded as before the option existed, so
        del options["--reward-model"]              # runs made then still resume; "gpt" is recorded
    if stage in METHODS or (stage == "reward" and config.reward_model == "gpt"):   # they train a GPT too
        options["--kernels"] = config.kernels
    return {"corpus sha256": data["corpus_sha256"], **options}


def affected(stage, reward_model="ngram"):
    """A stage and every stage built on it: what --restart STAGE rebuilds (stage_order lists builders first)."""
    rebuilt, depends_on = [stage], stages.depends_on(reward_model)
    for s in (*BASE_STAGES, *METHODS):
        if s not in rebuilt and any(d in rebuilt for d in depends_on[s]):
            rebuilt.append(s)
    return rebuilt


def restart_hint(stage, reward_model="ngram"):
    rebuilt = ", ".join(a for s in affected(stage, reward_model) for a in ARTIFACTS[s])
    return f"--restart {stage} to rebuild it (deletes {rebuilt}, and the report and experiments built on them)"


def advice_for(stage, reward_model="ngram"):
    """What a refusal of a stage built from other options says to do."""
    return f"use a new --name, or {restart_hint(stage, reward_model)}"


def hashes(run_dir, names):
    return {name: sha256_of_file(path(run_dir, name)) for name in names}


def run_pipeline(config, run_dir, progress=True, cache_dir=None, restart=None):
    """Run every stage that is not finished yet -> the summary, also written to summary.json.

    cache_dir: where the default corpus is cached (None: $MINICHATGPT_CACHE or ~/.cache/minichatgpt).
    restart: a stage name; that stage and those built on it are deleted and run again.
    Raises Refused when the run folder holds a stage built from other options or inputs, or a file it did not
    make, or is in use by another process.
    """
    with Lock(run_dir), mg.kernels.using(config.kernels):
        refuse_links(run_dir, RUN_FILES)
        timings, t_start = {}, time.perf_counter()
        data, policy, history, metrics = _build(config, run_dir, progress, cache_dir, restart, timings)
        t = time.perf_counter()
        run = FinishedRun.open(run_dir, cache_dir, needs=stage_order(config.method), config=config, data=data)
        run.manifest.forget("report", REPORT)   # a kill before the new report is recorded leaves none
        run.manifest.start("report", {"config": dataclasses.asdict(config)})
        before, after = run.evaluate(run.ref_model), run.evaluate(policy)
        timings["evaluate"] = time.perf_counter() - t
        wrote = _write_report(run, policy, history, before, after)
        timings["total"] = time.perf_counter() - t_start
        summary = _summary(run, history, before, after, metrics, timings, wrote)
        write_json(path(run_dir, "summary.json"), summary)
        run.manifest.finish("report", [name for name in REPORT if name in wrote])
        return summary


class Stages:
    """The manifest's side of the main job: run a stage, skip it when it is finished, refuse it when it was built
    from other options or inputs. Every stage's options, and the files of every finished stage, are checked up
    front, before any work; only then does a restart delete anything.

    advice(stage): what a refusal of other options says to do (advice_for by default); elsewhere: how to start
    afresh (Manifest).
    """

    def __init__(self, config, run_dir, restart, data, advice=None, elsewhere="use a new --name"):
        self.manifest = Manifest(run_dir, elsewhere)
        self.advice = advice or functools.partial(advice_for, reward_model=config.reward_model)
        if restart in METHODS and restart != config.method and restart not in self.manifest.stages:
            raise Refused(f"--restart {restart}: {run_dir} holds no {DRIVING[restart].label} stage to replace; "
                          f"--restart {config.method} rebuilds the run's own")
        others = [m for m in METHODS if m != config.method and m in self.manifest.stages and m != restart]
        if others:
            raise Refused(f"{run_dir} holds a {DRIVING[others[0]].label} run, and a run folder holds one method; "
                          f"{elsewhere} for --method {config.method}, or --restart {others[0]} to replace its "
                          f"{DRIVING[others[0]].label} stage (keeps the pretrained model and the reward model)")
        self.records = {stage: built_from(config, stage, data) for stage in stage_order(config.method)}
        rebuilt = affected(restart, config.reward_model) if restart else []
        for stage in stage_order(config.method):
            if stage in rebuilt:
                continue
            self.manifest.check(stage, self.records[stage], ARTIFACTS[stage], self.advice(stage), partial=True)
            if self.manifest.stages.get(stage, {}).get("finished"):
                self.manifest.verify(stage, self.advice(stage))
        for stage in rebuilt:
            self.manifest.forget(stage, ARTIFACTS[stage])
        if rebuilt:
            self.manifest.forget("report", REPORT + BUILT_ON_RUN)

    def run(self, stage, inputs, build, load):
        """build() the stage, or load() it if it is finished with these options and inputs ({name: sha256})."""
        record = {**self.records[stage], **{f"{name} sha256": digest for name, digest in inputs.items()}}
        if self.manifest.check(stage, record, ARTIFACTS[stage], self.advice(stage)):
            log.info("%s: done already", stage)
            return load()
        self.manifest.start(stage, record)
        try:
            result = build()
        except (FingerprintMismatch, DamagedFile) as e:
            raise Refused(f"{e}; {self.advice(stage)}") from e
        self.manifest.finish(stage, ARTIFACTS[stage])
        return result


def _build(config, run_dir, progress, cache_dir, restart, timings):
    """Every stage, run or loaded -> (the corpus's data, the policy, its RL history, the metrics of the stages run)."""
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
    policy, history = s.run(config.method, inputs,
                            lambda: rl_stage(config, run_dir, tokenizer, scorer, train_queries, inputs,
                                             {"gold": gold, "lexicon": VaderJudge()}, progress),
                            lambda: stages.load_policy(run_dir, config.method))
    timings[config.method] = time.perf_counter() - t
    return (train, val, test, data), policy, history, {"pretrain": pretrain_metrics, "reward": reward_metrics,
                                                       "gold": gold_metrics}


def rl_stage(config, run_dir, tokenizer, scorer, queries, inputs, judges=None, progress=True):
    """The run's method (config.method) from the pretrained model against the reward model -> (policy, history);
    resumes if killed.

    inputs: {name: sha256} of the files the stage is built from, part of its checkpoint's fingerprint. judges:
    scorers that also grade every rollout for the log (the gold scorer, the lexicon); they never drive training.
    """
    ref_model = mg.load_checkpoint(path(run_dir, "gpt_pretrained.npz"))
    policy = stages.policy_start(run_dir, config.seed, DRIVING[config.method].value_head)
    log.info("%s: %d steps of %d rollouts, %d training prompts", DRIVING[config.method].label, config.rlhf.steps,
             config.ppo.batch_size, len(queries))
    task = Task(tokenizer, ref_model, scorer, queries, config.sampling, inputs, judges or {})
    checkpoint, log_file = (path(run_dir, name) for name in stages.ARTIFACTS[config.method])
    return policy, methods.train_run(config, policy, task, checkpoint, log_file, progress)


def _write_report(run, policy, history, before, after):
    """samples.md, tokens.html and curves.png, each naming the run's method -> the names of the files the report
    wrote."""
    method = run.config.method
    prompt_texts = [run.tokenizer.decode([int(t) for t in q]) for q in run.held_out()]
    write_samples(path(run.run_dir, "samples.md"), prompt_texts, before, after, DRIVING[method].label)
    write_token_view(path(run.run_dir, "tokens.html"), run, policy, history)
    curves = write_curves(history, path(run.run_dir, "curves.png"), method)
    return sorted(["samples.md", "summary.json", ARTIFACTS[method][1], "tokens.html"]
                  + (["curves.png"] if curves else []))


def _summary(run, history, before, after, metrics, timings, wrote):
    """summary.json: the before/after metrics, a few examples, the data, what each stage was built with, the
    config, the timings, and the metrics of the stages this invocation ran."""
    (before, before_samples), (after, after_samples) = before, after
    prompt_texts = [run.tokenizer.decode([int(t) for t in q]) for q in run.held_out(3)]
    summary = {
        "method": run.config.method, "reference": before, "policy": after, "ppo_steps": len(history),
        "timings_s": timings, "data": run.data[3],
        "built_with": {stage: run.manifest.stages[stage]["built_from"] for stage in stage_order(run.config.method)},
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
