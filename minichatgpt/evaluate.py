"""Before and after: the reference and the policy answer the same held-out prompts, measured the same way."""
import numpy as np

from ppo_np.batch import layout, response_logprobs
from ppo_np.rollout import generate_responses

from .rlhf import texts_of


def distinct_n(texts, n=2):
    """Distinct-n (Li et al. 2016): unique word n-grams / all word n-grams over a set of texts (1 = no repeats)."""
    grams = [tuple(words[i:i + n]) for words in (t.lower().split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / max(len(grams), 1)


def response_kl(policy, ref_model, queries, responses, forward_batch_size, pad_token_id=0):
    """Per-response KL estimate sum_t (log pi(y_t) - log pi_ref(y_t)) on the policy's own samples -> (N,)."""
    batch = layout(queries, responses, pad_token_id)
    kl = response_logprobs(policy, batch, forward_batch_size) - response_logprobs(ref_model, batch, forward_batch_size)
    return kl.sum(axis=1)


def evaluate_policy(model, ref_model, tokenizer, scorer, queries, config, forward_batch_size, seed):
    """Sample one response per held-out query with a fixed seed and measure it -> (metrics, texts, scores)."""
    responses = generate_responses(model, queries, config.response_tokens, forward_batch_size=forward_batch_size,
                                   rng=np.random.default_rng(seed), eos_token_id=tokenizer.eos_token_id,
                                   stop_at_eos=config.stop_at_eos)
    texts = texts_of(tokenizer, queries, responses)
    scores = scorer.score(texts, forward_batch_size=forward_batch_size)
    response_texts = texts_of(tokenizer, [q[:0] for q in queries], responses)
    kl = response_kl(model, ref_model, queries, responses, forward_batch_size, tokenizer.eos_token_id)
    metrics = {
        "reward_positive": float(np.mean(scores > 0)),
        "reward_mean": float(np.mean(scores)),
        "kl_to_reference": float(np.mean(kl)),
        "distinct_2": distinct_n(response_texts, 2),
        "response_tokens": float(np.mean([len(r) for r in responses])),
        "n": len(queries),
    }
    return metrics, texts, scores
