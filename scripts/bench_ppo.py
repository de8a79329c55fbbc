"""Time and peak memory of one PPOTrainer.step at several forward_batch_size values.

    python scripts/bench_ppo.py [--batch-size 64] [--forward-batch-sizes 4 16 64] [--vocab-size 4096]

Uses the default pipeline's GPT shape (4 x 4 x 128, block 64) on the fast kernels, with random weights, batch 64,
8-token queries and 16-token responses, mini-batch 16, 4 PPO epochs. Peak memory is what tracemalloc sees at its
high-water mark during the step (NumPy reports its array allocations to tracemalloc), measured in a separate untimed
pass because tracing slows allocation down. forward_batch_size bounds the no-grad forward pass; the gradient passes
are bounded by mini_batch_size. Prints a table and, last, JSON. It prints figures; it never asserts on them.
"""
import argparse
import json
import os
import tracemalloc

import numpy as np

import minigpt_np as mg
from ppo_np import PPOConfig, PPOTrainer
from ppo_np.batch import layout


def make_inputs(batch_size, vocab_size, seed=0):
    rng = np.random.default_rng(seed)
    queries = [rng.integers(1, vocab_size, 8) for _ in range(batch_size)]
    responses = [rng.integers(1, vocab_size, 16) for _ in range(batch_size)]
    return queries, responses, rng.normal(size=batch_size)


def make_trainer(args, forward_batch_size):
    cfg = mg.GPTConfig(vocab_size=args.vocab_size, block_size=64, n_layer=4, n_head=4, n_embd=128)
    ref, policy = mg.GPT(cfg, seed=0), mg.GPT(cfg, seed=0)
    policy.add_value_head()
    return PPOTrainer(policy, ref, PPOConfig(lr=2e-4, batch_size=args.batch_size, forward_batch_size=forward_batch_size,
                                             mini_batch_size=args.mini_batch_size, ppo_epochs=4))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=64, help="rollouts per PPO step")
    p.add_argument("--mini-batch-size", type=int, default=16, help="rows per gradient update")
    p.add_argument("--forward-batch-sizes", type=int, nargs="+", default=[4, 16, 64],
                   help="the forward_batch_size values to time, one after the other")
    p.add_argument("--vocab-size", type=int, default=4096, help="the GPT's vocabulary")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per value (median reported)")
    args = p.parse_args(argv)
    mg.kernels.use("fast")                                              # the engine as the command line runs it
    inputs = make_inputs(args.batch_size, args.vocab_size)
    rows = []
    for fbs in args.forward_batch_sizes:
        trainer = make_trainer(args, fbs)
        trainer.step(*inputs)                                           # warm-up
        times, forward = [], []
        for _ in range(args.repeats):
            stats = trainer.step(*inputs)
            times.append(stats["time/ppo/total"])
            forward.append(stats["time/ppo/forward_pass"])
        trainer = make_trainer(args, fbs)
        tracemalloc.start()
        tracemalloc.reset_peak()
        trainer.batched_forward_pass(layout(inputs[0], inputs[1]))
        forward_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        trainer.step(*inputs)
        step_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        rows.append({"forward_batch_size": fbs, "step_ms": 1e3 * float(np.median(times)),
                     "forward_pass_ms": 1e3 * float(np.median(forward)),
                     "forward_pass_peak_mb": forward_peak / 2**20, "step_peak_mb": step_peak / 2**20})
    print(f"PPO step: batch {args.batch_size}, mini-batch {args.mini_batch_size}, 4 epochs, 8+16 tokens, "
          f"vocab {args.vocab_size}, load average {os.getloadavg()[0]:.2f}")
    print(f"{'forward_batch_size':>18} {'step ms':>9} {'fwd ms':>8} {'fwd peak MB':>12} {'step peak MB':>13}")
    for r in rows:
        print(f"{r['forward_batch_size']:>18} {r['step_ms']:>9.0f} {r['forward_pass_ms']:>8.0f} "
              f"{r['forward_pass_peak_mb']:>12.1f} {r['step_peak_mb']:>13.1f}")
    print(json.dumps({"ppo_step": rows}))


if __name__ == "__main__":
    main()
