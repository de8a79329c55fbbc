"""The RLHF loop around PPOTrainer, as TRL's gpt2-sentiment example: prompt, sample, score, step.

    for each step:  queries   = the first 2..8 tokens of held-out reviews
                    responses ~ policy(. | query)                        (full distribution, KV cache)
                    scores    = reward model(query text + response text)    (log-odds of "positive")
                    stats     = trainer.step(queries, responses, scores)

The reward model and the tokenizer are duck-typed: `scorer.score(texts, forward_batch_size=...) -> (N,)` and
`tokenizer.encode/decode/eos_token_id`. The loop checkpoints through `minigpt_np.resume`, as pretraining does,
so a killed run started again continues bit for bit.
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
    steps: int = 40                          # PPO steps (each: batch_size rollouts, scoring, ppo_epochs of updates)
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


def fingerprint(ppo_config, config, queries, inputs):
    """What a PPO run is built from: its settings, its prompts and the hashes of its inputs (models, scorer)."""
    rlhf = {k: v for k, v in dataclasses.asdict(config).items() if k not in BOOKKEEPING}
    return {"ppo": dataclasses.asdict(ppo_config), "rlhf": rlhf,
            "prompts": sha256_of_array(np.concatenate(queries)), "inputs": dict(inputs)}


def train_ppo(policy, ref_model, tokenizer, scorer, queries, ppo_config, config, checkpoint_path, log_path,
              inputs=None, judge=None, progress=True, evaluate=None, evaluate_every=0):
    """Run (or resume) the PPO stage -> the list of per-step stats (also one JSON line each in log_path).

    checkpoint_path: the policy and everything the next step depends on, every config.checkpoint_every steps
    and at the end; resumed if it exists. log_path: rewritten whole after every step. inputs: {name: hash} of
    what the run was built from (reference model, reward model, tokenizer), part of the fingerprint a resumed
    run must match. judge: a scorer that also grades the rollouts for the log ("env/gold_*"); it never drives
    training. evaluate(policy) -> dict: measured after step 0 and every evaluate_every steps and stored
    in that step's stats (step 0 as its own record); it must draw from its own generator.
    """
    trainer = PPOTrainer(policy, ref_model, ppo_config, pad_token_id=tokenizer.eos_token_id)
    rngs = {"shuffle": trainer.rng, "prompts": np.random.default_rng(config.seed),
            "sampling": np.random.default_rng(config.seed + 1)}
    prompts = PromptStream(queries, rngs["prompts"])
    fp = fingerprint(ppo_config, config, queries, inputs or {})
    state = resume(checkpoint_path, policy, trainer.optimizer, fingerprint=fp, rngs=rngs)
    step, history = 0, []
    if state is not None:
        step, trainer.kl_ctl.value = state["step"], state["kl_coef"]
        prompts.order, prompts.pos = np.array(state["prompts_order"]), state["prompts_pos"]
        history = read_jsonl(log_path, expect=step + bool(evaluate is not None and evaluate_every))
        log.info("PPO: %s at step %d (%s)", "done already" if step >= config.steps else "resuming", step,
                 checkpoint_path)
    write_jsonl(log_path, history)             # drop lines logged after the checkpoint we resume from
    saved_step = step if state is not None else None

    def save():
        loop_state = {"step": step, "finished": step >= config.steps, "kl_coef": trainer.kl_ctl.value,
                      "prompts_order": prompts.order.tolist(), "prompts_pos": prompts.pos}
        save_training_checkpoint(checkpoint_path, policy, trainer.optimizer, fingerprint=fp, state=loop_state,
                                 rngs=rngs)

    if evaluate is not None and evaluate_every and state is None:
        history = [{"step": 0, **evaluate(policy)}]
    bar = _progress_bar(config.steps, step, progress)
    start = time.perf_counter()
    while step < config.steps:
        if config.max_seconds is not None and time.perf_counter() - start > config.max_seconds:
            log.info("PPO time budget of %.0f s reached after %d steps", config.max_seconds, step)
            break
        try:
            stats = ppo_step(trainer, tokenizer, scorer, prompts, config, rngs["sampling"], judge)
        except FloatingPointError as err:
            kept = (f"The last good checkpoint is {checkpoint_path} (step {saved_step})." if saved_step is not None
                    else "No PPO checkpoint was written yet.")
            raise RuntimeError(f"PPO stopped at step {step + 1}: {err} {kept}") from err
        step += 1
        stats["step"] = step
        if evaluate is not None and evaluate_every and step % evaluate_every == 0:
            stats.update(evaluate(policy))
        history.append(stats)
        write_jsonl(log_path, history)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(reward=f"{stats['env/reward_mean']:.2f}", kl=f"{stats['objective/kl']:.1f}",
                            pos=f"{stats['env/reward_positive']:.2f}")
        if step % config.checkpoint_every == 0 or step == config.steps:
            save()
            saved_step = step
    if bar is not None:
        bar.close()
    if saved_step != step:   # stopped by the time budget between checkpoints
        save()
    return history


def ppo_step(trainer, tokenizer, scorer, prompts, config, rng, judge=None):
    """One turn of the loop: a batch of prompts, sampled responses, their scores and one PPO step -> stats.

    The stats add what the rollouts show beside their score ("env/"): their collapse metrics and, with a judge,
    its verdict on them.
    """
    fbs = trainer.config.forward_batch_size
    t0 = time.perf_counter()
    queries = prompts.next_batch(trainer.config.batch_size)
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


def _progress_bar(total, initial, enabled):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, desc="ppo", unit="step")
