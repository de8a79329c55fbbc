"""A finished run of the main job, opened to build on: the one way the pipeline's evaluation, compare, overopt,
minichatgpt-sample given a run folder and scripts/sweep.py get at a run's parts.

    run = FinishedRun.open("runs/default")   # refuses a run that is not finished, or whose files changed
    run.config  run.tokenizer  run.ref_model  run.proxy  run.gold  run.prompts  run.data
    run.policy_start()  run.task()  run.evaluate(policy)

Opening checks the run before anything is read: the stages it needs are finished, every file a finished stage
wrote still has the sha256 the manifest recorded (a replaced reward.npz is refused, not used), and the folder holds
no symbolic link. The config is the one the manifest recorded with the report, not summary.json's copy, which only
reports it. The corpus is read again when first needed, and refused unless it hashes as the run recorded it. The
parts are loaded when first asked for. `experiment` gives an experiment on a run (compare, overopt) the run's lock
and a folder of its own (`Experiment`), whose manifest refuses other settings and records every file it writes.
"""
import contextlib
import dataclasses
import functools
import os
import shlex

import minigpt_np as mg
from reward.lexicon import VaderJudge

from ..data import corpus
from ..data.rotten_tomatoes import ROTTEN_TOMATOES_CSV, CorpusUnavailableError, default_cache_dir
from ..evaluation.evaluate import EVAL_SEED_OFFSET, evaluate_policy, logged
from ..loop.methods import DEFAULT
from ..loop.rlhf import Task
from ..settings.config import RunConfig, from_dict, run_options
from ..settings.options import UsageError, get
from . import stages
from .run_folder import DamagedFile, Lock, Manifest, Refused, path, refuse_links, remove_orphans

BUILT_ON = stages.BASE_STAGES   # the stages an experiment on a run starts from


def trained_method(manifest):
    """The method whose RL stage a run folder holds (one per folder; the default while it holds none)."""
    return next((method for method in stages.METHODS if method in manifest.stages), DEFAULT)


def main_job(run_dir, *flags, config=None):
    """The minichatgpt command line that works on run_dir, quoted for a shell: "minichatgpt --runs-dir R --name N",
    with the options of `config` (a RunConfig: the run's) that are not their defaults, so that it opens the run as it
    was built."""
    runs_dir, name = os.path.split(os.path.normpath(run_dir))
    where = ["--runs-dir", runs_dir or "."] if os.path.normpath(runs_dir or ".") != "runs" else []
    words = ["minichatgpt", *where, "--name", name, *(options_of(config) if config is not None else []), *flags]
    return " ".join(shlex.quote(word) for word in words)


def options_of(config):
    """The flags that make `config` (a RunConfig) from the defaults: every option the run's method reads whose value
    is not its default -> ["--n-layer", "1", "--no-stop-at-eos", ...]."""
    words, default = [], RunConfig()
    for o in run_options():
        value = get(config, o.field)
        if value == get(default, o.field) or value is None or (o.stage in stages.METHODS and o.stage != config.method) \
                or (o.stage == "rl" and o.flag not in stages.METHODS[config.method].uses):
            continue
        if isinstance(value, bool):
            words.append(o.flag if value else "--no-" + o.flag[2:])
        else:
            words += [o.flag, *(str(v) for v in value)] if o.many else [o.flag, str(value)]
    return words


def recorded_config(manifest):
    """The RunConfig the manifest recorded with the report -> RunConfig, or None if it holds no readable one."""
    try:
        return from_dict(manifest.stages["report"]["built_from"]["config"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


class FinishedRun:
    """A run folder whose stages are finished, and its parts."""

    def __init__(self, run_dir, manifest, config=None, cache_dir=None, data=None):
        self.run_dir, self.manifest, self.cache_dir = run_dir, manifest, cache_dir
        if config is not None:
            self.config = config
        if data is not None:
            self.data = data

    @classmethod
    def open(cls, run_dir, cache_dir=None, needs=None, config=None, data=None, rebuilt=()):
        """Check a run folder and open it -> FinishedRun; Refused if a stage in `needs` (default: every stage of the
        run's method, and the report) is not finished, a file changed, or the folder holds a link.

        config: the RunConfig it was built with (the pipeline, which has it); by default the one the manifest
        recorded with the report. data: the corpus's (train, val, test, info), if already loaded. cache_dir: where
        the default corpus is cached. rebuilt: stages whose files are not checked, since the caller writes them
        again (the pipeline, the report). A refusal names the command that repairs the run, with the run's options.
        """
        if not os.path.isdir(run_dir):
            raise Refused(f"{run_dir}: no such run folder; give the --runs-dir and --name of a run of minichatgpt")
        manifest = Manifest(run_dir, elsewhere="build the run again under a new --name")
        if needs is None:
            needs = (*stages.stage_order(trained_method(manifest)), "report")
        missing = [s for s in needs if not manifest.stages.get(s, {}).get("finished")]
        recorded = recorded_config(manifest)
        if missing:
            what = f"its {', '.join(missing)} stage{'s are' if len(missing) > 1 else ' is'} not finished"
            raise Refused(f"{run_dir} is not a finished run ({what}); run {main_job(run_dir)} first, with the "
                          "options it was started with")
        refuse_links(run_dir, stages.run_files())
        for stage, record in manifest.stages.items():
            if record.get("finished") and stage not in rebuilt:
                restart = main_job(run_dir, "--restart", stage, config=recorded)
                manifest.verify(stage, f"run {main_job(run_dir, config=recorded)} to write it again (it retrains "
                                "nothing)" if stage == "report" else f"restore it, or rebuild it with {restart}")
        run = cls(run_dir, manifest, config, cache_dir, data)
        if "report" in needs:
            run.config    # read, and checked, now
        return run

    @functools.cached_property
    def config(self):
        """The RunConfig the run was built and evaluated with, as the manifest recorded it with the report."""
        try:
            return from_dict(self.manifest.stages["report"]["built_from"]["config"])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise Refused(f"{self.manifest.file} holds no readable config of the run (it is damaged); run "
                          f"{main_job(self.run_dir)} to record it again") from None

    # ------------------------------------------------------------------------------------------ its parts

    @functools.cached_property
    def data(self):
        """The corpus split as the run split it -> (train, val, test, info); Refused unless the corpus, read again,
        hashes as the manifest recorded it."""
        spec = self.config.corpus
        try:
            data = corpus.load_data(self.config, self.cache_dir)
        except (OSError, ValueError) as e:   # said with the options of the command that opened the run
            reason = "it is not cached, and pip could not fetch it" if isinstance(e, CorpusUnavailableError) else \
                "it is missing" if spec != "rotten_tomatoes" and not os.path.exists(spec) else str(e).split("; ")[0]
            if spec == "rotten_tomatoes":
                raise Refused(f"{self.run_dir} was built from the default corpus, which cannot be read now ({reason}); "
                              "point --cache-dir (or MINICHATGPT_CACHE) at the folder that holds "
                              f"{ROTTEN_TOMATOES_CSV}, or at one it can be fetched into "
                              f"(now {self.cache_dir or default_cache_dir()})") from None
            raise Refused(f"{self.run_dir} was built from the corpus {spec}, which no longer loads as it did "
                          f"({reason}); put the run's corpus back at that path") from None
        recorded = self.manifest.stages["tokenizer"]["built_from"].get("corpus sha256")
        data = (*data[:3], corpus.as_recorded(data[3], recorded))
        if data[3]["corpus_sha256"] != recorded:
            raise Refused(f"the corpus {spec} changed since {self.run_dir} was built from it (its snippets hash to "
                          f"{data[3]['corpus_sha256'][:12]}..., the run recorded {str(recorded)[:12]}...); put the "
                          "run's corpus back at that path")
        return data

    @functools.cached_property
    def tokenizer(self):
        return mg.load_tokenizer(path(self.run_dir, "tokenizer.json"))

    @functools.cached_property
    def ref_model(self):
        """The pretrained GPT, frozen: the reference every policy is measured from."""
        return stages.load_pretrained(self.run_dir, self.tokenizer)[0]

    @functools.cached_property
    def proxy(self):
        """The reward model (reward.npz): the proxy every policy is trained against."""
        return stages.load_scorer_of(self.run_dir, "reward")

    @functools.cached_property
    def gold(self):
        """The gold scorer (gold.npz), which only judges."""
        return stages.load_scorer_of(self.run_dir, "gold")

    @functools.cached_property
    def lexicon(self):
        """The judge of another kind: VADER's human-built lexicon (reward.lexicon), pinned, nothing to load."""
        return VaderJudge()

    @property
    def scorers(self):
        """What an evaluation measures with: {"reward": the proxy, "gold": the gold scorer, "lexicon": VADER}."""
        return {"reward": self.proxy, "gold": self.gold, "lexicon": self.lexicon}

    @functools.cached_property
    def prompts(self):
        """(training prompts, held-out prompts), both from the test split, which the reward model never saw."""
        return stages.prompts(self.config, self.tokenizer, self.data[2])

    @functools.cached_property
    def validation_prompts(self):
        """Prompts cut from the validation split's labelled reviews as the held-out ones are from the test split: what a
        setting is chosen on (scripts/sweep.py --eval-on validation), so that the held-out prompts only report."""
        return stages.prompts(self.config, self.tokenizer, self.data[1])[1]

    def held_out(self, n=None, flag=None):
        """The first n held-out prompts (all by default). With flag, refuse (UsageError) more than the run has."""
        queries = self.prompts[1]
        if flag is not None and n > len(queries):
            raise UsageError(f"{flag} {n} is more than the run's {len(queries)} held-out prompts; use {flag} "
                             f"{len(queries)} or fewer")
        return queries[:n]

    def shaping(self):
        """What of the run's config an experiment on it is built from besides its files: PPO's, the loop's and
        sampling's settings, the seed, and the number of held-out prompts (which sets the training prompts too)."""
        c = self.config
        return {"run ppo": dataclasses.asdict(c.ppo), "run rlhf": dataclasses.asdict(c.rlhf),
                "run sampling": dataclasses.asdict(c.sampling), "run seed": c.seed, "run eval_prompts": c.eval_prompts}

    @property
    def input_hashes(self):
        """{"<file> sha256": digest} of what is built on the run: tokenizer, reference, reward model, gold scorer."""
        return {f"{name} sha256": self.manifest.stages[stage]["outputs"][name]
                for stage in BUILT_ON for name in stages.artifacts(stage)}

    def pretrained(self):
        """A fresh copy of the pretrained GPT, to train."""
        return mg.load_checkpoint(path(self.run_dir, "gpt_pretrained.npz"))

    @property
    def policy_file(self):
        """The trained policy's checkpoint, gpt_<method>.npz, whatever the run's method."""
        return path(self.run_dir, stages.artifacts(trained_method(self.manifest))[0])

    def trained_policy(self):
        """The run's trained policy, whatever method trained it -> (method, its file gpt_<method>.npz), checked
        against the manifest when the run was opened."""
        return trained_method(self.manifest), self.policy_file

    def policy_start(self, value_head=True):
        """A fresh copy of the pretrained GPT where a method starts: with the run's value head for PPO."""
        return stages.policy_start(self.run_dir, self.config.seed, value_head)

    def task(self, scorer=None, judges=None):
        """What a policy is trained against on this run: its training prompts, a scorer (the proxy by default), the
        reference, the sampling settings and the hashes of its files; judges {name: scorer} grade the rollouts for
        the log -> rlhf.Task."""
        return Task(self.tokenizer, self.ref_model, self.proxy if scorer is None else scorer, self.prompts[0],
                    self.config.sampling, self.input_hashes, judges or {})

    # ------------------------------------------------------------------------------------------ its evaluation

    def evaluate(self, model, scorers=None, queries=None, sampling=None, kl="sampled"):
        """The model's answers to the held-out prompts, measured (evaluate.evaluate_policy) -> (metrics, samples).

        Every evaluation of a run samples with the same generator, seeded with its seed + EVAL_SEED_OFFSET, so the
        reference and every policy answer alike where they agree. Defaults: the run's scorers, every held-out
        prompt, the run's sampling settings. kl: "sampled" or "exact" (evaluate.measure_responses)."""
        return evaluate_policy(model, self.ref_model, self.tokenizer, scorers or self.scorers,
                               self.held_out() if queries is None else queries, sampling or self.config.sampling,
                               self.config.seed + EVAL_SEED_OFFSET, kl=kl)

    def evaluator(self, scorers=None, queries=None, kl="sampled"):
        """evaluate(policy) -> {"eval/<metric>": value}, what a training loop logs at its evaluated steps."""
        return lambda policy: logged(self.evaluate(policy, scorers, queries, kl=kl)[0])


# the command that makes each experiment's folder
EXPERIMENT_COMMANDS = {"compare": "minichatgpt-compare", "overopt": "minichatgpt-overopt",
                       "overopt_cross": "minichatgpt-overopt --cross-kind"}


class Experiment:
    """An experiment's own folder, run_dir/<name>, and its record in the folder's manifest.json: the settings and run
    files it is built from, and the sha256 of every file it has finished writing there.

    Opening it refuses other settings, and a recorded file that changed or went missing. A file found without a
    record (a kill came between writing and recording it, or it was put there by hand) is made again; a training
    checkpoint without one is resumed only if its fingerprint matches, and its log only if it hashes as the
    checkpoint recorded it (`rlhf.LoopState`).
    """

    def __init__(self, run_dir, name, built_from, names=None):
        self.name, self.folder = name, path(run_dir, name)
        runs_dir, run_name = os.path.split(os.path.normpath(run_dir))
        command = (f"{EXPERIMENT_COMMANDS[name]} --runs-dir {shlex.quote(runs_dir or '.')} "
                   f"--name {shlex.quote(run_name)}")
        again = f"delete {shlex.quote(self.folder)} to run {command} again"
        self.manifest = Manifest(self.folder, elsewhere=again)
        settings = f"delete {shlex.quote(self.folder)} to run {command} with these settings"
        finished = self.manifest.check(name, built_from, [], settings, changed_file=f"restore it, or {again}",
                                       names=names)
        if name not in self.manifest.stages:
            self.manifest.start(name, built_from)
        elif not finished:    # what an interrupted experiment recorded is checked too
            self.manifest.verify(name, f"restore it, or {again}")
        self.again = again

    def file(self, name):
        return path(self.folder, name)

    def kept(self, *names):
        """Did the experiment finish writing these files before (recorded, and checked when it was opened)?"""
        return all(name in self.manifest.stages[self.name].get("outputs", {}) for name in names)

    def wrote(self, *names):
        """Record the sha256 of files the experiment has finished writing."""
        self.manifest.record(self.name, names)


@contextlib.contextmanager
def experiment(run_dir, name, settings, cache_dir=None, names=None):
    """An experiment on a finished run, in the run's lock -> yields (run, its Experiment).

    settings(run) -> {key: value}: what the experiment is built from besides the run's files; it refuses
    (UsageError) settings that do not fit the run, before anything is written. The folder's manifest records them
    with the run's input hashes, refuses other ones (names: {key: its flag}, to name them as typed), and marks the
    experiment finished when the block ends. The temporary files a killed process left there are removed first.
    """
    FinishedRun.open(run_dir)                  # refuse before the lock, which would create the folder
    with Lock(run_dir):
        run = FinishedRun.open(run_dir, cache_dir)
        built_from = {**{k: str(v) for k, v in settings(run).items()}, **run.input_hashes}
        ex = Experiment(run_dir, name, built_from, names)
        remove_orphans(ex.folder)
        remove_orphans(run_dir, stages.run_files())
        try:
            yield run, ex
        except DamagedFile as e:
            raise Refused(f"{e}; {ex.again}") from e
        ex.manifest.finish(name, [])
