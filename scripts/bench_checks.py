"""What ppo_np's input checks cost in a PPO step of the pipeline's default shape.

    python scripts/bench_checks.py [--steps 3]

Builds the default GPT (minichatgpt.config.MODEL, float32, random weights) with a value head and the pipeline's
PPOConfig, and runs PPO steps on prompts and responses of the default lengths (RLHF.query_min_tokens to
query_max_tokens, then RLHF.response_tokens). Every public function of ppo_np.checks is wrapped in a timer, so the
figure is what the checks take inside real steps: the batch check, the forward passes' and every mini-batch's.
The checks are timed in CPU seconds of the calling thread and the step in CPU seconds of the process (and wall
seconds), so that time the process spends waiting for a core on a busy machine is charged to neither; the garbage
collector is paused while measuring, so that a collection that starts inside a check is not charged to it.
Prints the checks' time per step and per mini-batch, and their share of the step. It prints figures; it never
asserts.
"""
import argparse
import functools
import gc
import inspect
import os
import time

import numpy as np

import minigpt_np as mg
from minichatgpt import config
from ppo_np import PPOTrainer, checks


def timed_checks():
    """Wrap every public check in a timer -> the dict {"seconds": ..., "calls": ...} they add to."""
    spent = {"seconds": 0.0, "calls": 0}

    def timer(check):
        @functools.wraps(check)
        def wrapped(*args, **kwargs):
            t = time.thread_time()
            try:
                return check(*args, **kwargs)
            finally:
                spent["seconds"] += time.thread_time() - t
                spent["calls"] += 1
        return wrapped

    for name, f in inspect.getmembers(checks, inspect.isfunction):
        if not name.startswith("_") and f.__module__ == checks.__name__:
            setattr(checks, name, timer(f))
    return spent


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args(argv)
    ppo, rlhf = config.PPO, config.RLHF
    ref, policy = mg.GPT(config.MODEL, seed=0), mg.GPT(config.MODEL, seed=0)
    policy.add_value_head()
    trainer = PPOTrainer(policy, ref, ppo)
    rng = np.random.default_rng(0)
    V = config.MODEL.vocab_size
    queries = [rng.integers(1, V, rng.integers(rlhf.query_min_tokens, rlhf.query_max_tokens + 1))
               for _ in range(ppo.batch_size)]
    responses = [rng.integers(1, V, rlhf.response_tokens) for _ in range(ppo.batch_size)]
    scores = rng.normal(size=ppo.batch_size)
    trainer.step(queries, responses, scores)                            # warm-up
    spent = timed_checks()
    gc.collect()
    gc.disable()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(args.steps):
        trainer.step(queries, responses, scores)
    cpu, wall = (time.process_time() - cpu) / args.steps, (time.perf_counter() - wall) / args.steps
    gc.enable()
    minibatches = ppo.ppo_epochs * ppo.batch_size // ppo.mini_batch_size
    per_step = spent["seconds"] / args.steps
    print(f"PPO step of GPT {config.MODEL.n_layer}x{config.MODEL.n_head}x{config.MODEL.n_embd}, V {V}: batch "
          f"{ppo.batch_size}, {minibatches} mini-batches of {ppo.mini_batch_size}, load average "
          f"{os.getloadavg()[0]:.2f}")
    print(f"step: {1e3 * cpu:.0f} ms CPU, {1e3 * wall:.0f} ms wall; checks: {1e3 * per_step:.2f} ms CPU a step "
          f"({spent['calls'] // args.steps} calls), {1e6 * per_step / minibatches:.0f} us a mini-batch, "
          f"{100 * per_step / cpu:.3f}% of the step's CPU time")


if __name__ == "__main__":
    main()
