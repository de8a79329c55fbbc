"""The main job: corpus -> tokenizer -> pretrained GPT -> reward model -> RL (--method, PPO by default) ->
evaluation -> report.

Writes runs/<name>/: tokenizer.json, gpt_pretrained.npz, reward.npz (the n-gram model, or the GPT reward model with
--reward-model gpt), gold.npz, gpt_<method>.npz, <method>_log.jsonl (gpt_ppo.npz and ppo_log.jsonl for PPO),
curves.png, samples.md, tokens.html, summary.json, and manifest.json, the record of what each stage was built from.
A run folder holds one method's RL stage, and its report describes that method's policy (each report file names
it); another method is another --name, or replaces this run's RL stage with --restart <the run's method>, on the
same pretrained model and reward model. Run again, it skips the finished stages and resumes an interrupted one; if
an option or an input of a stage changed, it refuses and names the change, so a run folder never mixes two runs.
Every check (each stage's whole record, both ways; the options against the corpus) comes before any work; --restart
STAGE then deletes STAGE, the stages built on it, their training files, the report and the experiments built on
the run. A stage records what the process that built it measured (test accuracies, tokens/s, its seconds), and the
summary is made from those records, so running again, resuming or swapping the RL stage reports the same numbers.
The report is derived from the recorded stages: run again, a missing or edited report file is written again (the
same bytes) and nothing is retrained. --ppo-seconds stops the RL stage unfinished; the same command again continues
it. The evaluation and the report read the finished run as every other command does, through
`finished_run.FinishedRun`; the manifest records the report last, with the run's whole config.
"""
import dataclasses
import functools
import json
import logging
import time

import minigpt_np as mg
from minigpt_np.resume import FingerprintMismatch, sha256_of_file
from reward.lexicon import VaderJudge

from ..data import corpus
from ..evaluation.report import write_curves, write_samples
from ..evaluation.token_view import write_token_view
from ..loop import rlhf
from ..settings.config import default_of, run_options
from ..settings.options import UsageError
from . import stages
from .finished_run import FinishedRun
from .run_folder import (DamagedFile, Lock, Manifest, Refused, path, read_json, refuse_links, remove_orphans,
                         write_json)
from .stages import (BASE_STAGES, BUILT_ON_RUN, METHODS, PRETRAIN_METRICS, REPORT, TRAINING_FILES, all_stages,
                     artifacts, run_files, stage_order)

log = logging.getLogger(__name__)

# what a record that lacks an option stands for: the n-gram proxy is recorded by leaving --reward-model out, so that
# every record without the option (a run made with the n-gram proxy) matches ("gpt" is recorded)
ABSENT = {"--reward-model": "ngram"}


def built_from(config, stage, data):
    """What the manifest records for a stage: the corpus fingerprint and the options that shape the stage (an RL
    stage, named after its method: the shared options the method uses, and its own)."""
    uses = METHODS[stage].uses if stage in METHODS else ()
    options = {o.flag: default_of(o, config) for o in run_options()
               if o.stage in ("data", stage) or (o.stage == "rl" and o.flag in uses)}
    if options.get("--reward-model") == ABSENT["--reward-model"]:
        del options["--reward-model"]
    if stage in METHODS or (stage == "reward" and config.reward_model == "gpt"):   # they train a GPT too
        options["--kernels"] = config.kernels
    return {"corpus sha256": data["corpus_sha256"], **options}


def not_recorded(stage):
    """The shared options an RL stage's method does not use: not recorded, and not compared with what a record holds
    of them."""
    return {o.flag for o in run_options() if o.stage == "rl" and stage in METHODS and o.flag not in METHODS[stage].uses}


def input_keys():
    """The keys of the input hashes a record holds ("<file> sha256"), known only once the stages before it ran."""
    return {f"{name} sha256" for stage in all_stages() for name in artifacts(stage)}


def affected(stage, reward_model="ngram", method=None):
    """A stage and every stage built on it: what --restart STAGE rebuilds (stage_order lists builders first); of a
    run of `method`, its own stages only (None: every method's)."""
    rebuilt, depends_on = [stage], stages.depends_on(reward_model)
    for s in (*BASE_STAGES, *(METHODS if method is None else (method,))):
        if s not in rebuilt and any(d in rebuilt for d in depends_on[s]):
            rebuilt.append(s)
    return rebuilt


def restart_hint(stage, reward_model="ngram", method=None):
    rebuilt = ", ".join(a for s in affected(stage, reward_model, method) for a in artifacts(s))
    return f"--restart {stage} to rebuild it (deletes {rebuilt}, and the report and experiments built on them)"


def advice_for(stage, reward_model="ngram", method=None):
    """What a refusal of a stage built from other options says to do."""
    return f"use a new --name, or {restart_hint(stage, reward_model, method)}"


def hashes(run_dir, names):
    return {name: sha256_of_file(path(run_dir, name)) for name in names}


@dataclasses.dataclass
class Outcome:
    """What one run of the main job did: the summary (None while the RL stage is unfinished), the files it wrote
    into the report, and, if --ppo-seconds stopped the RL stage, what to do next."""
    summary: dict = None
    wrote: list = dataclasses.field(default_factory=list)
    stopped: str = ""


def run_pipeline(config, run_dir, progress=True, cache_dir=None, restart=None):
    """Run every stage that is not finished yet -> the summary, also written to summary.json (None if --ppo-seconds
    stopped the RL stage, which the same call again continues).

    cache_dir: where the default corpus is cached (None: $MINICHATGPT_CACHE or ~/.cache/minichatgpt).
    restart: a stage name; that stage and those built on it are deleted and run again.
    Raises Refused when the run folder holds a stage built from other options or inputs, or a file it did not
    make, or is in use by another process; UsageError for options the corpus cannot honour.
    """
    return run(config, run_dir, progress, cache_dir, restart).summary


def run(config, run_dir, progress=True, cache_dir=None, restart=None):
    """run_pipeline, saying what it did -> Outcome."""
    with Lock(run_dir), mg.kernels.using(config.kernels):
        refuse_links(run_dir, run_files())
        t = time.perf_counter()
        data = corpus.load_data(config, cache_dir)
        s = Stages(config, run_dir, restart, data, spent=time.perf_counter() - t)
        policy, history = _build(s, config, run_dir, s.data, progress)
        if not s.manifest.stages[config.method].get("finished"):
            stopped = (f"{METHODS[config.method].label} stopped by --ppo-seconds after {len(history)} of "
                       f"{config.rlhf.steps} steps; run the same command again (with or without --ppo-seconds) to "
                       "continue, and the report is written when it finishes")
            log.info("%s", stopped)
            return Outcome(stopped=stopped)
        return _report(s, config, run_dir, cache_dir, s.data, policy, history)


class Stages:
    """The manifest's side of the main job: run a stage, skip it when it is finished, refuse it when it was built
    from other options or inputs. Every stage's whole record (but the input hashes, not known yet), the options
    against the corpus, and the files of every finished stage are checked up front, before any work; only then does
    a restart delete anything.

    data: the corpus's (train, val, test, info); self.data holds them with the fingerprint the run recorded, if it
    is this corpus's with its rows named after the file (corpus.as_recorded). advice(stage): what a refusal of other
    options says to do (advice_for by default); elsewhere: how to start afresh (Manifest). order: the stages this
    command builds (default: the run's, stage_order). spent: seconds already spent for the first stage (reading the
    corpus).
    """

    def __init__(self, config, run_dir, restart, data, advice=None, elsewhere="use a new --name", order=None,
                 spent=0.0):
        self.manifest = Manifest(run_dir, elsewhere)
        self.advice = advice or functools.partial(advice_for, reward_model=config.reward_model, method=config.method)
        self.order = order or stage_order(config.method)
        method = config.method if config.method in self.order else None
        if method and restart in METHODS and restart != method and restart not in self.manifest.stages:
            raise Refused(f"--restart {restart}: {run_dir} holds no {METHODS[restart].label} stage to replace; "
                          f"--restart {method} rebuilds the run's own")
        others = [m for m in METHODS if method and m != method and m in self.manifest.stages and m != restart]
        if others:
            raise Refused(f"{run_dir} holds a {METHODS[others[0]].label} run, and a run folder holds one method; "
                          f"{elsewhere} for --method {method}, or --restart {others[0]} to replace its "
                          f"{METHODS[others[0]].label} stage (keeps the pretrained model and the reward model)")
        recorded = next((r["built_from"].get("corpus sha256") for r in self.manifest.stages.values()), None)
        self.data = (*data[:3], corpus.as_recorded(data[3], recorded))
        self.records = {stage: built_from(config, stage, self.data[3]) for stage in self.order}
        if method:
            self._eval_prompts_fit(config, method, data[2])
        rebuilt = [s for s in affected(restart, config.reward_model, method) if s in self.order or s == restart] \
            if restart else []
        for stage in self.order:
            if stage in rebuilt:
                continue
            self.manifest.check(stage, self.records[stage], self.artifacts(stage), self.advice(stage), partial=True,
                                ignore=input_keys() | not_recorded(stage), absent=ABSENT)
            if self.manifest.stages.get(stage, {}).get("finished"):
                self.manifest.verify(stage, self.advice(stage))
        self.spent = {"tokenizer": spent}
        self.tokenizer = None
        if "tokenizer" in rebuilt or not self.manifest.stages.get("tokenizer", {}).get("finished"):
            t = time.perf_counter()    # trained now, in memory, so that a vocabulary the corpus cannot fill is refused
            self.tokenizer = stages.train_tokenizer(config, data[0])    # before anything is deleted or written
            self.spent["tokenizer"] += time.perf_counter() - t
        for stage in rebuilt:
            self.manifest.forget(stage, self.artifacts(stage))
        if rebuilt:
            self.manifest.forget("report", REPORT + BUILT_ON_RUN)
        removed = remove_orphans(run_dir, run_files())
        if removed:
            log.info("removed %s, left by a process that was killed", ", ".join(removed))

    def _eval_prompts_fit(self, config, method, test):
        """Refuse (UsageError) more evaluation prompts than the test split holds (stages.held_out_room). A run whose
        record holds more used that many: asked for those, its RL stage is the same."""
        room, reviews = stages.held_out_room(test), len(stages.labelled(test)[0])
        if config.eval_prompts > room:
            raise UsageError(f"--eval-prompts {config.eval_prompts} is more than this corpus's {room} held-out prompts "
                             f"(a quarter of its {reviews} labelled test reviews; the rest are the training prompts); "
                             f"use --eval-prompts {room} or fewer")
        recorded = self.manifest.stages.get(method, {}).get("built_from", {}).get("--eval-prompts")
        if isinstance(recorded, int) and recorded > room == config.eval_prompts:
            self.records[method]["--eval-prompts"] = recorded

    @staticmethod
    def artifacts(stage):
        """What a stage writes into the folder, its training files included."""
        return artifacts(stage) + TRAINING_FILES.get(stage, [])

    def run(self, stage, inputs, build, load, finished=None):
        """build() the stage -> (result, metrics), or load() it -> result, if it is finished with these options and
        inputs ({name: sha256}) -> result. The manifest records the stage finished, with the metrics and the seconds
        of the process that built it, unless finished(result) says it stopped early."""
        record = {**self.records[stage], **{f"{name} sha256": digest for name, digest in inputs.items()}}
        if self.manifest.check(stage, record, self.artifacts(stage), self.advice(stage), ignore=not_recorded(stage),
                               absent=ABSENT):
            log.info("%s: done already", stage)
            return load()
        self.manifest.start(stage, record)
        t = time.perf_counter()
        try:
            result, metrics = build()
        except (FingerprintMismatch, DamagedFile) as e:
            raise Refused(f"{e}; {self.advice(stage)}") from e
        if finished is None or finished(result):
            seconds = time.perf_counter() - t + self.spent.get(stage, 0.0)
            self.manifest.finish(stage, artifacts(stage), {**(metrics or {}), "seconds": seconds})
        return result


def _build(s, config, run_dir, data, progress):
    """Every stage, run or loaded -> (the policy, its RL history)."""
    train, val, test, _ = data
    tokenizer = s.run("tokenizer", {}, lambda: stages.save_tokenizer(run_dir, s.tokenizer),
                      lambda: stages.load_tokenizer(run_dir))
    s.run("pretrain", hashes(run_dir, ["tokenizer.json"]),
          lambda: stages.pretrain_stage(config, run_dir, tokenizer, train, val, progress),
          lambda: stages.load_pretrained(run_dir, tokenizer)[0])
    if config.reward_model == "gpt":     # trained from the pretrained GPT: built on its files
        scorer = s.run("reward", hashes(run_dir, ["tokenizer.json", "gpt_pretrained.npz"]),
                       lambda: stages.gpt_reward_stage(config, run_dir, tokenizer, train, val, test, progress),
                       lambda: stages.load_scorer_of(run_dir, "reward"))
    else:
        scorer = s.run("reward", {}, lambda: stages.reward_stage(run_dir, train, val, test, progress),
                       lambda: stages.load_scorer_of(run_dir, "reward"))
    gold = s.run("gold", hashes(run_dir, ["reward.npz"]), lambda: stages.gold_stage(run_dir, train, val, test, scorer),
                 lambda: stages.load_scorer_of(run_dir, "gold"))
    train_queries, _ = stages.prompts(config, tokenizer, test)
    inputs = hashes(run_dir, ["tokenizer.json", "gpt_pretrained.npz", "reward.npz"])
    return s.run(config.method, inputs,
                 lambda: (rl_stage(config, run_dir, tokenizer, scorer, train_queries, inputs,
                                   {"gold": gold, "lexicon": VaderJudge()}, progress), None),
                 lambda: stages.load_policy(run_dir, config.method),
                 finished=lambda result: len(result[1]) >= config.rlhf.steps)


def rl_stage(config, run_dir, tokenizer, scorer, queries, inputs, judges=None, progress=True):
    """The run's method (config.method) from the pretrained model against the reward model -> (policy, history);
    resumes if killed, or stopped by --ppo-seconds (then the history is shorter than --ppo-steps).

    inputs: {name: sha256} of the files the stage is built from, part of its checkpoint's fingerprint. judges:
    scorers that also grade every rollout for the log (the gold scorer, the lexicon); they never drive training.
    """
    ref_model = mg.load_checkpoint(path(run_dir, "gpt_pretrained.npz"))
    policy = stages.policy_start(run_dir, config.seed, METHODS[config.method].values)
    log.info("%s: %d steps of %d rollouts, %d training prompts", METHODS[config.method].label, config.rlhf.steps,
             config.ppo.batch_size, len(queries))
    task = rlhf.Task(tokenizer, ref_model, scorer, queries, config.sampling, inputs, judges or {})
    checkpoint, log_file = (path(run_dir, name) for name in stages.artifacts(config.method))
    return policy, rlhf.train_run(config, policy, task, checkpoint, log_file, progress)


# ---------------------------------------------------------------------------------------------- the report


def config_record(config):
    """The config as the manifest records it with the report (JSON: tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def _report(s, config, run_dir, cache_dir, data, policy, history):
    """The report of the finished stages -> Outcome. Done already when it was made with this config and every file
    it wrote is unchanged; a missing or edited file of it is written again from the recorded stages, and said so;
    otherwise it is made afresh."""
    record = s.manifest.stages.get("report", {})
    kept = record.get("finished") and record.get("built_from") == {"config": config_record(config)}
    damaged = s.manifest.damaged("report") if kept else {}
    if kept and not damaged:
        log.info("report: done already")
        return Outcome(read_json(path(run_dir, "summary.json")))
    if not kept:
        s.manifest.forget("report", REPORT)   # a kill before the new report is recorded leaves none
        s.manifest.start("report", {"config": config_record(config)})
    run = FinishedRun.open(run_dir, cache_dir, needs=stage_order(config.method), config=config, data=data,
                           rebuilt=("report",))
    if kept:
        names = [name for name in REPORT if name in damaged]
        summary, wrote = _write_report(run, policy, history, names,
                                       run.manifest.metrics("report").get("evaluate_seconds"))
        run.manifest.record("report", wrote)
        log.info("report: %s; wrote %s again from the recorded stages (nothing was retrained)",
                 ", ".join(f"{name} {damaged[name]}" for name in names), "it" if len(names) == 1 else "them")
        return Outcome(summary, wrote)
    summary, wrote = _write_report(run, policy, history, REPORT)
    run.manifest.finish("report", wrote, {"evaluate_seconds": summary["timings_s"]["evaluate"]})
    return Outcome(summary, wrote)


def _write_report(run, policy, history, names, evaluate_seconds=None):
    """Write the report files `names` (of REPORT) -> (the summary, the names written). summary.json is made from the
    stages' records and the evaluation (run again when summary.json or samples.md is to be written: it samples from
    a fixed seed, so it gives the same numbers); evaluate_seconds: the evaluation time recorded by the process that
    first made the report (None: measured now)."""
    method, wrote = run.config.method, []
    summary = read_json(path(run.run_dir, "summary.json")) if "summary.json" not in names else None
    if "summary.json" in names or "samples.md" in names:
        t = time.perf_counter()
        before, after = run.evaluate(run.ref_model), run.evaluate(policy)
        evaluate_seconds = time.perf_counter() - t if evaluate_seconds is None else evaluate_seconds
    if "samples.md" in names:
        prompt_texts = [run.tokenizer.decode([int(t) for t in q]) for q in run.held_out()]
        write_samples(path(run.run_dir, "samples.md"), prompt_texts, before, after, METHODS[method].label)
        wrote.append("samples.md")
    if "tokens.html" in names:
        write_token_view(path(run.run_dir, "tokens.html"), run, policy, history)
        wrote.append("tokens.html")
    if "curves.png" in names and write_curves(history, path(run.run_dir, "curves.png"), method):
        wrote.append("curves.png")
    if "summary.json" in names:
        present = [n for n in REPORT if n in wrote or n in run.manifest.stages["report"].get("outputs", {})]
        files = sorted({*present, "summary.json", artifacts(method)[1]})
        summary = _summary(run, history, before, after, evaluate_seconds, files)
        write_json(path(run.run_dir, "summary.json"), summary)
        wrote.append("summary.json")
    return summary, wrote


def _summary(run, history, before, after, evaluate_seconds, files):
    """summary.json: the before/after metrics, a few examples, the data, what each stage was built with and what the
    process that built it measured (its seconds, and the pretraining, reward model and gold metrics), the config,
    and the report's files. Every number comes from the stages' records or the evaluation, so the summary of a run
    is the same whichever process writes it."""
    (before, before_samples), (after, after_samples) = before, after
    method, manifest = run.config.method, run.manifest
    prompt_texts = [run.tokenizer.decode([int(t) for t in q]) for q in run.held_out(3)]
    seconds = {stage: manifest.metrics(stage).get("seconds") for stage in stage_order(method)}
    timings = {"data_and_tokenizer": seconds["tokenizer"], "pretrain": seconds["pretrain"],
               "reward": _sum(seconds["reward"], seconds["gold"]), method: seconds[method],
               "evaluate": evaluate_seconds}
    timings["total"] = _sum(*timings.values())
    summary = {
        "method": method, "reference": before, "policy": after, "ppo_steps": len(history),
        "timings_s": timings, "data": {k: run.data[3].get(k) for k in DATA_INFO},
        "built_with": {stage: manifest.stages[stage]["built_from"] for stage in stage_order(method)},
        "config": dataclasses.asdict(run.config), "wrote": files,
        "examples": [{"prompt": prompt_texts[i], "before": before_samples["texts"][i],
                      "before_score": float(before_samples["scores"]["reward"][i]), "after": after_samples["texts"][i],
                      "after_score": float(after_samples["scores"]["reward"][i]),
                      "before_lexicon": float(before_samples["scores"]["lexicon"][i]),
                      "after_lexicon": float(after_samples["scores"]["lexicon"][i])} for i in range(len(prompt_texts))],
    }
    measured = {"pretrain": PRETRAIN_METRICS, "reward": ("val", "test"), "gold": ("test",)}
    for stage, keys in measured.items():     # a record without metrics has none to report
        if all(k in manifest.metrics(stage) for k in keys):
            summary[stage] = {k: manifest.metrics(stage)[k] for k in keys}
    return summary


DATA_INFO = ("corpus_sha256", "snippets", "duplicates_removed", "conflicting_labels")   # what the summary says of it


def _sum(*seconds):
    """The total of some recorded seconds; None if one is unknown (a record without them)."""
    return None if any(t is None for t in seconds) else sum(seconds)
