"""A finished run of the main job, opened to build on: the one way the pipeline's evaluation, compare, overopt and
scripts/sweep_ppo.py get at a run's parts.

    run = FinishedRun.open("runs/default")   # refuses a run whose stages are not finished, or whose files changed
    run.config  run.tokenizer  run.ref_model  run.proxy  run.gold  run.prompts  run.data
    run.policy_start()  run.task()  run.evaluate(policy)

Opening checks the run before anything is read: the stages it needs are finished, and every file a finished stage
wrote still has the sha256 the manifest recorded, so a replaced reward.npz is refused, not used. The parts are
loaded when first asked for. `experiment` gives an experiment on a run (compare, overopt) the run's lock and a
folder of its own, whose manifest refuses other settings.
"""
import contextlib
import functools
import os

import minigpt_np as mg
from reward.lexicon import VaderJudge

from . import corpus, stages
from .config import from_dict
from .evaluate import EVAL_SEED_OFFSET, evaluate_policy, logged
from .rlhf import Task
from .run_folder import Lock, Manifest, Refused, path, read_json

BUILT_ON = ("tokenizer", "pretrain", "reward", "gold")   # the stages an experiment on a run starts from


class FinishedRun:
    """A run folder whose stages are finished, and its parts."""

    def __init__(self, run_dir, config, manifest, cache_dir=None, data=None):
        self.run_dir, self.config, self.manifest, self.cache_dir = run_dir, config, manifest, cache_dir
        if data is not None:
            self.data = data

    @classmethod
    def open(cls, run_dir, cache_dir=None, needs=BUILT_ON, config=None, data=None):
        """Check a run folder and open it -> FinishedRun; Refused if a stage in `needs` is not finished or a file
        changed.

        config: the RunConfig it was built with (the pipeline, which has it); by default the one the run's
        summary.json records. data: the corpus's (train, val, test, info), if already loaded. cache_dir: where the
        default corpus is cached.
        """
        manifest = Manifest(run_dir)
        missing = [s for s in needs if not manifest.stages.get(s, {}).get("finished")]
        summary = path(run_dir, "summary.json")
        if missing or (config is None and not os.path.exists(summary)):
            what = f"its {', '.join(missing)} stages are not finished" if missing else "it has no summary.json"
            raise Refused(f"{run_dir} is not a finished run ({what}); run minichatgpt --name "
                          f"{os.path.basename(run_dir)} first")
        for stage, record in manifest.stages.items():
            if record.get("finished"):
                manifest.verify(stage, f"restore it, or rebuild it with minichatgpt --name "
                                       f"{os.path.basename(run_dir)} --restart {stage}")
        return cls(run_dir, config or from_dict(read_json(summary)["config"]), manifest, cache_dir, data)

    # ------------------------------------------------------------------------------------------ its parts

    @functools.cached_property
    def data(self):
        """The corpus split as the run split it -> (train, val, test, info)."""
        return corpus.load_data(self.config, self.cache_dir)

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
        setting is chosen on (scripts/sweep_ppo.py --eval-on validation), so that the held-out prompts only report."""
        return stages.prompts(self.config, self.tokenizer, self.data[1])[1]

    def held_out(self, n=None, flag=None):
        """The first n held-out prompts (all by default). With flag, refuse (ValueError) more than the run has."""
        queries = self.prompts[1]
        if flag is not None and n > len(queries):
            raise ValueError(f"the run has {len(queries)} held-out prompts, fewer than {flag} {n}; use {flag} "
                             f"{len(queries)} or fewer")
        return queries[:n]

    @property
    def input_hashes(self):
        """{"<file> sha256": digest} of what is built on the run: tokenizer, reference, reward model, gold scorer."""
        return {f"{name} sha256": self.manifest.stages[stage]["outputs"][name]
                for stage in BUILT_ON for name in stages.ARTIFACTS[stage]}

    def pretrained(self):
        """A fresh copy of the pretrained GPT, to train."""
        return mg.load_checkpoint(path(self.run_dir, "gpt_pretrained.npz"))

    def policy_start(self):
        """A fresh copy of the pretrained GPT with the run's value head, where PPO starts."""
        return stages.policy_start(self.run_dir, self.config.seed)

    def task(self, scorer=None, judges=None):
        """What a policy is trained against on this run: its training prompts, a scorer (the proxy by default), the
        reference, the sampling settings and the hashes of its files; judges {name: scorer} grade the rollouts for
        the log -> rlhf.Task."""
        return Task(self.tokenizer, self.ref_model, self.proxy if scorer is None else scorer, self.prompts[0],
                    self.config.sampling, self.input_hashes, judges or {})

    # ------------------------------------------------------------------------------------------ its evaluation

    def evaluate(self, model, scorers=None, queries=None, sampling=None):
        """The model's answers to the held-out prompts, measured (evaluate.evaluate_policy) -> (metrics, samples).

        Every evaluation of a run samples with the same generator, seeded with its seed + EVAL_SEED_OFFSET, so the
        reference and every policy answer alike where they agree. Defaults: the run's scorers, every held-out
        prompt, the run's sampling settings."""
        return evaluate_policy(model, self.ref_model, self.tokenizer, scorers or self.scorers,
                               self.held_out() if queries is None else queries, sampling or self.config.sampling,
                               self.config.seed + EVAL_SEED_OFFSET)

    def evaluator(self, scorers=None, queries=None):
        """evaluate(policy) -> {"eval/<metric>": value}, what a training loop logs at its evaluated steps."""
        return lambda policy: logged(self.evaluate(policy, scorers, queries)[0])


@contextlib.contextmanager
def experiment(run_dir, name, settings, cache_dir=None):
    """An experiment on a finished run, in the run's lock -> yields (run, its folder run_dir/<name>).

    settings(run) -> {key: value}: what the experiment is built from besides the run's files; it may refuse
    (ValueError) settings that do not fit the run, before anything is written. The folder's manifest records them
    with the run's input hashes, refuses other ones, and marks the experiment finished when the block ends.
    """
    FinishedRun.open(run_dir)                  # refuse before the lock, which would create the folder
    with Lock(run_dir):
        run = FinishedRun.open(run_dir, cache_dir)
        folder = path(run_dir, name)
        built_from = {**{k: str(v) for k, v in settings(run).items()}, **run.input_hashes}
        own = Manifest(folder)
        own.check(name, built_from, [], f"delete {folder} to run minichatgpt-{name} with these settings")
        if name not in own.stages:
            own.start(name, built_from)
        yield run, folder
        own.finish(name, [])
