"""tokens.html: where the reward went, token by token, for a handful of held-out prompts.

For each prompt, the reference's sampled response and the policy's, each token coloured twice with the numbers
PPO's last step would compute for it under the final policy:

    KL view         log pi(y_t) - log pi_ref(y_t): red where the policy now prefers the token, blue where it avoids it
    advantage view  GAE advantage A_t from the per-token rewards (KL penalty on every token, the reward model's
                    score on the last) and the value head: green where the token did better than expected

A collapsed policy shows its exploited word in deep red, and the reference's sentences in blue.
"""
import dataclasses
import html

import numpy as np

from minigpt_np.checkpoint import atomic_write
from ppo_np import core
from ppo_np.batch import layout, response_logprobs, response_logprobs_and_values

from .evaluate import EVAL_SEED_OFFSET
from .run_folder import writing
from .sampling import sample, texts_of


def token_numbers(policy, ref_model, tokenizer, scorer, queries, responses, kl_coef, gamma, lam):
    """Per-token log-ratio and advantage of each response under the final policy -> (scores (N,), logratio (N, R),
    advantages (N, R), mask (N, R))."""
    batch = layout(queries, responses, tokenizer.eos_token_id)
    logprobs, values = response_logprobs_and_values(policy, batch, len(queries))
    ref_logprobs = response_logprobs(ref_model, batch, len(queries))
    scores = scorer.score(texts_of(tokenizer, queries, responses))
    rewards, _ = core.compute_rewards(scores, logprobs, ref_logprobs, kl_coef, batch.mask)
    advantages, _ = core.compute_advantages(values, rewards, gamma, lam, batch.mask)
    return scores, (logprobs - ref_logprobs) * batch.mask, advantages, batch.mask


def _spans(tokenizer, response, values, scale, positive, negative):
    """One <span> per token, its background the value's colour (alpha |value| / scale), the number on hover."""
    out = []
    for token, value in zip(response, values):
        text = html.escape(tokenizer.decode([int(token)]))
        rgb = positive if value >= 0 else negative
        alpha = min(abs(value) / scale, 1.0) if scale > 0 else 0.0
        out.append(f'<span style="background:rgba({rgb},{alpha:.2f})" title="{value:+.3f}">{text}</span>')
    return "".join(out)


def write_token_view(path, run, policy, kl_coef, n=6):
    """Write tokens.html for the first n held-out prompts of a finished run: reference and policy samples, in the KL
    and advantage views, sampled as the evaluation samples them."""
    queries = run.held_out(n)
    sampling = dataclasses.replace(run.config.sampling, forward_batch_size=len(queries))
    rows = []
    for who, model in (("reference", run.ref_model), ("policy", policy)):
        responses = sample(model, run.tokenizer, queries, sampling,
                           np.random.default_rng(run.config.seed + EVAL_SEED_OFFSET))
        numbers = token_numbers(policy, run.ref_model, run.tokenizer, run.proxy, queries, responses, kl_coef,
                                run.config.ppo.gamma, run.config.ppo.lam)
        rows.append((who, responses, numbers))
    kl_scale = max(float(np.abs(r[2][1]).max()) for r in rows)
    adv_scale = max(float(np.abs(r[2][2]).max()) for r in rows)
    parts = [_HEAD.format(kl_coef=kl_coef, kl_scale=kl_scale, adv_scale=adv_scale)]
    tokenizer = run.tokenizer
    for i, q in enumerate(queries):
        parts.append(f"<h3>{html.escape(tokenizer.decode([int(t) for t in q]))}</h3><table>")
        for who, responses, (scores, logratio, advantages, mask) in rows:
            n_tokens = int(mask[i].sum())
            kl = _spans(tokenizer, responses[i], logratio[i, :n_tokens], kl_scale, "220,40,40", "40,80,220")
            adv = _spans(tokenizer, responses[i], advantages[i, :n_tokens], adv_scale, "30,160,60", "150,50,170")
            parts.append(f"<tr><td class=who>{who}<br><small>score {scores[i]:+.2f}, KL "
                         f"{logratio[i].sum():+.2f}</small></td><td>{kl}</td><td>{adv}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>\n")
    with writing(path), atomic_write(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))


_HEAD = """<!doctype html><html><head><meta charset="utf-8"><title>Where the reward went</title><style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 2em auto; }}
table {{ border-collapse: collapse; width: 100%; }}
td {{ border-top: 1px solid #ddd; padding: 6px; vertical-align: top; }}
td.who {{ width: 9em; }} span {{ font-family: monospace; white-space: pre; }}
</style></head><body>
<h1>Where the reward went, token by token</h1>
<p>Each held-out prompt, answered by the reference model and by the PPO policy. Middle column: each token's
log-ratio log&nbsp;&pi;(y) &minus; log&nbsp;&pi;<sub>ref</sub>(y) under the final policy: <b style="color:#c22">red</b>
where the policy now prefers the token, <b style="color:#25d">blue</b> where it avoids it (full colour at
{kl_scale:.2f} nats). Right column: the token's GAE advantage from the per-token rewards (KL penalty with
&beta;&nbsp;=&nbsp;{kl_coef:.3f} on every token, the reward model's score on the last) and the policy's value head:
<b style="color:#1a4">green</b> better than expected, <b style="color:#939">purple</b> worse (full colour at
{adv_scale:.2f}). Hover a token for its number.</p>
<table><tr><th></th><th>KL view</th><th>advantage view</th></tr></table>
"""
