"""Sweep RL settings on a finished run's pretrained model, reward model and gold scorer, and measure each.

    python scripts/sweep.py --name default -- "--ppo-steps 80 --lr 1e-4" "--init-kl-coef 0.5 --no-adaptive-kl"
    python scripts/sweep.py --name default --eval-on validation -- "--method rloo --rloo-kl-coef 0.1"

Each setting is written as the main job's flags (--method and those that shape the RL stage, and --seed, which
here seeds the method's shuffles, prompts and sampling but not the run's splits), parsed and checked as
`minichatgpt` checks them, over the run's own settings. `--` ends the script's own flags. The setting's method
runs from where the main job starts it, with the run's prompts, as the main job's RL stage runs it; then the policy
answers the run's held-out evaluation prompts (--eval-on validation: prompts cut from the validation split's
reviews, to choose on), measured as the main job measures them, the lexicon judge included.
One JSON line per setting is appended to --out (default runs/<name>/sweep.jsonl), and a table row is printed. This
is the development script behind the frontier table in the README; it prints figures and asserts nothing.
"""
import argparse
import dataclasses
import json
import os
import shlex
import sys
import tempfile
import time

import minigpt_np as mg
from minichatgpt import config as defaults
from minichatgpt.finished_run import FinishedRun
from minichatgpt.methods import DRIVING, train_run
from minichatgpt.options import Parser, UsageError, add_arguments, checked
from minichatgpt.run_folder import check_name, path
from minichatgpt.stages import METHODS

COLUMNS = [("reward_positive", "RM+", "{:.2f}"), ("gold_positive", "gold+", "{:.2f}"), ("gold_mean", "gold", "{:+.2f}"),
           ("lexicon_positive", "lex+", "{:.2f}"), ("lexicon_negative", "lex-", "{:.2f}"),
           ("kl_to_reference", "KL", "{:.1f}"), ("top_word_share", "top", "{:.2f}"), ("unique_share", "uniq", "{:.2f}"),
           ("distinct_2", "d-2", "{:.2f}"), ("response_tokens", "len", "{:.1f}"), ("reference_nll", "nll", "{:.2f}")]
SWEPT = [o for o in defaults.OPTIONS
         if o.stage in ("rl", *METHODS) or o.field in ("seed", "rlhf.max_seconds", "method")]


def setting_of(text, run_config):
    """"--lr 1e-4 --ppo-steps 80" -> the RunConfig of the run with those options set, checked as the main job's."""
    parser = Parser(prog="setting", add_help=False)
    add_arguments(parser, SWEPT, run_config)
    values = checked(parser.parse_args(shlex.split(text)), SWEPT, run_config, defaults.run_rules)
    try:
        defaults.for_its_method_only(values, run_config)
        return defaults.with_values(values, run_config)
    except ValueError as e:
        raise UsageError(str(e)) from None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("settings", nargs="+",
                   help='each the main job\'s RL flags, e.g. "--lr 1e-4 --ppo-steps 80" or '
                        '"--method grpo --grpo-beta 0.1"')
    p.add_argument("--name", default="default")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--out", default=None)
    p.add_argument("--eval-on", choices=("test", "validation"), default="test",
                   help="measure each setting on the run's held-out test prompts, or on prompts cut from the "
                        "validation split's reviews (choose there, then report on test)")
    args = p.parse_args()
    run = FinishedRun.open(os.path.join(args.runs_dir, check_name(args.name)))
    mg.kernels.use(run.config.kernels)      # the kernels the run's own stages trained with
    try:
        settings = [(text, setting_of(text, run.config)) for text in args.settings]   # every one checked first
    except UsageError as e:
        print(f"sweep.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    out = args.out or path(run.run_dir, "sweep.jsonl")
    print(f"{'setting':48s} " + " ".join(f"{label:>6s}" for _, label, _ in COLUMNS) + "   time")
    for text, config in settings:
        t0 = time.perf_counter()
        policy = run.policy_start(DRIVING[config.method].value_head)
        task = dataclasses.replace(run.task(), sampling=config.sampling)
        with tempfile.TemporaryDirectory() as tmp:
            history = train_run(config, policy, task, os.path.join(tmp, "policy.npz"), os.path.join(tmp, "log.jsonl"),
                                progress=False)
        seconds = time.perf_counter() - t0
        queries = run.validation_prompts if args.eval_on == "validation" else None
        metrics, _ = run.evaluate(policy, queries=queries, sampling=config.sampling)
        row = {"setting": text, "method": config.method, "eval_on": args.eval_on, **metrics, "seconds": seconds,
               "final_kl_coef": history[-1].get("objective/kl_coef")}
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{text:48s} " + " ".join(f"{fmt.format(metrics[key]):>6s}" for key, _, fmt in COLUMNS)
              + f" {seconds:5.0f}s  {metrics['top_word']}", flush=True)


if __name__ == "__main__":
    main()
