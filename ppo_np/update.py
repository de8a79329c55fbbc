"""What the RLOO, GRPO and DPO trainers share: a forward pass with a graph, one gradient step from per-token
dL/dlogprobs, the shuffled mini-batches, and the rollout stats.

The step is PPOTrainer.train_minibatch without the value head (docs/ppo.md, sections 8 and 9): the log-softmax
backward carries dL/dlogprobs to the logits, the GPT's backward takes it from there, then AdamW.
"""
import numpy as np

import minigpt_np as mg
from minigpt_np.optim import clip_grad_norm

from . import core


def policy_logprobs(model, batch):
    """Forward with a graph -> (logits Tensor (b, Q+R, V), response_logits (b, R, V), logprobs (b, R) float64)."""
    logits = model(batch.input_ids, batch.attention_mask)
    response_logits = logits.data[:, batch.response_columns]
    logprobs = core.logprobs_from_logits(response_logits, batch.labels).astype(np.float64)
    return logits, response_logits, logprobs


def apply_dlogprobs(model, optimizer, logits, batch, response_logits, dlogprobs, loss, max_grad_norm=None):
    """One update from dL/dlogprobs (b, R): dlogits = dlogprobs (onehot - softmax) at the response columns, the
    model's backward, an optional global-norm clip, the optimizer step. A non-finite loss or gradient raises
    FloatingPointError before any weight changes."""
    if not (np.isfinite(loss) and np.all(np.isfinite(dlogprobs))):
        raise FloatingPointError("the loss or its gradient is NaN/inf; the step was not applied. Lower lr or check "
                                 "the scores; the last checkpoint is intact.")
    dlogits = np.zeros_like(logits.data)
    dlogits[:, batch.response_columns] = core.logprobs_from_logits_backward(response_logits, batch.labels, dlogprobs)
    model.zero_grad()
    mg.tensor.backward([logits], [dlogits])
    if max_grad_norm is not None:
        clip_grad_norm(model.parameters(), max_grad_norm)
    optimizer.step()


def minibatches(rng, n, mini_batch_size, epochs):
    """epochs passes over n rows, each a fresh shuffle cut into mini-batches of mini_batch_size row indices."""
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, mini_batch_size):
            yield order[start:start + mini_batch_size]


def rollout_stats(logprobs, ref_logprobs, mask):
    """The objective/ stats PPO logs, from the rollout's logprobs and ref_logprobs (B, R), so methods compare:
    objective/kl = mean over responses of sum_t (logprobs - ref_logprobs) (k1, nats per response),
    objective/entropy = mean of sum_t -logprobs, objective/response_length = mean L_b."""
    return {
        "objective/kl": float(((logprobs - ref_logprobs) * mask).sum(axis=1).mean()),
        "objective/entropy": float((-logprobs * mask).sum(axis=1).mean()),
        "objective/response_length": float(mask.sum(axis=1).mean()),
    }


def mean_stats(minibatch_stats, prefix):
    """The mean of every mini-batch's stats (equal weight per mini-batch), keys prefixed, as PPO's step_stats."""
    return {f"{prefix}/{key}": float(np.mean([s[key] for s in minibatch_stats])) for key in minibatch_stats[0]}
