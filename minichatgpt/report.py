"""What a finished run shows a reader: curves.png, samples.md and the before/after table."""
import logging

import numpy as np

from minigpt_np.checkpoint import atomic_write

log = logging.getLogger(__name__)

CURVES = [  # (stats key, title)
    ("env/reward_mean", "reward (log-odds positive)"),
    ("objective/kl", "KL to reference (nats / response)"),
    ("objective/kl_coef", "kl_coef"),
    ("ppo/policy/entropy", "policy entropy (nats / token)"),
    ("ppo/loss/value", "value loss"),
    ("ppo/policy/clipfrac", "policy clipfrac"),
]


def write_curves(history, path):
    """Six panels over PPO steps; skipped with a warning when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed, so %s was not written: pip install matplotlib", path)
        return False
    steps = [s["step"] for s in history]
    fig, axes = plt.subplots(2, 3, figsize=(12, 6), constrained_layout=True)
    for ax, (key, title) in zip(axes.flat, CURVES):
        ax.plot(steps, [s.get(key, np.nan) for s in history], lw=1.5)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("PPO step")
        ax.grid(alpha=0.3)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return True


def write_samples(path, prompts, before, after, n=12):
    """samples.md: the same prompts, the reference's continuation and the policy's, with their scores."""
    lines = ["# Samples: the same held-out prompts, before (reference) and after PPO (policy)", "",
             "Score = the reward model's log-odds that the snippet is positive.", ""]
    for i in range(min(n, len(prompts))):
        lines += [f"**Prompt {i + 1}:** {prompts[i]!r}", "",
                  f"- before ({before[1][i]:+.2f}): {before[0][i]}",
                  f"- after ({after[1][i]:+.2f}): {after[0][i]}", ""]
    with atomic_write(path, "w") as f:
        f.write("\n".join(lines))


def format_table(before, after):
    """Before/after table of the evaluation metrics as aligned text."""
    rows = [("fraction scored positive", "reward_positive", "{:.3f}"), ("mean reward (log-odds)", "reward_mean", "{:+.3f}"),
            ("KL to reference (nats/response)", "kl_to_reference", "{:.2f}"), ("distinct-2 of responses", "distinct_2", "{:.3f}"),
            ("response length (tokens)", "response_tokens", "{:.1f}")]
    out = [f"{'held-out prompts (n=' + str(after['n']) + ')':34s} {'reference':>10s} {'policy':>10s}"]
    for label, key, fmt in rows:
        out.append(f"{label:34s} {fmt.format(before[key]):>10s} {fmt.format(after[key]):>10s}")
    return "\n".join(out)
