"""Sweep PPO settings on a finished run's pretrained model, reward model and gold scorer, and measure each.

    python scripts/sweep_ppo.py --name default "lr=1e-4,steps=80" "init_kl_coef=0.5,adap_kl_ctrl=0"

Each setting overrides fields of the pipeline's PPOConfig and RLHFConfig (minichatgpt/config.py) by name; seed
sets both configs' seeds. PPO
runs from the pretrained model with the run's seed and prompts, then the policy answers the run's held-out
evaluation prompts, measured as the main job measures them. One JSON line per setting is appended to
--out (default runs/<name>/sweep.jsonl), and a table row is printed. This is the development script behind the
frontier table in the README; it prints figures and asserts nothing.
"""
import argparse
import dataclasses
import json
import os
import tempfile
import time

import minigpt_np as mg
from minichatgpt import config as defaults
from minichatgpt import stages
from minichatgpt.evaluate import evaluate_policy
from minichatgpt.pipeline import EVAL_SEED_OFFSET
from minichatgpt.rlhf import train_ppo
from minichatgpt.run_folder import Manifest, path

COLUMNS = [("reward_positive", "RM+", "{:.2f}"), ("gold_positive", "gold+", "{:.2f}"), ("gold_mean", "gold", "{:+.2f}"),
           ("kl_to_reference", "KL", "{:.1f}"), ("top_word_share", "top", "{:.2f}"), ("unique_share", "uniq", "{:.2f}"),
           ("distinct_2", "d-2", "{:.2f}"), ("response_tokens", "len", "{:.1f}"), ("reference_nll", "nll", "{:.2f}")]


def parse_setting(text):
    """"lr=1e-4,steps=80" -> (PPOConfig overrides, RLHFConfig overrides)."""
    ppo_fields = {f.name: f.type for f in dataclasses.fields(defaults.PPO)}
    rlhf_fields = {f.name for f in dataclasses.fields(defaults.RLHF)}
    ppo, rlhf = {}, {}
    for item in filter(None, text.split(",")):
        key, value = item.split("=")
        number = float(value)
        value = int(number) if number.is_integer() and key not in ("lr", "init_kl_coef", "target", "cliprange",
                                                                     "cliprange_value", "vf_coef") else number
        if key == "adap_kl_ctrl":
            value = bool(value)
        if key == "seed":           # seeds both the trainer's shuffles and the loop's prompts and sampling
            ppo[key] = rlhf[key] = value
        elif key in ppo_fields:
            ppo[key] = value
        elif key in rlhf_fields:
            rlhf[key] = value
        else:
            raise SystemExit(f"unknown field {key!r}: PPOConfig or RLHFConfig fields only")
    return ppo, rlhf


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("settings", nargs="+", help='e.g. "lr=1e-4,steps=80"')
    p.add_argument("--name", default="default")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    run_dir = os.path.join(args.runs_dir, args.name)
    config = defaults.from_dict(json.load(open(path(run_dir, "summary.json")))["config"])
    manifest = Manifest(run_dir)
    for stage in ("tokenizer", "pretrain", "reward", "gold"):
        if not manifest.stages.get(stage, {}).get("finished"):
            raise SystemExit(f"{run_dir}: the {stage} stage is not finished; run minichatgpt --name {args.name} first")
    _, _, test, _ = stages.load_data(config)
    tokenizer = mg.load_tokenizer(path(run_dir, "tokenizer.json"))
    scorers = {name: stages.load_scorer_of(run_dir, name) for name in ("reward", "gold")}
    train_queries, eval_queries = stages.prompts(config, tokenizer, test)
    out = args.out or path(run_dir, "sweep.jsonl")
    print(f"{'setting':48s} " + " ".join(f"{label:>6s}" for _, label, _ in COLUMNS) + "   time")
    for setting in args.settings:
        ppo, rlhf = parse_setting(setting)
        ppo_config = dataclasses.replace(config.ppo, **ppo)
        rlhf_config = dataclasses.replace(config.rlhf, **rlhf)
        ref_model = mg.load_checkpoint(path(run_dir, "gpt_pretrained.npz"))
        policy = mg.load_checkpoint(path(run_dir, "gpt_pretrained.npz"))
        policy.add_value_head(seed=config.seed)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            history = train_ppo(policy, ref_model, tokenizer, scorers["reward"], train_queries, ppo_config,
                                rlhf_config, os.path.join(tmp, "ppo.npz"), os.path.join(tmp, "log.jsonl"),
                                progress=False)
        seconds = time.perf_counter() - t0
        metrics, _ = evaluate_policy(policy, ref_model, tokenizer, scorers, eval_queries, rlhf_config,
                                     ppo_config.forward_batch_size, config.seed + EVAL_SEED_OFFSET)
        row = {"setting": setting, **metrics, "seconds": seconds, "final_kl_coef": history[-1]["objective/kl_coef"],
               "mean_clipfrac": sum(h["ppo/policy/clipfrac"] for h in history) / len(history)}
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{setting:48s} " + " ".join(f"{fmt.format(metrics[key]):>6s}" for key, _, fmt in COLUMNS)
              + f" {seconds:5.0f}s  {metrics['top_word']}", flush=True)


if __name__ == "__main__":
    main()
