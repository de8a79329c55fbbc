"""Sample continuations from a checkpoint.

    minichatgpt-sample runs/default/gpt_ppo.npz --prompt "This movie" --n 4
"""
import argparse
import os
import sys

import numpy as np

if __package__ in (None, ""):  # `python scripts/sample.py` from a checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minigpt_np as mg  # noqa: E402
from ppo_np.rollout import left_pad  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a .npz written by pretraining or PPO")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json (default: next to the checkpoint)")
    p.add_argument("--prompt", action="append", help="prompt text; repeat for several (default: empty prompt)")
    p.add_argument("--n", type=int, default=3, help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    tokenizer = mg.load_tokenizer(args.tokenizer or os.path.join(os.path.dirname(args.checkpoint), "tokenizer.json"))
    model = mg.load_checkpoint(args.checkpoint)
    eos = tokenizer.eos_token_id
    prompts = args.prompt or [""]
    queries = [np.asarray([eos] + tokenizer.encode(text)) for text in prompts for _ in range(args.n)]
    idx, mask = left_pad(queries, pad_token_id=eos)
    budget = model.cfg.block_size - idx.shape[1]
    out = mg.generate(model, idx, min(args.max_new_tokens, budget), temperature=args.temperature, top_k=args.top_k,
                      top_p=args.top_p, attention_mask=mask, eos_token_id=eos, seed=args.seed)
    for q, row in zip(queries, out):
        response = [int(t) for t in row[idx.shape[1]:] if t != eos]
        print(repr(tokenizer.decode([int(t) for t in q[1:]] + response)))


if __name__ == "__main__":
    main()
