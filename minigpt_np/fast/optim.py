"""AdamW's update of one parameter, as `optim.adamw_update` computes it, in place: every line is a pass over the
parameter, its moments or one scratch array, so that the update allocates one array where the expressions of the
reference allocate a temporary per operation.

The same operations in the same order as the reference, so the same bits (tests/engine/test_kernels.py).
"""
import math

import numpy as np


def adamw_update(p, g, m, v, t, *, lr, betas, eps, weight_decay):
    """One AdamW update in place of p, m, v (same shape and dtype as the gradient g) at the parameter's step t (from
    1): `optim.adamw_update`, written as in-place passes."""
    b1, b2 = betas
    s = np.empty_like(p)
    if weight_decay != 0.0:
        p *= 1.0 - lr * weight_decay
    # m <- b1 m + (1 - b1) g
    m *= b1
    np.multiply(g, 1.0 - b1, out=s)
    m += s
    # v <- b2 v + (1 - b2) g^2
    v *= b2
    np.multiply(g, g, out=s)
    s *= 1.0 - b2
    v += s
    # denominator sqrt(v) / sqrt(1 - b2^t) + eps, then the step (lr / (1 - b1^t)) m / denominator
    np.sqrt(v, out=s)
    s /= math.sqrt(1.0 - b2**t)
    s += eps
    np.divide(m, s, out=s)
    s *= lr / (1.0 - b1**t)
    p -= s
