"""Sweep RL settings on a finished run's pretrained model, reward model and gold scorer, and measure each.

    python scripts/sweep.py --name default -- "--ppo-steps 80 --lr 1e-4" "--init-kl-coef 0.5 --no-adaptive-kl"
    python scripts/sweep.py --name default --eval-on validation -- "--method rloo --rloo-kl-coef 0.1"

Each setting is written as the main job's flags (--method and those that shape the RL stage, and --seed, which
here seeds the method's shuffles, prompts and sampling but not the run's splits), parsed and checked as
`minichatgpt` checks them, over the run's own settings. `--` ends the script's own flags. The setting's method
runs from where the main job starts it, with the run's prompts, as the main job's RL stage runs it; then the policy
answers the run's held-out evaluation prompts (--eval-on validation: prompts cut from the validation split's
reviews, to choose on), all of them, or the first N a setting's --eval-prompts N asks for (more than the run holds
is refused), measured as the main job measures them, the lexicon judge included.
The sweep works in the run's lock, as every command on a run does, so the run cannot be rebuilt under it. One JSON
line per setting is appended to --out (default runs/<name>/sweep.jsonl, which a restart of the run deletes), and a
table row is printed. Every setting and --out are checked before the first one runs; a refusal is one line on
stderr. --reference first measures the run's reference model on the same prompts. `python scripts/results.py measure`
runs it for the sweep table of docs/experiments.md; it prints figures and asserts nothing.
"""
import dataclasses
import json
import os
import shlex
import tempfile
import time

import minigpt_np as mg
from minichatgpt.settings import config as defaults
from minichatgpt.commands.entry import checked_output, run_cli
from minichatgpt.run.finished_run import FinishedRun
from minichatgpt.loop.rlhf import train_run
from minichatgpt.settings.options import Parser, UsageError, add_arguments, checked, given_fields
from minichatgpt.run.run_folder import Lock, check_name, path
from minichatgpt.run.stages import METHODS

COLUMNS = [("reward_positive", "RM+", "{:.2f}"), ("gold_positive", "gold+", "{:.2f}"), ("gold_mean", "gold", "{:+.2f}"),
           ("lexicon_positive", "lex+", "{:.2f}"), ("lexicon_negative", "lex-", "{:.2f}"),
           ("kl_to_reference", "KL", "{:.1f}"), ("top_word_share", "top", "{:.2f}"), ("unique_share", "uniq", "{:.2f}"),
           ("distinct_2", "d-2", "{:.2f}"), ("response_tokens", "len", "{:.1f}"), ("reference_nll", "nll", "{:.2f}")]


def swept():
    """The main job's options a setting may give: the RL stage's, every method's own, the seed and the budget."""
    return [o for o in defaults.run_options()
            if o.stage in ("rl", *METHODS) or o.field in ("seed", "rlhf.max_seconds", "method")]


def setting_of(text, run_config):
    """"--lr 1e-4 --ppo-steps 80" -> the RunConfig of the run with those options set, checked as the main job's."""
    return checked_setting(text, run_config)[0]


def checked_setting(text, run_config):
    """A setting's text -> (its RunConfig, the fields it gives), checked as the main job checks its command line
    (an option the setting's method does not read is refused); UsageError naming the setting otherwise."""
    parser, options = Parser(prog="setting", add_help=False), swept()
    add_arguments(parser, options, run_config)
    argv = shlex.split(text)
    values = checked(parser.parse_args(argv), options, run_config, defaults.run_rules)
    given = given_fields(parser, argv, options)
    values.setdefault("method", run_config.method)
    try:
        defaults.for_its_method_only(values, given)
        return defaults.with_values(values, run_config), given
    except ValueError as e:
        raise UsageError(str(e)) from None


def eval_queries(run, config, given, on):
    """The prompts a setting is measured on: the run's held-out ones (on "validation": those cut from the validation
    split), all of them, or the first config.eval_prompts if the setting gives --eval-prompts (UsageError for more
    than there are)."""
    if on == "validation":
        queries = run.validation_prompts
        if "eval_prompts" in given and config.eval_prompts > len(queries):
            raise UsageError(f"--eval-prompts {config.eval_prompts} is more than the run's {len(queries)} validation "
                             f"prompts; use --eval-prompts {len(queries)} or fewer")
        return queries[:config.eval_prompts] if "eval_prompts" in given else queries
    return run.held_out(config.eval_prompts, "--eval-prompts") if "eval_prompts" in given else run.held_out()


def sweep(argv):
    p = Parser(prog="sweep.py", description=__doc__)
    p.add_argument("settings", nargs="+",
                   help='each the main job\'s RL flags, e.g. "--lr 1e-4 --ppo-steps 80" or '
                        '"--method grpo --grpo-beta 0.1"')
    p.add_argument("--name", default="default", help="the finished run folder under --runs-dir")
    p.add_argument("--runs-dir", default="runs", help="where run folders are")
    p.add_argument("--out", default=None, help="the JSON-lines file rows are appended to (default: the run's "
                   "sweep.jsonl); outside the run folder otherwise")
    p.add_argument("--eval-on", choices=("test", "validation"), default="test",
                   help="measure each setting on the run's held-out test prompts, or on prompts cut from the "
                        "validation split's reviews (choose there, then report on test)")
    p.add_argument("--reference", action="store_true",
                   help="first measure the run's reference model on the same prompts, as a row named reference")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = p.parse_args(argv)
    try:
        run_dir = os.path.join(args.runs_dir, check_name(args.name))
    except ValueError as e:
        raise UsageError(str(e)) from None
    out = checked_output(args.out, "--out") if args.out is not None else path(run_dir, "sweep.jsonl")
    FinishedRun.open(run_dir)                  # refuse before the lock, which would create the folder
    with Lock(run_dir):
        run = FinishedRun.open(run_dir)
        mg.kernels.use(run.config.kernels)      # the kernels the run's own stages trained with
        settings = []
        for text in args.settings:            # every one checked first
            config, given = checked_setting(text, run.config)
            settings.append((text, config, eval_queries(run, config, given, args.eval_on)))
        print(f"{'setting':48s} " + " ".join(f"{label:>6s}" for _, label, _ in COLUMNS) + "   time")
        if args.reference:
            t0 = time.perf_counter()
            queries = eval_queries(run, run.config, set(), args.eval_on)
            metrics, _ = run.evaluate(run.ref_model, queries=queries)
            write_row(out, "reference", None, args.eval_on, queries, metrics, time.perf_counter() - t0)
        for text, config, queries in settings:
            t0 = time.perf_counter()
            policy = run.policy_start(METHODS[config.method].values)
            task = dataclasses.replace(run.task(), sampling=config.sampling)
            with tempfile.TemporaryDirectory() as tmp:
                history = train_run(config, policy, task, os.path.join(tmp, "policy.npz"),
                                    os.path.join(tmp, "log.jsonl"), progress=False)
            seconds = time.perf_counter() - t0
            metrics, _ = run.evaluate(policy, queries=queries, sampling=config.sampling)
            write_row(out, text, config.method, args.eval_on, queries, metrics, seconds,
                      final_kl_coef=history[-1].get("objective/kl_coef"))


def write_row(out, text, method, eval_on, queries, metrics, seconds, **extra):
    """Append a setting's measurements to `out` as one JSON line, and print its table row."""
    row = {"setting": text, "method": method, "eval_on": eval_on, "eval_prompts": len(queries), **metrics,
           "seconds": seconds, **extra}
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"{text:48s} " + " ".join(f"{fmt.format(metrics[key]):>6s}" for key, _, fmt in COLUMNS)
          + f" {seconds:5.0f}s  {metrics['top_word']}", flush=True)


def main(argv=None):
    run_cli("sweep.py", sweep, argv)


if __name__ == "__main__":
    main()
