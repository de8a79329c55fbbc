"""The RLHF loop around PPOTrainer, as TRL's gpt2-sentiment example: prompt, sample, score, step.

    for each step:  queries   = the first 2..8 tokens of held-out reviews
                    responses ~ policy(. | query)                        (full distribution, KV cache)
                    scores    = reward model(query text + response text)    (log-odds of "positive")
                    stats     = trainer.step(queries, responses, scores)

What the loop trains against travels as one `Task`: the prompts, the scorer, the frozen reference, the tokenizer,
the sampling settings and the hashes of the files they came from. The scorer and the tokenizer are duck-typed:
`scorer.score(texts, forward_batch_size=...) -> (N,)` and `tokenizer.encode/decode/eos_token_id`. The loop
checkpoints through `minigpt_np.resume`, as pretraining does, so a killed run started again continues bit for
bit. `train_loop` is that loop for any trainer, and `train` runs any method of ppo_np.METHODS in it, as the
method's Method says (loop.methods): PPO (`train_ppo`), a method of groups (`rollout_step` with k responses
per prompt: RLOO, GRPO), a method that steps over fixed pairs (`pairs_step`: DPO).
"""
import dataclasses
import logging
import time
from typing import Optional

import numpy as np

import ppo_np
from minigpt_np.resume import resume, save_training_checkpoint, sha256_of_array
from ppo_np.dpo import make_pairs
from ppo_np.ppo import PPOTrainer

from ..run.run_folder import DamagedFile, read_jsonl, sha256_of_records, write_jsonl, writing
from .collapse import collapse_metrics
from .methods import DEFAULT, group_size, run_trainer_config
from .sampling import judged, sample, sample_n, score, texts_of

log = logging.getLogger(__name__)
PAIRS_SEED_OFFSET = 2   # the pairs' reference samples: rlhf.seed + 2 (the loop draws from seed and seed + 1)


@dataclasses.dataclass
class RLHFConfig:
    steps: int = 90                          # PPO steps (each: batch_size rollouts, scoring, ppo_epochs of updates);
                                             # 90 of 2 epochs keep the default run's KL under 12 nats
    max_seconds: Optional[float] = None      # stop earlier once this much PPO time has passed (then resumable)
    query_min_tokens: int = 2                # prompts are the first k tokens of a review, k ~ U{min, ..., max}
    query_max_tokens: int = 8
    checkpoint_every: int = 10               # steps between checkpoints of policy + trainer state
    seed: int = 0                            # prompts and sampling

    def __post_init__(self):
        for name in ("steps", "query_min_tokens", "checkpoint_every"):
            if not isinstance(getattr(self, name), (int, np.integer)) or getattr(self, name) < 1:
                raise ValueError(f"RLHFConfig.{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.query_max_tokens < self.query_min_tokens:
            raise ValueError(f"RLHFConfig needs query_min_tokens <= query_max_tokens, got "
                             f"{self.query_min_tokens} > {self.query_max_tokens}")
        if self.max_seconds is not None and not (np.isfinite(self.max_seconds) and self.max_seconds > 0):
            raise ValueError(f"RLHFConfig.max_seconds must be a number > 0 or None, got {self.max_seconds}")


# Fields that only say when to stop or save: a run may be resumed with other values.
BOOKKEEPING = ("steps", "max_seconds", "checkpoint_every")


def make_queries(tokenizer, texts, min_tokens, max_tokens, rng):
    """The first k ~ U{min_tokens..max_tokens} tokens of each text (texts shorter than k give all they have)."""
    queries = []
    for ids in (tokenizer.encode(t) for t in texts):
        k = int(rng.integers(min_tokens, max_tokens + 1))
        if ids:
            queries.append(np.asarray(ids[:k], dtype=np.int64))
    return queries


class PromptStream:
    """Endless shuffled passes over the training prompts."""

    def __init__(self, queries, rng):
        self.queries, self.rng = queries, rng
        self.order, self.pos = self.rng.permutation(len(queries)), 0

    def next_batch(self, n):
        batch = []
        while len(batch) < n:
            if self.pos == len(self.order):
                self.order, self.pos = self.rng.permutation(len(self.queries)), 0
            batch.append(self.queries[self.order[self.pos]])
            self.pos += 1
        return batch


@dataclasses.dataclass(frozen=True)
class Task:
    """What a policy is trained against, taken from one run: the prompts it answers, the scorer whose score is its
    reward, the frozen reference, the tokenizer and the sampling settings. inputs: {name: sha256} of the files these
    came from, part of every checkpoint's fingerprint. judges: {name: scorer} that also grade every rollout for the
    log ("env/gold_*" the gold scorer, "env/lexicon_*" VADER); they never drive training."""
    tokenizer: object
    ref_model: object
    scorer: object
    queries: list
    sampling: object                 # a SamplingConfig
    inputs: dict = dataclasses.field(default_factory=dict)
    judges: dict = dataclasses.field(default_factory=dict)


def fingerprint(trainer_config, config, task, key="ppo", items=None):
    """What a run of the loop is built from: its trainer's settings (under `key`), the loop's and the rollouts'
    (under "rlhf"), its prompts (or the fixed items it steps over) and the hashes of its inputs.

    The sampling chunk is the trainer config's forward_batch_size. The rollouts' length and eos stay under "rlhf",
    where they were before sampling had a config of its own, so checkpoints written then still resume."""
    rlhf = {k: v for k, v in dataclasses.asdict(config).items() if k not in BOOKKEEPING}
    rlhf.update(response_tokens=task.sampling.response_tokens, stop_at_eos=task.sampling.stop_at_eos)
    return {key: dataclasses.asdict(trainer_config), "rlhf": rlhf,
            "prompts": sha256_of_array(np.concatenate(task.queries if items is None else items)),
            "inputs": dict(task.inputs)}


def train_ppo(policy, task, ppo_config, config, checkpoint_path, log_path, *, progress=True, evaluate=None,
              evaluate_every=0, measure=None):
    """Run (or resume) PPO from `policy` (with a value head) on `task` -> the list of per-step stats (also one JSON
    line each in log_path).

    checkpoint_path: the policy and everything the next step depends on, every config.checkpoint_every steps
    and at the end; resumed if it exists, when its fingerprint (settings, prompts, task.inputs) matches. log_path:
    rewritten whole after every step. evaluate(policy) -> dict: measured after step 0, every evaluate_every
    steps and the last, and stored in that step's stats (step 0 as its own record); it must draw from its own generator.
    measure(step) -> step: wraps each step of the loop, e.g. to trace its memory (experiments.compare does).
    """
    trainer = PPOTrainer(policy, task.ref_model, ppo_config, pad_token_id=task.tokenizer.eos_token_id)

    def step(prompts, rng):
        return ppo_step(trainer, task, prompts, rng)

    def set_kl_coef(state):   # the adaptive controller's beta is loop state: a resumed run goes on from it
        trainer.kl_ctl.value = state["kl_coef"]

    return train_loop(trainer, measure(step) if measure else step, task.queries, config, checkpoint_path, log_path,
                      fingerprint(ppo_config, config, task), name="PPO", progress=progress, evaluate=evaluate,
                      evaluate_every=evaluate_every, save_state=lambda: {"kl_coef": trainer.kl_ctl.value},
                      load_state=set_kl_coef)


class LoopState:
    """What the loop carries from step to step and keeps in its checkpoint beside the policy and the optimizer: the
    step, the prompt stream's position, every generator ("shuffle" the trainer's mini-batches, "prompts" the
    stream's, "sampling" the rollouts'), the trainer's own state (save_state() -> dict / load_state(dict)), and the
    sha256 of the log up to the step, so that a resumed run trusts no log but the one it wrote."""

    def __init__(self, trainer, items, config, checkpoint_path, fp, save_state=None, load_state=None):
        self.trainer, self.config, self.checkpoint_path, self.fp = trainer, config, checkpoint_path, fp
        self.save_state, self.load_state = save_state, load_state
        self.rngs = {"shuffle": trainer.rng, "prompts": np.random.default_rng(config.seed),
                     "sampling": np.random.default_rng(config.seed + 1)}
        self.stream = PromptStream(items, self.rngs["prompts"])
        self.step, self.saved_step = 0, None     # saved_step: the step of the last checkpoint written or resumed
        self.log_sha256 = None                   # of the log the resumed checkpoint was written with

    def resume(self):
        """Load the checkpoint if there is one (it must match the fingerprint) -> True if the loop resumed."""
        state = resume(self.checkpoint_path, self.trainer.model, self.trainer.optimizer, fingerprint=self.fp,
                       rngs=self.rngs)
        if state is None:
            return False
        self.step = self.saved_step = state["step"]
        self.log_sha256 = state.get("log_sha256")    # checkpoints written before it was recorded have none
        if self.load_state is not None:
            self.load_state(state)
        self.stream.order, self.stream.pos = np.array(state["prompts_order"]), state["prompts_pos"]
        return True

    def start(self, log_path, name, evaluate=None):
        """Resume from the checkpoint, or start afresh with the step-0 evaluation -> the stats logged so far.

        The log is cut back to the checkpoint's step (lines logged after it are redone); it must hold every step up
        to there, and the step-0 record when the loop evaluates."""
        if self.resume():
            history = read_jsonl(log_path, expect=self.step + (evaluate is not None))
            if self.log_sha256 not in (None, sha256_of_records(history)):
                raise DamagedFile(f"{log_path} is not the log {self.checkpoint_path} was written with (its first "
                                  f"{len(history)} records changed): it was edited or replaced")
            log.info("%s: %s at step %d (%s)", name, "done already" if self.step >= self.config.steps else "resuming",
                     self.step, self.checkpoint_path)
            write_jsonl(log_path, history)
            return history
        write_jsonl(log_path, [])
        return [{"step": 0, **evaluate(self.trainer.model)}] if evaluate is not None else []

    def save(self, history):
        """Checkpoint the loop at its step; history: the log's records so far, as the log file holds them."""
        loop_state = {"step": self.step, "finished": self.step >= self.config.steps,
                      **(self.save_state() if self.save_state else {}),
                      "prompts_order": self.stream.order.tolist(), "prompts_pos": self.stream.pos,
                      "log_sha256": sha256_of_records(history)}
        with writing(self.checkpoint_path):
            save_training_checkpoint(self.checkpoint_path, self.trainer.model, self.trainer.optimizer,
                                     fingerprint=self.fp, state=loop_state, rngs=self.rngs)
        self.saved_step = self.step

    def failed(self, name, err):
        """A step's FloatingPointError as the RuntimeError that says where the last good checkpoint is."""
        kept = (f"The last good checkpoint is {self.checkpoint_path} (step {self.saved_step})."
                if self.saved_step is not None else f"No {name} checkpoint was written yet.")
        return RuntimeError(f"{name} stopped at step {self.step + 1}: {err} {kept}")


def train_loop(trainer, step, items, config, checkpoint_path, log_path, fp, *, name, progress=True, evaluate=None,
               evaluate_every=0, save_state=None, load_state=None):
    """The loop every trainer shares: draw, step, log, evaluate, checkpoint, resume -> the per-step stats.

    trainer: has .model (the policy), .optimizer and .rng (its mini-batch shuffles). step(stream, rng) -> stats
    makes one update: it draws its batch from `stream`, endless shuffled passes over `items` (prompts, or fixed
    preference pairs), and samples with `rng`. config: the RLHFConfig (steps, max_seconds, checkpoint_every,
    seed). fp: the fingerprint a resumed checkpoint must match. save_state / load_state: see LoopState. The rest as
    in train_ppo. A checkpoint holds the policy, the optimizer and every generator, so a killed run started again
    continues bit for bit.
    """
    loop = LoopState(trainer, items, config, checkpoint_path, fp, save_state, load_state)
    evaluated = evaluate is not None and bool(evaluate_every)
    history = loop.start(log_path, name, evaluate if evaluated else None)
    bar = _progress_bar(config.steps, loop.step, progress, name.lower())
    start = time.perf_counter()
    while loop.step < config.steps:
        if config.max_seconds is not None and time.perf_counter() - start > config.max_seconds:
            log.info("%s time budget of %.0f s reached after %d steps", name, config.max_seconds, loop.step)
            break
        try:
            stats = step(loop.stream, loop.rngs["sampling"])
        except FloatingPointError as err:
            raise loop.failed(name, err) from err
        loop.step += 1
        stats["step"] = loop.step
        if evaluated and (loop.step % evaluate_every == 0 or loop.step == config.steps):   # the last step always
            stats.update(evaluate(trainer.model))
        history.append(stats)
        write_jsonl(log_path, history)
        _show(bar, stats)
        if loop.step % config.checkpoint_every == 0 or loop.step == config.steps:
            loop.save(history)
    if bar is not None:
        bar.close()
    if loop.saved_step != loop.step:   # stopped by the time budget between checkpoints
        loop.save(history)
    return history


# what the progress bar shows of a step's stats, where the method logs it
POSTFIX = (("reward", "env/reward_mean", ".2f"), ("kl", "objective/kl", ".1f"), ("pos", "env/reward_positive", ".2f"),
           ("loss", "dpo/loss/train", ".3f"))


def ppo_step(trainer, task, prompts, rng):
    """One turn of PPO's loop: one sampled response per prompt (rollout_step with group_size 1) -> stats."""
    return rollout_step(trainer, task, prompts, rng)


def rollout_step(trainer, task, prompts, rng, group_size=1):
    """One turn of the loop: a batch of prompts, sampled responses, their scores and one trainer step -> stats.

    trainer: PPOTrainer, or any trainer whose step(queries, responses, scores) takes batch_size rows (RLOO, GRPO).
    group_size k: batch_size / k prompts, each repeated in k consecutive rows, so each gets k responses.
    The stats add what the rollouts show beside their score ("env/"): their collapse metrics and each judge's
    verdict on them.
    """
    t0 = time.perf_counter()
    queries = [q for q in prompts.next_batch(trainer.config.batch_size // group_size) for _ in range(group_size)]
    responses = sample(trainer.model, task.tokenizer, queries, task.sampling, rng)
    t1 = time.perf_counter()
    texts = texts_of(task.tokenizer, queries, responses)
    scores = score(task.scorer, texts, task.sampling)
    t2 = time.perf_counter()
    stats = trainer.step(queries, responses, scores)
    stats.update({**{f"env/{k}": v for k, v in judged("reward", task.scorer, scores).items()},
                  **{f"env/{k}": v for k, v in collapse_metrics(texts_of(task.tokenizer, [q[:0] for q in queries],
                                                                          responses)).items()}})
    for name, judge in task.judges.items():
        stats.update({f"env/{k}": v for k, v in judged(name, judge, score(judge, texts, task.sampling)).items()})
    stats.update({"time/rollout/generate": t1 - t0, "time/rollout/score": t2 - t1,
                  "time/step": time.perf_counter() - t0})
    return stats


def _progress_bar(total, initial, enabled, desc):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, desc=desc, unit="step")


def _show(bar, stats):
    if bar is not None:
        bar.update(1)
        bar.set_postfix({label: f"{stats[key]:{fmt}}" for label, key, fmt in POSTFIX if key in stats})


# ---------------------------------------------------------------------------------------------- every method


def sample_pairs(task, n_pairs, seed, progress=False):
    """The data of a method that steps over pairs (DPO): two reference samples for each of the first n_pairs training
    prompts of the loop's prompt stream (seeded with `seed`), scored by the proxy (task.scorer), the higher score
    chosen (ppo_np.dpo.make_pairs)
    -> (prompts, responses (2 per prompt, consecutive), texts, proxy scores (n_pairs, 2), chosen (n_pairs,))."""
    prompts = PromptStream(task.queries, np.random.default_rng(seed)).next_batch(n_pairs)
    rng = np.random.default_rng(seed + PAIRS_SEED_OFFSET)
    queries, responses = sample_n(task.ref_model, task.tokenizer, prompts, 2, task.sampling, rng, progress)
    texts = texts_of(task.tokenizer, queries, responses)
    proxy = score(task.scorer, texts, task.sampling).reshape(-1, 2)
    return prompts, responses, texts, proxy, make_pairs(proxy, rng)


def pair_items(prompts, responses, chosen):
    """The fixed items a pairs method's loop steps over: (query, chosen response, rejected response) int arrays, one
    per pair."""
    return [tuple(np.asarray(a, dtype=np.int64) for a in (prompts[p], responses[2 * p + c], responses[2 * p + 1 - c]))
            for p, c in enumerate(int(c) for c in chosen)]


def pairs_step(trainer, pairs):
    """One step on the next batch_size fixed pairs of the stream -> stats (with time/step, as rollout_step's)."""
    t0 = time.perf_counter()
    queries, chosen, rejected = (list(column) for column in zip(*pairs.next_batch(trainer.config.batch_size)))
    stats = trainer.step(queries, chosen, rejected)
    stats["time/step"] = time.perf_counter() - t0
    return stats


def train(name, policy, task, trainer_config, loop, checkpoint, log, *, pairs=None, progress=True,
          evaluate=None, evaluate_every=0, measure=None):
    """Run (or resume) method `name` from `policy` on `task` -> the per-step stats (also in `log`).

    trainer_config: from `trainer_config`; loop: the RLHFConfig; pairs: the fixed (query, chosen, rejected) items of
    a method that steps over pairs (`pair_items`). measure(step) -> step wraps each step (compare's `measured`). The
    rest as in train_ppo, whose loop every method shares."""
    if name == DEFAULT:     # PPO's loop also carries its KL controller's state
        return train_ppo(policy, task, trainer_config, loop, checkpoint, log, progress=progress, evaluate=evaluate,
                         evaluate_every=evaluate_every, measure=measure)
    method = ppo_np.METHODS[name]
    trainer = method.trainer(policy, task.ref_model, trainer_config, pad_token_id=task.tokenizer.eos_token_id)
    if method.pairs:
        items = pairs

        def step(stream, rng):
            return pairs_step(trainer, stream)
        fp = fingerprint(trainer_config, loop, task, key=name, items=[np.concatenate(item) for item in items])
    else:
        items, group = task.queries, group_size(name, trainer_config)

        def step(stream, rng):
            return rollout_step(trainer, task, stream, rng, group_size=group)
        fp = fingerprint(trainer_config, loop, task, key=name)
    return train_loop(trainer, measure(step) if measure else step, items, loop, checkpoint, log, fp,
                      name=method.label, progress=progress, evaluate=evaluate, evaluate_every=evaluate_every)


def train_run(config, policy, task, checkpoint, log, progress=True):
    """Run (or resume) a RunConfig's method (config.method, its options and the loop's settings) from `policy` on
    `task` -> the per-step stats. A pairs method (DPO) first samples its pairs from the reference (`sample_pairs`):
    the same ones again on a resume, from the same seed."""
    pairs = None
    if ppo_np.METHODS[config.method].pairs:
        prompts, responses, _, _, chosen = sample_pairs(task, config.rlhf.steps * config.ppo.batch_size // 2,
                                                        config.rlhf.seed, progress)
        pairs = pair_items(prompts, responses, chosen)
    return train(config.method, policy, task, run_trainer_config(config), config.rlhf, checkpoint, log, pairs=pairs,
                 progress=progress)
