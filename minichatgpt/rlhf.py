"""The RLHF loop around PPOTrainer, as TRL's gpt2-sentiment example: prompt, sample, score, step.

    for each step:  queries   = the first 2..8 tokens of held-out reviews
                    responses ~ policy(. | query)                        (full distribution, KV cache)
                    scores    = reward model(query text + response text)    (log-odds of "positive")
                    stats     = trainer.step(queries, responses, scores)

The reward model and the tokenizer are duck-typed: `scorer.score(texts, forward_batch_size=...) -> (N,)` and
`tokenizer.encode/decode/eos_token_id`. The loop checkpoints through `minigpt_np.resume`, as pretraining does,
so a killed run started again continues bit for bit. `train_loop` is that loop for any trainer: PPO here, RLOO,
GRPO (`rollout_step` with k responses per prompt) and DPO (a step over fixed pairs) in `minichatgpt.compare`.
"""
import dataclasses
import logging
import time
from typing import Optional

import numpy as np

from minigpt_np.resume import resume, save_training_checkpoint, sha256_of_array
from ppo_np.rollout import generate_responses
from ppo_np.trainer import PPOTrainer

from .collapse import collapse_metrics
from .run_folder import read_jsonl, write_jsonl

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RLHFConfig:
    steps: int = 55                          # PPO steps (each: batch_size rollouts, scoring, ppo_epochs of updates);
                                             # 55 keeps the default run's KL near 11 nats (README, the frontier)
    max_seconds: Optional[float] = None      # stop earlier once this much PPO time has passed (then resumable)
    query_min_tokens: int = 2                # prompts are the first k tokens of a review, k ~ U{min, ..., max}
    query_max_tokens: int = 8
    response_tokens: int = 16                # new tokens per response, at most
    stop_at_eos: bool = True                 # end a response at <|endoftext|> (see docs/ppo.md, "the reward hack")
    checkpoint_every: int = 10               # steps between checkpoints of policy + trainer state
    seed: int = 0                            # prompts and sampling

    def __post_init__(self):
        for name in ("steps", "query_min_tokens", "response_tokens", "checkpoint_every"):
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


def texts_of(tokenizer, queries, responses):
    """Decode query + response, without the eos token: what the reward model reads, and what a reader sees."""
    eos = tokenizer.eos_token_id
    return [tokenizer.decode([int(t) for t in np.concatenate([q, r]) if t != eos]) for q, r in zip(queries, responses)]


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


def fingerprint(trainer_config, config, queries, inputs, key="ppo"):
    """What a run of the loop is built from: its trainer's settings (under `key`), the loop's, its prompts and the
    hashes of its inputs (models, scorer)."""
    rlhf = {k: v for k, v in dataclasses.asdict(config).items() if k not in BOOKKEEPING}
    return {key: dataclasses.asdict(trainer_config), "rlhf": rlhf,
            "prompts": sha256_of_array(np.concatenate(queries)), "inputs": dict(inputs)}


def train_ppo(policy, ref_model, tokenizer, scorer, queries, ppo_config, config, checkpoint_path, log_path,
              inputs=None, judge=None, progress=True, evaluate=None, evaluate_every=0, measure=None):
    """Run (or resume) the PPO stage -> the list of per-step stats (also one JSON line each in log_path).

    checkpoint_path: the policy and everything the next step depends on, every config.checkpoint_every steps
    and at the end; resumed if it exists. log_path: rewritten whole after every step. inputs: {name: hash} of
    what the run was built from (reference model, reward model, tokenizer), part of the fingerprint a resumed
    run must match. judge: a scorer that also grades the rollouts for the log ("env/gold_*"); it never drives
    training. evaluate(policy) -> dict: measured after step 0 and every evaluate_every steps and stored
    in that step's stats (step 0 as its own record); it must draw from its own generator. measure(step) -> step:
    wraps each step of the loop, e.g. to trace its memory (minichatgpt.compare does).
    """
    trainer = PPOTrainer(policy, ref_model, ppo_config, pad_token_id=tokenizer.eos_token_id)

    def step(prompts, rng):
        return ppo_step(trainer, tokenizer, scorer, prompts, config, rng, judge)

    def set_kl_coef(state):   # the adaptive controller's beta is loop state: a resumed run goes on from it
        trainer.kl_ctl.value = state["kl_coef"]

    return train_loop(trainer, measure(step) if measure else step, queries, config, checkpoint_path, log_path,
                      fingerprint(ppo_config, config, queries, inputs or {}), name="PPO", progress=progress,
                      evaluate=evaluate, evaluate_every=evaluate_every,
                      save_state=lambda: {"kl_coef": trainer.kl_ctl.value}, load_state=set_kl_coef)


def train_loop(trainer, step, items, config, checkpoint_path, log_path, fp, *, name, progress=True, evaluate=None,
               evaluate_every=0, save_state=None, load_state=None):
    """The loop every trainer shares: draw, step, log, evaluate, checkpoint, resume -> the per-step stats.

    trainer: has .model (the policy), .optimizer and .rng (its mini-batch shuffles). step(stream, rng) -> stats
    makes one update: it draws its batch from `stream`, endless shuffled passes over `items` (prompts, or fixed
    preference pairs), and samples with `rng`. config: the RLHFConfig (steps, max_seconds, checkpoint_every,
    seed). fp: the fingerprint a resumed checkpoint must match. save_state() -> dict / load_state(dict): the
    trainer's own loop state beside the step and the stream's position (PPO: its adaptive kl_coef). The rest as
    in train_ppo. A checkpoint holds the policy, the optimizer and every generator, so a killed run started again
    continues bit for bit.
    """
    rngs = {"shuffle": trainer.rng, "prompts": np.random.default_rng(config.seed),
            "sampling": np.random.default_rng(config.seed + 1)}
    stream = PromptStream(items, rngs["prompts"])
    policy = trainer.model
    state = resume(checkpoint_path, policy, trainer.optimizer, fingerprint=fp, rngs=rngs)
    step_n, history = 0, []
    if state is not None:
        step_n = state["step"]
        if load_state is not None:
            load_state(state)
        stream.order, stream.pos = np.array(state["prompts_order"]), state["prompts_pos"]
        history = read_jsonl(log_path, expect=step_n + bool(evaluate is not None and evaluate_every))
        log.info("%s: %s at step %d (%s)", name, "done already" if step_n >= config.steps else "resuming", step_n,
                 checkpoint_path)
    write_jsonl(log_path, history)             # drop lines logged after the checkpoint we resume from
    saved_step = step_n if state is not None else None

    def save():
        loop_state = {"step": step_n, "finished": step_n >= config.steps, **(save_state() if save_state else {}),
                      "prompts_order": stream.order.tolist(), "prompts_pos": stream.pos}
        save_training_checkpoint(checkpoint_path, policy, trainer.optimizer, fingerprint=fp, state=loop_state,
                                 rngs=rngs)

    if evaluate is not None and evaluate_every and state is None:
        history = [{"step": 0, **evaluate(policy)}]
    bar = _progress_bar(config.steps, step_n, progress, name.lower())
    start = time.perf_counter()
    while step_n < config.steps:
        if config.max_seconds is not None and time.perf_counter() - start > config.max_seconds:
            log.info("%s time budget of %.0f s reached after %d steps", name, config.max_seconds, step_n)
            break
        try:
            stats = step(stream, rngs["sampling"])
        except FloatingPointError as err:
            kept = (f"The last good checkpoint is {checkpoint_path} (step {saved_step})." if saved_step is not None
                    else f"No {name} checkpoint was written yet.")
            raise RuntimeError(f"{name} stopped at step {step_n + 1}: {err} {kept}") from err
        step_n += 1
        stats["step"] = step_n
        if evaluate is not None and evaluate_every and step_n % evaluate_every == 0:
            stats.update(evaluate(policy))
        history.append(stats)
        write_jsonl(log_path, history)
        if bar is not None:
            bar.update(1)
            bar.set_postfix({label: f"{stats[key]:{fmt}}" for label, key, fmt in POSTFIX if key in stats})
        if step_n % config.checkpoint_every == 0 or step_n == config.steps:
            save()
            saved_step = step_n
    if bar is not None:
        bar.close()
    if saved_step != step_n:   # stopped by the time budget between checkpoints
        save()
    return history


# what the progress bar shows of a step's stats, where the method logs it
POSTFIX = (("reward", "env/reward_mean", ".2f"), ("kl", "objective/kl", ".1f"), ("pos", "env/reward_positive", ".2f"),
           ("loss", "dpo/loss/train", ".3f"))


def ppo_step(trainer, tokenizer, scorer, prompts, config, rng, judge=None):
    """One turn of PPO's loop: one sampled response per prompt (rollout_step with group_size 1) -> stats."""
    return rollout_step(trainer, tokenizer, scorer, prompts, config, rng, judge)


def rollout_step(trainer, tokenizer, scorer, prompts, config, rng, judge=None, group_size=1):
    """One turn of the loop: a batch of prompts, sampled responses, their scores and one trainer step -> stats.

    trainer: PPOTrainer, or any trainer whose step(queries, responses, scores) takes batch_size rows (RLOO, GRPO).
    group_size k: batch_size / k prompts, each repeated in k consecutive rows, so each gets k responses.
    The stats add what the rollouts show beside their score ("env/"): their collapse metrics and, with a judge,
    its verdict on them.
    """
    fbs = trainer.config.forward_batch_size
    t0 = time.perf_counter()
    queries = [q for q in prompts.next_batch(trainer.config.batch_size // group_size) for _ in range(group_size)]
    responses = generate_responses(trainer.model, queries, config.response_tokens, forward_batch_size=fbs, rng=rng,
                                   eos_token_id=tokenizer.eos_token_id, stop_at_eos=config.stop_at_eos)
    t1 = time.perf_counter()
    texts = texts_of(tokenizer, queries, responses)
    scores = scorer.score(texts, forward_batch_size=fbs)
    t2 = time.perf_counter()
    stats = trainer.step(queries, responses, scores)
    stats.update({"env/reward_mean": float(np.mean(scores)), "env/reward_positive": float(np.mean(scores > 0)),
                  **{f"env/{k}": v for k, v in collapse_metrics(texts_of(tokenizer, [q[:0] for q in queries],
                                                                          responses)).items()}})
    if judge is not None:
        gold = judge.score(texts, forward_batch_size=fbs)
        stats.update({"env/gold_mean": float(np.mean(gold)), "env/gold_positive": float(np.mean(gold > 0))})
    stats.update({"time/rollout/generate": t1 - t0, "time/rollout/score": t2 - t1,
                  "time/step": time.perf_counter() - t0})
    return stats


def _progress_bar(total, initial, enabled, desc):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, desc=desc, unit="step")
