"""Rollouts: sample responses to a batch of queries, forward_batch_size prompts at a time.

The KL penalty r_t = -beta (log pi(y_t) - log pi_ref(y_t)) is an unbiased estimate of KL(pi || pi_ref) only when
y_t is drawn from pi itself, so rollouts sample from the full distribution: temperature 1, no top-k, no top-p.
"""
import warnings

import numpy as np

import minigpt_np as mg

from .batch import left_pad


def generate_responses(model, queries, max_new_tokens, *, forward_batch_size, rng, eos_token_id=None,
                       stop_at_eos=True, temperature=1.0, top_k=None, top_p=None):
    """Sample one response per query -> list of int arrays.

    With stop_at_eos a response ends with the first eos token (kept, so the policy is credited for choosing to
    stop); without it every response has max_new_tokens tokens, as in TRL's gpt2-sentiment example.
    """
    if temperature != 1.0 or top_k or (top_p is not None and top_p < 1.0):
        warnings.warn("PPO rollouts should sample from the full distribution (temperature=1, top_k=None, "
                      "top_p=None): the per-token KL penalty assumes the tokens were drawn from the policy",
                      stacklevel=2)
    responses = []
    for i in range(0, len(queries), forward_batch_size):
        idx, attention_mask = left_pad(queries[i:i + forward_batch_size], pad_token_id=eos_token_id or 0)
        out = mg.generate(model, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                          attention_mask=attention_mask, eos_token_id=eos_token_id if stop_at_eos else None,
                          rng=rng)[:, idx.shape[1]:]
        for row in out:
            if stop_at_eos and eos_token_id is not None and np.any(row == eos_token_id):
                row = row[:np.argmax(row == eos_token_id) + 1]
            responses.append(row)
    return responses
