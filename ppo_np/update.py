"""From a loss's per-token gradients to the GPT's weights: the forward pass with a graph, then the way back
(docs/ppo.md, sections 8 and 9). The trainer skeleton (ppo_np/skeleton.py) calls these for every method.

    forward    logits, [vpred] = GPT(batch) with a graph;  logprobs = log softmax(logits)[labels]  (b, R)
    backward   dlogits = dlogprobs (onehot - softmax) at the response columns, dvalues at the same columns;
               the GPT's backward from both roots at once adds d(sum <logits, dlogits> + <vpred, dvalues>)/dtheta
               to every weight's .grad
    step       an optional global-norm clip, then AdamW
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


def policy_logprobs_and_values(model, batch):
    """As `policy_logprobs`, through the policy's value head too -> (logits, vpred Tensors (b, Q+R, V), (b, Q+R),
    response_logits (b, R, V), logprobs (b, R) float64, values (b, R) float64: V_t at the response columns)."""
    logits, vpred = model.logits_and_values(batch.input_ids, batch.attention_mask)
    response_logits = logits.data[:, batch.response_columns]
    logprobs = core.logprobs_from_logits(response_logits, batch.labels).astype(np.float64)
    return logits, vpred, response_logits, logprobs, vpred.data[:, batch.response_columns].astype(np.float64)


def check_finite(method, loss, dlogprobs, dvalues=None):
    """Refuse a non-finite loss or gradient with FloatingPointError, before anything is applied."""
    if not (np.isfinite(loss) and np.all(np.isfinite(dlogprobs))
            and (dvalues is None or np.all(np.isfinite(dvalues)))):
        raise FloatingPointError(f"{method} loss or its gradient is NaN/inf; the step was not applied. Lower lr or "
                                 "check the scores; the last checkpoint is intact.")


def backward(batch, logits, response_logits, dlogprobs, vpred=None, dvalues=None):
    """Add the gradient of the loss to every weight's .grad, from dL/dlogprobs (b, R) and, with the value head's
    vpred, dL/dvalues (b, R): both are 0 outside the response columns (docs/ppo.md, section 8)."""
    cols = batch.response_columns
    dlogits = np.zeros_like(logits.data)
    dlogits[:, cols] = core.logprobs_from_logits_backward(response_logits, batch.labels, dlogprobs)
    roots, droots = [logits], [dlogits]
    if vpred is not None:
        dvpred = np.zeros_like(vpred.data)
        dvpred[:, cols] = dvalues
        roots, droots = [logits, vpred], [dlogits, dvpred]
    mg.tensor.backward(roots, droots)


def optimizer_step(model, optimizer, max_grad_norm=None):
    """The optional global-norm clip (max_grad_norm None: off, as TRL 0.1), then one AdamW step."""
    if max_grad_norm is not None:
        clip_grad_norm(model.parameters(), max_grad_norm)
    optimizer.step()
