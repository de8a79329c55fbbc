"""A pretraining step's forward and backward as `pretrain.loss_and_gradients` computes it, its two micro-batches
at once, one per core (`cores.on_two_cores`); supervised fine-tuning's step too (`minigpt_np.sft`), whose targets
leave the prompts out.

With n_i of the batch's n counted targets (every next token in pretraining, the completions' in fine-tuning) in
micro-batch i,

    L = (n_1 / n) L_1 + (n_2 / n) L_2,      dL/dtheta = (n_1 / n) dL_1/dtheta + (n_2 / n) dL_2/dtheta

the second micro-batch runs on a `replica` of the model (the same weight arrays, gradients of its own) on a helper
thread, and its gradients are added to the first's afterwards. Whether the two ran at once or one after the other
changes no bit (tested); with dropout they run one after the other, so that their masks are drawn from the model's
one generator in a fixed order.
"""
import copy

import numpy as np

from ..pretrain import counted, counted_targets, first_half
from ..tensor import Tensor
from .cores import on_two_cores


def loss_and_gradients(model, windows, targets=None):
    """The mean next-token loss L over windows (B, T+1) -> float; every parameter's .grad is set to dL/dtheta.

    targets (B, T), IGNORE where a position predicts nothing: as `pretrain.loss_and_gradients` (default windows[:, 1:]).
    The first ceil(B/2) windows on the caller's thread, the rest at the same time on `replica(model)`.
    """
    targets, n = counted_targets(windows, targets)
    model.zero_grad()
    if len(windows) == 1:
        return _micro_batch(model, windows, targets, n)
    half, twin = first_half(len(windows)), replica(model)
    first = lambda: _micro_batch(model, windows[:half], targets[:half], n)
    second = lambda: _micro_batch(twin, windows[half:], targets[half:], n)
    if model.training and model.cfg.dropout > 0:
        losses = first(), second()          # dropout masks come from one generator: drawn in a fixed order
    else:
        losses = on_two_cores(first, second)
    for name, p in model.params.items():
        extra = twin.params[name].grad          # None if the second part held prompts alone
        if extra is not None and p.grad is None:     # the first part held prompts alone
            p.grad = extra
        elif extra is not None:
            p.grad += extra
    return losses[0] + losses[1]


def _micro_batch(model, windows, targets, n):
    """(n_i / n) L_i for windows (b, T+1) whose targets hold n_i of the batch's n counted ones -> float; backward into
    .grad (nothing for a part of prompts alone, whose mean would be 0/0)."""
    share = counted(targets) / n
    if share == 0:
        return 0.0
    loss = model.loss(windows[:, :-1], targets)
    loss.backward(np.asarray(share, dtype=loss.dtype))
    return float(loss.data) * share


def replica(model):
    """A GPT over the same parameter arrays as `model`, with gradients of its own: the second micro-batch's model.
    It sees in-place updates of the arrays (AdamW's) but not arrays replaced later (`load_state_dict`): make it
    again for each step."""
    twin = copy.copy(model)
    twin.params = {name: Tensor(p.data, requires_grad=p.requires_grad) for name, p in model.params.items()}
    return twin
