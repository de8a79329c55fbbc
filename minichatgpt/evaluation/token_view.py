"""tokens.html: where the reward went, token by token, for a handful of held-out prompts.

For each prompt, the reference's sampled response and the policy's, each token coloured twice with the numbers
the run's method would compute for it at its last step, under the final policy:

    KL view      log pi(y_t) - log pi_ref(y_t): red where the policy now prefers the token, blue where it avoids it
    credit view  what the method pushes each token by, as its Method's `credit` draws it: green up, purple down;
                 e.g. PPO's GAE advantage A_t, RLOO's leave-one-out advantage of the response on every token (each
                 shown response is sampled with the k - 1 more of its group), DPO's implicit reward
                 beta log(pi(y_t) / pi_ref(y_t))

A collapsed policy shows its exploited word in deep red, and the reference's sentences in blue.
"""
import dataclasses
import html

import numpy as np

from minigpt_np.checkpoint import atomic_write
from ppo_np import METHODS
from ppo_np.batch import layout, response_logprobs, response_logprobs_and_values

from ..loop.methods import group_size, run_trainer_config
from ..loop.sampling import sample, texts_of
from ..run.run_folder import writing
from .evaluate import EVAL_SEED_OFFSET


def token_numbers(method, cfg, policy, ref_model, tokenizer, scorer, queries, responses):
    """Per-token log-ratio and the method's credit of each response under the final policy -> (scores (N,),
    logratio (N, R), credit (N, R), mask (N, R))."""
    batch = layout(queries, responses, tokenizer.eos_token_id)
    if METHODS[method].values:
        logprobs, values = response_logprobs_and_values(policy, batch, len(queries))
    else:
        logprobs, values = response_logprobs(policy, batch, len(queries)), None
    ref_logprobs = response_logprobs(ref_model, batch, len(queries))
    scores = scorer.score(texts_of(tokenizer, queries, responses))
    credit = METHODS[method].credit(cfg, scores, logprobs, ref_logprobs, values, batch.mask)
    return scores, (logprobs - ref_logprobs) * batch.mask, credit, batch.mask


def _spans(tokenizer, response, values, scale, positive, negative):
    """One <span> per token, its background the value's colour (alpha |value| / scale), the number on hover."""
    out = []
    for token, value in zip(response, values):
        text = html.escape(tokenizer.decode([int(token)]))
        rgb = positive if value >= 0 else negative
        alpha = min(abs(value) / scale, 1.0) if scale > 0 else 0.0
        out.append(f'<span style="background:rgba({rgb},{alpha:.2f})" title="{value:+.3f}">{text}</span>')
    return "".join(out)


def write_token_view(path, run, policy, history, n=6):
    """Write tokens.html for the first n held-out prompts of a finished run: reference and policy samples, in the KL
    and credit views, sampled as the evaluation samples them (with the group's other responses after each, for a
    method of groups: RLOO, GRPO). history: the method's log (the stats its Method's credit_from_log names: PPO's
    last kl_coef)."""
    method = run.config.method
    cfg = run_trainer_config(run.config)
    cfg = dataclasses.replace(cfg, **{field: next(h[stat] for h in reversed(history) if stat in h)
                                      for field, stat in METHODS[method].credit_from_log})
    group = group_size(method, cfg)
    queries = run.held_out(n)
    repeated = [q for q in queries for _ in range(group)]
    sampling = dataclasses.replace(run.config.sampling, forward_batch_size=len(repeated))
    rows = []
    for who, model in (("reference", run.ref_model), ("policy", policy)):
        responses = sample(model, run.tokenizer, repeated, sampling,
                           np.random.default_rng(run.config.seed + EVAL_SEED_OFFSET))
        numbers = token_numbers(method, cfg, policy, run.ref_model, run.tokenizer, run.proxy, repeated, responses)
        shown = slice(None, None, group)     # the first response of each group
        rows.append((who, responses[shown], tuple(x[shown] for x in numbers)))
    kl_scale = max(float(np.abs(r[2][1]).max()) for r in rows)
    adv_scale = max(float(np.abs(r[2][2]).max()) for r in rows)
    credit = METHODS[method].credit_text.format(**dataclasses.asdict(cfg), group_others=group - 1)
    parts = [_HEAD.format(label=METHODS[method].label, credit=credit, kl_scale=kl_scale, adv_scale=adv_scale)]
    tokenizer = run.tokenizer
    for i, q in enumerate(queries):
        parts.append(f"<h3>{html.escape(tokenizer.decode([int(t) for t in q]))}</h3><table>")
        for who, responses, (scores, logratio, advantages, mask) in rows:
            n_tokens = int(mask[i].sum())
            kl = _spans(tokenizer, responses[i], logratio[i, :n_tokens], kl_scale, "220,40,40", "40,80,220")
            adv = _spans(tokenizer, responses[i], advantages[i, :n_tokens], adv_scale, "30,160,60", "150,50,170")
            parts.append(f"<tr><td class=who>{who}<br><small>score {scores[i]:+.2f}, log-ratio "
                         f"{logratio[i].sum():+.2f}</small></td><td>{kl}</td><td>{adv}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>\n")
    with writing(path), atomic_write(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))


_HEAD = """<!doctype html><html><head><meta charset="utf-8"><title>Where the reward went</title><style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 2em auto; }}
table {{ border-collapse: collapse; width: 100%; }}
td {{ border-top: 1px solid #ddd; padding: 6px; vertical-align: top; }}
td.who {{ width: 9em; }} span {{ font-family: monospace; white-space: pre-wrap; }}
</style></head><body>
<h1>Where the reward went, token by token</h1>
<p>Each held-out prompt, answered by the reference model and by the {label} policy. Middle column: each token's
log-ratio log&nbsp;&pi;(y) &minus; log&nbsp;&pi;<sub>ref</sub>(y) under the final policy: <b style="color:#c22">red</b>
where the policy now prefers the token, <b style="color:#25d">blue</b> where it avoids it (full colour at
{kl_scale:.2f} nats). Right column: {credit}:
<b style="color:#1a4">green</b> better than expected, <b style="color:#939">purple</b> worse (full colour at
{adv_scale:.2f}). Hover a token for its number. Under each score, the response's log-ratio: the middle column's
sum, log&nbsp;&pi;(y)&nbsp;&minus;&nbsp;log&nbsp;&pi;<sub>ref</sub>(y) under the final policy; on the policy's own
response it is the sampled estimate of its KL to the reference, on the reference's response it is not a KL (the
reference is at KL 0 from itself), and negative where the policy now avoids what the reference said.</p>
<table><tr><th></th><th>KL view</th><th>credit view</th></tr></table>
"""
