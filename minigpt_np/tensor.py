"""The autograd graph: a `Tensor` is an ndarray, its gradient, its parents and one backward closure.

Micrograd-sized on purpose. Each op in `functional` computes its output with a forward function from `ops`
and attaches a closure that maps the output gradient to one gradient per parent (with the matching backward
function from `ops`). `backward` walks the graph in reverse topological order and accumulates.
"""
import contextlib

import numpy as np

_grad_enabled = True


@contextlib.contextmanager
def no_grad():
    """Inside this block ops build no graph: for rollouts, generation and evaluation."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def is_grad_enabled():
    return _grad_enabled


class Tensor:
    """An ndarray `data`, its gradient `grad` (same shape, or None), and how it was made.

    `_parents` are the input Tensors of the op that produced this one and `_backward(dout)` returns one
    gradient (or None) per parent. Leaves (parameters, inputs) have neither.
    """

    __slots__ = ("data", "grad", "requires_grad", "_parents", "_backward")

    def __init__(self, data, requires_grad=False, _parents=(), _backward=None):
        self.data = data if isinstance(data, np.ndarray) else np.asarray(data)
        self.grad = None
        self.requires_grad = requires_grad
        self._parents = _parents
        self._backward = _backward

    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)

    def __repr__(self):
        return f"Tensor(shape={self.data.shape}, dtype={self.data.dtype}, requires_grad={self.requires_grad})"

    def numpy(self):
        return self.data

    def backward(self, grad=None):
        """Back-propagate from this tensor; `grad` defaults to 1 for a scalar loss."""
        if grad is None:
            if self.data.size != 1:
                raise ValueError(f"backward() without a gradient needs a scalar, got shape {self.data.shape}; "
                                 "pass grad= with the same shape as the tensor")
            grad = np.ones_like(self.data)
        backward([self], [grad])

    # The arithmetic the model and tests need, defined below; the network's ops live in `functional`.
    def __add__(self, other):
        return add(self, other)

    def __mul__(self, other):
        return mul(self, other)

    def sum(self):
        return sum(self)

    def reshape(self, *shape):
        return reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], tuple) else shape)


def make(data, parents, backward_fn):
    """The output Tensor of an op: records parents and backward only if some parent needs a gradient."""
    if _grad_enabled and any(p is not None and p.requires_grad for p in parents):
        return Tensor(data, True, tuple(parents), backward_fn)
    return Tensor(data)


def backward(roots, grads):
    """Accumulate d(sum_i <roots_i, grads_i>)/d(leaf) into every leaf's `.grad`.

    Several roots at once let the PPO trainer push dlogits and dvalues through the model in one pass.
    Gradients of intermediate tensors are dropped once used, as PyTorch does, to bound memory.
    """
    order, seen = [], set()
    for root in roots:                      # iterative DFS: deep graphs must not hit the recursion limit
        stack = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
                continue
            if id(node) in seen:
                continue
            seen.add(id(node))
            stack.append((node, True))
            for p in node._parents:
                if p is not None and p.requires_grad and id(p) not in seen:
                    stack.append((p, False))
    for root, g in zip(roots, grads):
        g = np.asarray(g, dtype=root.data.dtype)
        if g.shape != root.data.shape:
            raise ValueError(f"gradient shape {g.shape} does not match tensor shape {root.data.shape}")
        root.grad = g if root.grad is None else root.grad + g
    for node in reversed(order):
        if node._backward is None or node.grad is None:
            continue
        for p, g in zip(node._parents, node._backward(node.grad)):
            if g is None or p is None or not p.requires_grad:
                continue
            if p.grad is None:
                # a leaf keeps its own copy: `g` may be the very array another parent received (add passes dy
                # to both), and optimizers and clip_grad_norm scale leaf gradients in place
                p.grad = g.copy() if p._backward is None else g
            else:
                p.grad = p.grad + g   # never in place, for the same reason
        node.grad = None


def add(a, b):
    """y = a + b with numpy broadcasting; each gradient is dy summed back to its operand's shape."""
    a = a if isinstance(a, Tensor) else Tensor(a)
    b = b if isinstance(b, Tensor) else Tensor(b)
    return make(a.data + b.data, (a, b), lambda dy: (unbroadcast(dy, a.shape), unbroadcast(dy, b.shape)))


def mul(a, b):
    """y = a * b with broadcasting;  da = dy b,  db = dy a (unbroadcast)."""
    a = a if isinstance(a, Tensor) else Tensor(a)
    b = b if isinstance(b, Tensor) else Tensor(b)
    return make(a.data * b.data, (a, b),
                lambda dy: (unbroadcast(dy * b.data, a.shape), unbroadcast(dy * a.data, b.shape)))


def sum(x):  # noqa: A001 - the Tensor method's name
    """y = sum of all entries;  dx = dy broadcast to x's shape."""
    return make(np.sum(x.data), (x,), lambda dy: (np.broadcast_to(dy, x.shape).copy(),))


def reshape(x, shape):
    """Same entries, new shape;  dx = dy reshaped back."""
    return make(x.data.reshape(shape), (x,), lambda dy: (dy.reshape(x.shape),))


def unbroadcast(grad, shape):
    """Undo numpy broadcasting: sum `grad` over the axes that broadcasting added or stretched to reach `shape`."""
    while grad.ndim > len(shape):
        grad = grad.sum(axis=0)
    for axis, size in enumerate(shape):
        if size == 1 and grad.shape[axis] != 1:
            grad = grad.sum(axis=axis, keepdims=True)
    return grad
