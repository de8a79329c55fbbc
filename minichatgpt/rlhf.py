"""The RLHF loop around PPOTrainer, as TRL's gpt2-sentiment example: prompt, sample, score, step; then evaluate.

    for each step:  queries   = the first 2..8 tokens of held-out reviews
                    responses ~ policy(. | query)                       (full distribution, KV cache)
                    scores    = reward model(query text + response text)   (log-odds of "positive")
                    stats     = trainer.step(queries, responses, scores)

The reward model and tokenizer are duck-typed: `scorer.score(texts, forward_batch_size=...) -> (N,)` and
`tokenizer.encode/decode/eos_token_id`. The loop checkpoints the policy and the trainer every few steps and
resumes a killed run from the last checkpoint, bit for bit.
"""
import dataclasses
import json
import logging
import os
import time
from typing import Optional

import numpy as np

import minigpt_np as mg
from minigpt_np.checkpoint import atomic_write, load_npz, save_checkpoint

from .rollout import generate_responses
from .trainer import PPOTrainer, layout, response_logprobs

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RLHFConfig:
    steps: int = 60                          # PPO steps (each: batch_size rollouts, scoring, ppo_epochs of updates)
    max_seconds: Optional[float] = None      # stop earlier once this much PPO time has passed (then resumable)
    query_min_tokens: int = 2                # prompts are the first k tokens of a review, k ~ U{min, ..., max}
    query_max_tokens: int = 8
    response_tokens: int = 16                # new tokens per response
    stop_at_eos: bool = True                 # end a response at <|endoftext|> (see docs/ppo.md, "the reward hack")
    checkpoint_every: int = 10               # steps between checkpoints of policy + trainer state
    seed: int = 0                            # prompts and sampling


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
    """Endless shuffled passes over the training prompts; its rng state is saved for resuming."""

    def __init__(self, queries, seed):
        self.queries, self.rng = queries, np.random.default_rng(seed)
        self.order, self.pos = self.rng.permutation(len(queries)), 0

    def next_batch(self, n):
        batch = []
        while len(batch) < n:
            if self.pos == len(self.order):
                self.order, self.pos = self.rng.permutation(len(self.queries)), 0
            batch.append(self.queries[self.order[self.pos]])
            self.pos += 1
        return batch

    def state(self):
        return {"rng": self.rng.bit_generator.state, "order": self.order.tolist(), "pos": self.pos}

    def load_state(self, state):
        self.rng.bit_generator.state = state["rng"]
        self.order, self.pos = np.array(state["order"]), state["pos"]


def save_ppo_checkpoint(path, trainer, step, prompts, sample_rng, finished):
    arrays, meta = trainer.state_dict()
    meta.update(step=step, prompts=prompts.state(), sample_rng=sample_rng.bit_generator.state, finished=finished)
    save_checkpoint(trainer.model, path, extra_arrays=arrays, extra_meta={"ppo": meta})


def train_ppo(policy, ref_model, tokenizer, scorer, queries, ppo_config, config, run_dir, progress=True):
    """Run (or resume) the PPO stage. Writes gpt_ppo.npz and ppo_log.jsonl into run_dir -> list of stats dicts."""
    ckpt_path = os.path.join(run_dir, "gpt_ppo.npz")
    log_path = os.path.join(run_dir, "ppo_log.jsonl")
    trainer = PPOTrainer(policy, ref_model, ppo_config, pad_token_id=tokenizer.eos_token_id)
    prompts = PromptStream(queries, config.seed)
    sample_rng = np.random.default_rng(config.seed + 1)
    step, history, last_saved = 0, [], None
    if os.path.exists(ckpt_path):
        model, arrays, meta = mg.load_checkpoint(ckpt_path, with_extras=True)
        policy.load_state_dict(model.state_dict())
        trainer.load_state_dict(arrays, meta["ppo"])
        prompts.load_state(meta["ppo"]["prompts"])
        sample_rng.bit_generator.state = meta["ppo"]["sample_rng"]
        step = meta["ppo"]["step"]
        last_saved = step
        history = read_log(log_path)[:step]
        log.info("resuming PPO from step %d (%s)", step, ckpt_path)
    write_log(log_path, history)             # drop lines logged after the checkpoint we resume from

    bar = _progress(config.steps, step, progress)
    start = time.perf_counter()
    while step < config.steps:
        if config.max_seconds is not None and time.perf_counter() - start > config.max_seconds:
            log.info("PPO time budget of %.0f s reached after %d steps", config.max_seconds, step)
            break
        t0 = time.perf_counter()
        batch_queries = prompts.next_batch(ppo_config.batch_size)
        responses = generate_responses(policy, batch_queries, config.response_tokens,
                                       forward_batch_size=ppo_config.forward_batch_size, rng=sample_rng,
                                       eos_token_id=tokenizer.eos_token_id, stop_at_eos=config.stop_at_eos)
        t1 = time.perf_counter()
        scores = scorer.score(texts_of(tokenizer, batch_queries, responses),
                              forward_batch_size=ppo_config.forward_batch_size)
        t2 = time.perf_counter()
        try:
            stats = trainer.step(batch_queries, responses, scores)
        except FloatingPointError as err:
            kept = (f"The last good checkpoint is {ckpt_path} (step {last_saved})." if last_saved is not None
                    else "No PPO checkpoint was written yet.")
            raise RuntimeError(f"PPO stopped at step {step + 1}: {err} {kept}") from err
        step += 1
        stats.update({"step": step, "env/reward_mean": float(np.mean(scores)),
                      "env/reward_positive": float(np.mean(scores > 0)),
                      "time/rollout/generate": t1 - t0, "time/rollout/score": t2 - t1,
                      "time/step": time.perf_counter() - t0})
        history.append(stats)
        with open(log_path, "a") as f:
            f.write(json.dumps(stats) + "\n")
        if bar is not None:
            bar.update(1)
            bar.set_postfix(reward=f"{stats['env/reward_mean']:.2f}", kl=f"{stats['objective/kl']:.1f}",
                            pos=f"{stats['env/reward_positive']:.2f}")
        if step % config.checkpoint_every == 0 or step == config.steps:
            save_ppo_checkpoint(ckpt_path, trainer, step, prompts, sample_rng, finished=step == config.steps)
            last_saved = step
    if bar is not None:
        bar.close()
    if step < config.steps:
        save_ppo_checkpoint(ckpt_path, trainer, step, prompts, sample_rng, finished=False)
    return history


def ppo_finished(run_dir):
    path = os.path.join(run_dir, "gpt_ppo.npz")
    return os.path.exists(path) and load_npz(path)[1].get("ppo", {}).get("finished", False)


def read_log(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_log(path, history):
    with atomic_write(path, "w") as f:
        f.writelines(json.dumps(s) + "\n" for s in history)


def _progress(total, initial, enabled):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, desc="ppo", unit="step")


# ---------------------------------------------------------------------------------------------- evaluation
def distinct_n(texts, n=2):
    """Distinct-n (Li et al. 2016): unique word n-grams / all word n-grams over a set of texts (1 = no repeats)."""
    grams = [tuple(words[i:i + n]) for words in (t.lower().split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / max(len(grams), 1)


def response_kl(policy, ref_model, queries, responses, forward_batch_size):
    """Per-response KL estimate sum_t (log pi(y_t) - log pi_ref(y_t)) on the policy's own samples -> (N,)."""
    batch = layout(queries, responses)
    kl = response_logprobs(policy, batch, forward_batch_size) - response_logprobs(ref_model, batch, forward_batch_size)
    return kl.sum(axis=1)


def evaluate(model, ref_model, tokenizer, scorer, queries, config, forward_batch_size, seed):
    """Sample one response per held-out query with a fixed seed and measure it -> (metrics, texts, responses)."""
    responses = generate_responses(model, queries, config.response_tokens, forward_batch_size=forward_batch_size,
                                   rng=np.random.default_rng(seed), eos_token_id=tokenizer.eos_token_id,
                                   stop_at_eos=config.stop_at_eos)
    texts = texts_of(tokenizer, queries, responses)
    scores = scorer.score(texts, forward_batch_size=forward_batch_size)
    response_texts = texts_of(tokenizer, [q[:0] for q in queries], responses)
    kl = response_kl(model, ref_model, queries, responses, forward_batch_size)
    metrics = {
        "reward_positive": float(np.mean(scores > 0)),
        "reward_mean": float(np.mean(scores)),
        "kl_to_reference": float(np.mean(kl)),
        "distinct_2": distinct_n(response_texts, 2),
        "response_tokens": float(np.mean([len(r) for r in responses])),
        "n": len(queries),
    }
    return metrics, texts, scores
