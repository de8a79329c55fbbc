"""Before and after: a model answers held-out prompts, and the answers are measured every way the project knows.

    score     each scorer's mean score and verdict shares (`sampling.judged`): the proxy reward model that PPO
              optimised ("reward": mean log-odds, positive share), the gold scorer that only judges ("gold": the
              same), and the judge of another kind, VADER's lexicon ("lexicon": mean compound, positive, negative
              and neutral shares at its authors' thresholds)
    KL        sum_t log pi(y_t) - log pi_ref(y_t) per response, on the model's own samples (nats): an unbiased
              estimate that can come out negative; or, asked for, the exact per-token KL summed over the response
              (`exact_kl`), which cannot
    collapse  the share of answers with the most frequent content word, unique answers, distinct-1/2
    fluency   the reference model's mean negative log-likelihood per response token, and the answers' length

These are the metrics' names everywhere: summary.json's blocks, and, prefixed with "eval/", the evaluations a
training log records (`logged`, `measured_in`).
"""
import numpy as np

import minigpt_np as mg
from ppo_np.batch import forward_chunks, layout, response_logprobs
from ppo_np.core import log_softmax

from ..loop.collapse import collapse_metrics
from ..loop.sampling import judged, sample, score, texts_of

EVAL_SEED_OFFSET = 12345   # an evaluation samples with its own generator, seeded with the run's seed + this
PREFIX = "eval/"           # a training log's evaluation metrics: "eval/reward_mean", "eval/kl_to_reference", ...


def evaluate_policy(model, ref_model, tokenizer, scorers, queries, sampling, seed, kl="sampled"):
    """Sample one response per held-out query with a fixed seed and measure it -> (metrics, samples).

    scorers: {name: scorer}, e.g. {"reward": the proxy, "gold": the gold scorer, "lexicon": VADER}; sampling: the
    SamplingConfig (chunk, response length, stop at eos); kl: as measure_responses. samples = {"texts": prompt +
    response, "responses": token arrays, "scores": {name: (N,)}, "kl": (N,)}.
    """
    responses = sample(model, tokenizer, queries, sampling, np.random.default_rng(seed))
    return measure_responses(model, ref_model, tokenizer, scorers, queries, responses, sampling, kl)


def measure_responses(model, ref_model, tokenizer, scorers, queries, responses, sampling, kl="sampled"):
    """Measure responses to held-out queries, however they were chosen -> (metrics, samples) as evaluate_policy.

    kl="sampled": sum_t log model(y_t) - log ref_model(y_t), an estimate of KL(model || ref_model) only when the
    responses were sampled from `model` (best-of-n's are not: its KL has a formula instead, best_of_n.kl_best_of_n),
    and negative on some draws. kl="exact": `exact_kl` at the same positions, never negative.
    """
    texts = texts_of(tokenizer, queries, responses)
    batch = layout(queries, responses, tokenizer.eos_token_id)
    ref_logprobs = response_logprobs(ref_model, batch, sampling.forward_batch_size)  # (N, R), 0 on padding
    if kl == "exact":
        kl = exact_kl(model, ref_model, batch, sampling.forward_batch_size)
    else:
        kl = (response_logprobs(model, batch, sampling.forward_batch_size) - ref_logprobs).sum(axis=1)
    metrics = {}
    scores = {name: score(scorer, texts, sampling) for name, scorer in scorers.items()}
    for name, s in scores.items():
        metrics.update(judged(name, scorers[name], s))
    metrics.update({
        "kl_to_reference": float(np.mean(kl)),
        "response_tokens": float(np.mean([len(r) for r in responses])),
        "reference_nll": float(-ref_logprobs.sum() / batch.mask.sum()),
        **collapse_metrics(texts_of(tokenizer, [q[:0] for q in queries], responses)),
        "n": len(queries),
    })
    return metrics, {"texts": texts, "responses": responses, "scores": scores, "kl": kl}


def exact_kl(model, ref_model, batch, forward_batch_size):
    """The exact KL of each response, position by position over the whole vocabulary:

        KL_i = sum_t sum_v pi(v | x, y_<t) (log pi(v | x, y_<t) - log pi_ref(v | x, y_<t))     (nats, >= 0)

    summed over the response's tokens t, at the columns that predict them. Each term is a KL between two
    distributions, so it is never negative (rounding can leave -1e-16 where the models agree: clipped at 0). It
    measures how far pi's next-token distributions moved along the responses it gave, with no sampling noise over
    the vocabulary. batch (B rows) -> (B,) float64.
    """
    kl = []
    with mg.no_grad():
        for chunk in forward_chunks(batch, forward_batch_size):
            logp, logq = (log_softmax(m(chunk.input_ids, chunk.attention_mask).data[:, chunk.response_columns]
                                      .astype(np.float64)) for m in (model, ref_model))
            per_token = np.maximum((np.exp(logp) * (logp - logq)).sum(axis=-1), 0.0)    # (b, R)
            kl.append((per_token * chunk.mask).sum(axis=1))
    return np.concatenate(kl)


def logged(metrics):
    """Metrics as a training log records them: {"eval/<metric>": value}."""
    return {PREFIX + k: v for k, v in metrics.items()}


def measured_in(record):
    """The evaluation metrics of one log record (without their prefix) -> dict, empty if the step was not evaluated."""
    return {k[len(PREFIX):]: v for k, v in record.items() if k.startswith(PREFIX)}
