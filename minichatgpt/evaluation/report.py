"""What a finished run shows a reader: the before/after table, curves.png and samples.md."""
import logging

import numpy as np

from minigpt_np.checkpoint import atomic_write

from ppo_np import METHODS

from ..run.run_folder import writing

log = logging.getLogger(__name__)

KINDS = {"ngram": "n-gram", "gpt": "GPT reward model", "lexicon": "lexicon"}   # how a scorer's kind is named

TABLE = [  # (label, metrics key, format); the reward model is the proxy PPO optimised, the gold and the lexicon judge
    ("reward model: positive", "reward_positive", "{:.3f}"),
    ("reward model: mean log-odds", "reward_mean", "{:+.3f}"),
    ("gold scorer: positive", "gold_positive", "{:.3f}"),
    ("gold scorer: mean log-odds", "gold_mean", "{:+.3f}"),
    ("lexicon (VADER): pos / neg / neutral", ("lexicon_positive", "lexicon_negative", "lexicon_neutral"), "{:.3f}"),
    ("lexicon (VADER): mean compound", "lexicon_mean", "{:+.3f}"),
    ("KL to reference (nats/response)", "kl_to_reference", "{:.2f}"),
    ("responses with the top word", "top_word_share", "{:.3f}"),
    ("unique responses", "unique_share", "{:.3f}"),
    ("distinct-1 / distinct-2", ("distinct_1", "distinct_2"), "{:.3f}"),
    ("response length (tokens)", "response_tokens", "{:.1f}"),
    ("reference NLL (nats/token)", "reference_nll", "{:.2f}"),
]

# (stats keys, title): what the loop logs of the rollouts of each step of a method that samples, scored by the proxy,
# judged by the gold and the lexicon; the method's own panels (its Method's curves) follow
LOOP_CURVES = [
    (("env/reward_mean", "env/gold_mean"), "mean log-odds: reward model, gold"),
    (("env/reward_positive", "env/gold_positive", "env/lexicon_positive", "env/lexicon_negative"),
     "positive shares: reward model, gold, lexicon (VADER); lexicon negative"),
    (("objective/kl",), "KL to reference (nats / response)"),
    (("env/top_word_share", "env/unique_share"), "top-word share, unique share"),
    (("objective/response_length",), "response length (tokens)"),
]


def curves_of(method):
    """The panels of curves.png for a method's log: the loop's (unless the method samples nothing in its loop), then
    its own."""
    own = list(METHODS[method].curves)
    return own if METHODS[method].pairs else LOOP_CURVES + own


def format_table(columns, extra_rows=(), labels=None):
    """The evaluation as a Markdown table, aligned so that it also reads as plain text: one column per model
    (columns: {label: metrics}, the reference first), one row per measure of TABLE and the top word, then
    extra_rows [(label, [one cell per column])]. labels: {metrics key: label} replacing TABLE's."""
    def cell(metrics, key, fmt):
        keys = key if isinstance(key, tuple) else (key,)
        return " / ".join(fmt.format(metrics[k]) for k in keys if k in metrics) or "-"

    first = next(iter(columns.values()))
    rows = [[f"held-out prompts (n={first['n']})", *columns]]
    rows += [[(labels or {}).get(key, label), *(cell(m, key, fmt) for m in columns.values())]
             for label, key, fmt in TABLE]
    rows.append(["the top word", *(m.get("top_word") or "-" for m in columns.values())])
    rows += [[label, *cells] for label, cells in extra_rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns) + 1)]
    lines = ["| " + " | ".join(text.ljust(w) if i == 0 else text.rjust(w) for i, (text, w) in enumerate(zip(r, widths)))
             + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|")
    return "\n".join(lines)


def _pyplot(path):
    """matplotlib.pyplot on the file-only Agg backend, or None (with a warning naming path) if it is missing.

    Its first import builds matplotlib's font cache and says so through its logger, which the command line shows;
    that is matplotlib's business, not the run's, so its logger keeps quiet while it is imported."""
    quiet = logging.getLogger("matplotlib")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed, so %s was not written: pip install matplotlib", path)
        return None
    finally:
        quiet.setLevel(level)
    return plt


def _save(fig, path):
    """Write the figure as a PNG through atomic_write."""
    with writing(path), atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)


def write_curves(history, path, method="ppo"):
    """Up to nine panels (curves_of) over the steps of the method's log -> True; False (with a warning) when matplotlib is not
    installed."""
    plt = _pyplot(path)
    if plt is None:
        return False
    steps = [s["step"] for s in history]
    fig, axes = plt.subplots(3, 3, figsize=(15, 9), constrained_layout=True)
    panels = curves_of(method)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (keys, title) in zip(axes.flat, panels):
        for key in keys:
            ax.plot(steps, [s.get(key, np.nan) for s in history], lw=1.5, label=key.split("/")[-1])
        if len(keys) > 1:
            ax.legend(fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(f"{METHODS[method].label} step")
        ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)
    return True


def write_samples(path, prompts, before, after, label="PPO", n=12):
    """samples.md: the collapse measures, then the same prompts answered by the reference and by the policy (trained
    with the method `label`), each answer with the reward model's and the gold scorer's log-odds and VADER's
    compound. before/after = (metrics, samples)."""
    lines = [f"# Samples: the same held-out prompts, before (reference) and after {label} (policy)", "",
             f"Scores: r = the reward model's log-odds that the snippet is positive (what {label} optimised), "
             "g = the gold scorer's (it only judges), v = the VADER lexicon's compound in [-1, 1] (it only judges; "
             ">= 0.05 positive, <= -0.05 negative).", "",
             format_table({"reference": before[0], "policy": after[0]}), ""]
    for i in range(min(n, len(prompts))):
        lines += [f"**Prompt {i + 1}:** {prompts[i]!r}", ""]
        for name, (_, samples) in (("before", before), ("after", after)):
            r, g, v = (samples["scores"][k][i] for k in ("reward", "gold", "lexicon"))
            lines.append(f"- {name} (r {r:+.2f}, g {g:+.2f}, v {v:+.2f}): {samples['texts'][i]}")
        lines.append("")
    with writing(path), atomic_write(path, "w") as f:
        f.write("\n".join(lines))


def write_overopt_plot(results, path):
    """overopt.png: top, gold (solid) and proxy (dashed) score gains against sqrt(KL), best-of-n left and PPO right,
    with the fitted functional forms (dotted); below, the lexicon's positive (solid) and negative (dashed) shares
    -> True; False when matplotlib is missing."""
    plt = _pyplot(path)
    if plt is None:
        return False
    fig, grid = plt.subplots(2, 2, figsize=(13, 9), constrained_layout=True)
    for ax, lex, kind, title in ((grid[0, 0], grid[1, 0], "best_of_n", "best-of-n from the reference"),
                                 (grid[0, 1], grid[1, 1], "rl", "PPO")):
        for k, name in enumerate(dict.fromkeys(r["proxy"] for r in results[kind])):
            _overopt_curves(ax, lex, results, kind, name, f"C{k}")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(title)
        ax.set_xlabel("d = sqrt(KL to the reference), sqrt(nats)")
        ax.set_ylabel("mean score gain over the reference (log-odds)")
        lex.set_title(f"{title}: the VADER lexicon's verdicts")
        lex.set_xlabel("d = sqrt(KL to the reference), sqrt(nats)")
        lex.set_ylabel("share of answers")
        for a in (ax, lex):
            a.legend(fontsize=7)
            a.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)
    return True


def _overopt_curves(ax, lex, results, kind, name, color):
    """One proxy's curves of one kind ("best_of_n" or "rl"): its gold's and its own gains on ax, with the gold's
    fitted form d (alpha - beta d) or d (alpha - beta log d); the lexicon's shares on lex."""
    curve = [r for r in results[kind] if r["proxy"] == name]
    scorer = results["scorers"][name]
    label = f"proxy {name} ({KINDS[scorer['kind']]}, {scorer['train_snippets']:,} snippets)"
    gold = results.get("golds", {}).get(name, "gold")
    d = np.sqrt([r["kl"] for r in curve])
    lex.plot(d, [r["lexicon_positive"] for r in curve], "o-", color=color, label=f"lexicon positive, {label}")
    lex.plot(d, [r["lexicon_negative"] for r in curve], "s--", color=color, alpha=0.6,
             label=f"lexicon negative, proxy {name}")
    for score, style, text in (("gold_score", "o-", f"{gold}, {label}"),
                               ("proxy_score", "s--", f"proxy {name} itself")):
        ax.plot(d, [r[score] - curve[0][score] for r in curve], style, color=color, label=text,
                alpha=1.0 if score == "gold_score" else 0.6)
    fit = results["fits"][f"{kind}/{name}/gold_score"]
    x = np.linspace(0.0, d.max(), 101)[1:]
    if fit["alpha"] is not None and len(x) and x[0] > 0:
        ax.plot(x, x * (fit["alpha"] - fit["beta"] * (x if kind == "best_of_n" else np.log(x))), ":", color=color)


def write_compare_plot(results, path):
    """compare.png: each method's proxy (solid) and gold (dashed) mean log-odds against the generated responses it
    has used (left), and its gold gain over its start against sqrt(KL to the reference) (right) -> True; False when
    matplotlib is missing. Best-of-n's points are n = 1, 2, 4, ... samples per held-out prompt, at KL_bon."""
    plt = _pyplot(path)
    if plt is None:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), constrained_layout=True)
    for k, method in enumerate(results["methods"].values()):
        curve, color, label = method["curve"], f"C{k}", method["label"]
        generated = [r["generated"] for r in curve]
        axes[0].plot(generated, [r["reward_mean"] for r in curve], "o-", color=color, label=f"{label}, proxy")
        axes[0].plot(generated, [r["gold_mean"] for r in curve], "s--", color=color, alpha=0.6,
                     label=f"{label}, gold")
        axes[1].plot(np.sqrt([r["kl"] for r in curve]), [r["gold_mean"] - curve[0]["gold_mean"] for r in curve], "o-",
                     color=color, label=label)
    axes[0].set_xlabel("generated responses used (best-of-n: n x held-out prompts)")
    axes[0].set_ylabel("mean log-odds on held-out prompts")
    axes[0].set_title("proxy reward against generated samples")
    axes[1].axhline(0, color="grey", lw=0.8)
    axes[1].set_xlabel("d = sqrt(KL to the reference), sqrt(nats)")
    axes[1].set_ylabel("gold score gain over the start (log-odds)")
    axes[1].set_title("gold against sqrt(KL)")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)
    return True
