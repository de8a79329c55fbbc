"""The graph itself: leaf gradients are owned arrays, several roots back-propagate in one pass."""
import numpy as np

from minigpt_np import functional as F
from minigpt_np.optim import clip_grad_norm
from minigpt_np.tensor import Tensor, backward


def test_leaves_fed_the_same_gradient_array_do_not_share_it():
    a, b = Tensor(np.ones(3), requires_grad=True), Tensor(np.ones(3), requires_grad=True)
    F.add(a, b).backward(np.full(3, 2.0))      # add hands the same dy to both parents
    assert not np.shares_memory(a.grad, b.grad)
    norm = clip_grad_norm([a, b], 1.0)
    clipped = np.sqrt(np.sum(a.grad ** 2) + np.sum(b.grad ** 2))
    assert abs(norm - np.sqrt(24)) < 1e-12 and abs(clipped - 1.0) < 1e-5, f"norm {norm}, after clipping {clipped}"


def test_two_roots_in_one_pass_equal_the_sum_of_two_passes():
    rng = np.random.default_rng(0)
    x = Tensor(rng.normal(size=(4, 3)), requires_grad=True)
    w = Tensor(rng.normal(size=(3, 2)), requires_grad=True)
    h = F.gelu(F.linear(x, w))
    y1, y2 = F.mul(h, h), F.linear(h, Tensor(rng.normal(size=(2, 5))))
    g1, g2 = rng.normal(size=y1.shape), rng.normal(size=y2.shape)
    backward([y1, y2], [g1, g2])
    together = w.grad.copy()
    w.grad = None
    h = F.gelu(F.linear(x, w))
    F.mul(h, h).backward(g1)
    h = F.gelu(F.linear(x, w))
    F.linear(h, y2._parents[1]).backward(g2)
    assert np.abs(together - w.grad).max() < 1e-12
