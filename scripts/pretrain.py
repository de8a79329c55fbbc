"""Pretrain the tiny GPT as a next-token language model on movie-review snippets.

    python scripts/pretrain.py                       # Rotten Tomatoes, defaults, writes runs/pretrain/
    python scripts/pretrain.py --max-seconds 120     # a time budget instead of the step budget
    python scripts/pretrain.py --corpus my_reviews.csv --out-dir runs/mine

Trains a byte-level BPE on the training split (unless OUT_DIR/tokenizer.json exists), then the GPT on every
snippet of the training split (reviews and plot summaries, each followed by <|endoftext|>), validating on the
validation split. Writes OUT_DIR/tokenizer.json and OUT_DIR/gpt_pretrained.npz; run it again after an
interruption and it resumes from the checkpoint, or does nothing if the run had finished.
Prints the validation loss in nats/token and bits/char beside the unigram entropy, and a few samples.

NumPy's BLAS may use every core; on a busy machine OPENBLAS_NUM_THREADS=1 can be much faster.
"""
import argparse
import dataclasses
import logging
import math
import os
import sys
import time

if __package__ in (None, ""):       # `python scripts/pretrain.py` from a checkout: make the project importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

import minigpt_np as mg
from minigpt_np.data import count_chars, encode_corpus, load_or_build_tokenizer
from minigpt_np.metrics import bits_per_char, unigram_entropy
from minigpt_np.pretrain import PretrainConfig, pretrain
from reward import corpus

# Defaults measured on the 2-core development machine. Vocabulary by validation bits/char, batch 16 x 64:
#   2000 updates (equal steps):       vocab 2048 2.138, vocab 4096 2.091
#   equal time (4096 costs 1.15x):    vocab 2048 at 2300 updates 2.104, vocab 4096 at 2000 updates 2.091
# Batch 16 beat 32 at equal tokens (2.288 vs 2.327 bits/char after 819k tokens). 2000 updates take 216 s of
# training (~10k tokens/s, 3.6 minutes in all) on an idle machine. No time budget by default: with one, a machine
# slower than planned at any moment (even during start-up) paces the schedule by the clock and the run no longer
# reproduces by seed (measured: two README runs on a briefly busy machine were paced for 104 and 334 updates).
# --max-seconds 270 keeps a slow machine within 5 minutes at that price.
DEFAULT_VOCAB = 4096
DEFAULT_MODEL = mg.GPTConfig(vocab_size=DEFAULT_VOCAB, block_size=64, n_layer=4, n_head=4, n_embd=128)
DEFAULT_STEPS = 2000
DEFAULT_SECONDS = None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", default="rotten_tomatoes",
                   help="'rotten_tomatoes' (downloaded once) or a path to your own CSV / JSONL / folder / text")
    p.add_argument("--cache-dir", default=None, help="where the downloaded corpus is cached")
    p.add_argument("--out-dir", default="runs/pretrain", help="folder for tokenizer.json and gpt_pretrained.npz")
    p.add_argument("--vocab-size", type=int, default=None,
                   help=f"BPE vocabulary (default {DEFAULT_VOCAB}, or that of an existing tokenizer.json)")
    p.add_argument("--n-layer", type=int, default=None, help=f"transformer blocks (default {DEFAULT_MODEL.n_layer})")
    p.add_argument("--n-head", type=int, default=None, help=f"attention heads (default {DEFAULT_MODEL.n_head})")
    p.add_argument("--n-embd", type=int, default=None, help=f"channels (default {DEFAULT_MODEL.n_embd})")
    p.add_argument("--block-size", type=int, default=None, help=f"context length (default {DEFAULT_MODEL.block_size})")
    p.add_argument("--batch-size", type=int, default=PretrainConfig.batch_size, help="windows per update")
    p.add_argument("--lr", type=float, default=PretrainConfig.lr, help="peak learning rate")
    p.add_argument("--max-steps", type=int, default=None,
                   help=f"updates; the cosine schedule ends here (default {DEFAULT_STEPS})")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="training-time budget (default none): alone, the schedule anneals by time; with --max-steps, "
                        "a hard stop that also keeps the schedule from falling behind the clock (then a slow "
                        "machine makes the run not reproducible by seed)")
    p.add_argument("--eval-interval", type=int, default=200, help="updates between validation losses")
    p.add_argument("--seed", type=int, default=0, help="seeds the model's initial weights, the batches and samples")
    p.add_argument("--split-seed", type=int, default=0, help="seeds the train/val/test split (keep it shared with "
                                                               "the reward model and PPO stages)")
    p.add_argument("--samples", type=int, default=5, help="samples to print at the end")
    return p.parse_args(argv)


def model_config(args, checkpoint, vocab_size):
    """The stored config of an existing checkpoint (so a resume needs no flags), else the defaults; flags given
    explicitly override either (a mismatch with a checkpoint is then reported by pretrain)."""
    base = mg.load_checkpoint(checkpoint).cfg if os.path.exists(checkpoint) else DEFAULT_MODEL
    given = {k: getattr(args, k) for k in ("n_layer", "n_head", "n_embd", "block_size") if getattr(args, k) is not None}
    return dataclasses.replace(base, vocab_size=vocab_size, **given)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.makedirs(args.out_dir, exist_ok=True)
    tokenizer_path = os.path.join(args.out_dir, "tokenizer.json")
    checkpoint = os.path.join(args.out_dir, "gpt_pretrained.npz")

    snippets = corpus.load_corpus(args.corpus, cache_dir=args.cache_dir)
    train, val, _ = corpus.split(snippets, seed=args.split_seed)
    train_texts, val_texts = [s.text for s in train], [s.text for s in val]
    print(f"corpus: {len(snippets):,} snippets; train {len(train):,}, val {len(val):,} (split by movie)")

    t0 = time.perf_counter()
    tokenizer = load_or_build_tokenizer(tokenizer_path, train_texts, args.vocab_size, DEFAULT_VOCAB)
    train_ids = encode_corpus(tokenizer, train_texts)
    val_ids = encode_corpus(tokenizer, val_texts)
    train_cpt = count_chars(train_texts) / len(train_ids)
    val_cpt = count_chars(val_texts) / len(val_ids)
    h_unigram = unigram_entropy(train_ids, tokenizer.vocab_size)
    print(f"tokenizer: vocab {tokenizer.vocab_size} (with encoding {time.perf_counter() - t0:.1f} s); train {len(train_ids):,} "
          f"tokens, {train_cpt:.2f} chars/token; val {len(val_ids):,} tokens, {val_cpt:.2f} chars/token")
    print(f"unigram entropy of the training tokens: {h_unigram:.3f} nats/token = "
          f"{bits_per_char(h_unigram, train_cpt):.3f} bits/char")

    model = mg.GPT(model_config(args, checkpoint, tokenizer.vocab_size), seed=args.seed)
    max_steps, max_seconds = args.max_steps, args.max_seconds
    if max_steps is None and max_seconds is None:
        max_steps, max_seconds = DEFAULT_STEPS, DEFAULT_SECONDS
    cfg = PretrainConfig(max_steps=max_steps, max_seconds=max_seconds, batch_size=args.batch_size,
                         lr=args.lr, eval_interval=args.eval_interval, seed=args.seed,
                         warmup_steps=min(PretrainConfig.warmup_steps, max_steps or PretrainConfig.warmup_steps))
    c = model.cfg
    print(f"model: {c.n_layer} layers x {c.n_head} heads x {c.n_embd}, block {c.block_size}, vocab {c.vocab_size}: "
          f"{model.num_parameters():,} parameters; "
          f"{cfg.max_steps or 'as many'} updates of {cfg.batch_size} x {c.block_size} tokens"
          + ("" if cfg.max_seconds is None else f" within {cfg.max_seconds:.0f} s"))

    def report(record):
        from tqdm.auto import tqdm
        tqdm.write(f"step {record['step']:5d} | train {record['train_loss']:.3f} | val {record['val_loss']:.3f} "
                   f"nats/token = {bits_per_char(record['val_loss'], val_cpt):.3f} bits/char | "
                   f"{record['tokens_per_s']:,.0f} tokens/s | {record['elapsed']:.0f} s")

    metrics = pretrain(model, train_ids, val_ids, cfg, checkpoint_path=checkpoint, log=report)
    val_loss = metrics["val_loss"]
    speed = "" if metrics["tokens_per_s"] is None else f", {metrics['tokens_per_s']:,.0f} tokens/s"
    print(f"\ndone: {metrics['step']} updates ({metrics['stop_reason']}), {metrics['tokens']:,} tokens, "
          f"{metrics['elapsed']:.0f} s{speed}")
    if metrics["time_paced_updates"] and cfg.max_steps is not None:
        print(f"note: the machine ran slower than the time budget planned, so the clock paced the learning rate "
              f"for {metrics['time_paced_updates']} updates; this run will not reproduce exactly")
    print(f"validation loss {val_loss:.3f} nats/token = {bits_per_char(val_loss, val_cpt):.3f} bits/char "
          f"(perplexity {math.exp(val_loss):.1f}); unigram entropy {h_unigram:.3f} nats/token = "
          f"{bits_per_char(h_unigram, train_cpt):.3f} bits/char")
    print(f"wrote {tokenizer_path} and {checkpoint}")

    if args.samples:
        eos = tokenizer.eos_token_id
        prompts = np.full((args.samples, 1), eos)      # after <|endoftext|> a new snippet begins
        out = mg.generate(model, prompts, max_new_tokens=c.block_size - 1, temperature=0.8, top_k=50,
                          eos_token_id=eos, seed=args.seed)
        print("\nsamples (temperature 0.8, top-k 50):")
        for row in out[:, 1:]:
            ids = row.tolist()
            ids = ids[:ids.index(eos)] if eos in ids else ids
            print("  -", tokenizer.decode(ids).strip())


if __name__ == "__main__":
    main()
