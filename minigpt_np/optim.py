"""AdamW, global-norm gradient clipping and the warmup + cosine learning-rate schedule.

AdamW follows torch.optim.AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization") step for step;
torch 2.13 updates the first moment with lerp_, which rounds differently at the ulp level, and ten float64 steps
agree with PyTorch to 1e-13 (tested; docs/gpt.md). Weight decay applies to parameters with
ndim >= 2 (the matmul weights and the embeddings), never to biases, LayerNorm gains or the value-head bias,
as in GPT-2 / nanoGPT training.
"""
from __future__ import annotations

import math

import numpy as np


def _as_named(params):
    """Accept model.named_parameters() or a plain list of Tensors; return [(name, Tensor)]."""
    params = list(params)
    named = []
    for i, item in enumerate(params):
        if isinstance(item, tuple):
            if len(item) != 2 or not isinstance(item[0], str):
                raise ValueError(f"params[{i}] must be a (name, Tensor) pair or a Tensor, got a tuple of {len(item)}")
            named.append(item)
        else:
            named.append((str(i), item))
    names = [name for name, _ in named]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"parameter names must be unique; repeated: {dupes}")
    for name, p in named:
        if not isinstance(getattr(p, "data", None), np.ndarray):
            raise ValueError(f"parameter {name!r} has no ndarray .data; pass model.named_parameters() or Tensors")
    return named


class AdamW:
    """AdamW with decoupled weight decay and bias correction, per parameter p with gradient g.

    At step t (counted per parameter, from 1), with lr, betas (b1, b2), eps and weight decay wd:

        p  <- p - lr * wd * p                      (only if p.ndim >= 2; decay is applied first)
        m  <- b1 * m + (1 - b1) * g
        v  <- b2 * v + (1 - b2) * g^2
        m_hat = m / (1 - b1^t),   v_hat = v / (1 - b2^t)
        p  <- p - lr * m_hat / (sqrt(v_hat) + eps)

    The last line is evaluated as PyTorch does, p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps),
    which is the same number up to rounding (`adamw_update`). m and v have the parameter's shape and dtype.

    params: model.named_parameters() (names are used in state_dict) or a list of Tensors (named "0", "1", ...).
    Parameters whose .grad is None are skipped and their step counter does not advance (as in PyTorch).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        if not lr >= 0.0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
        if not eps >= 0.0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.named_params = _as_named(params)
        if not self.named_params:
            raise ValueError("AdamW got an empty parameter list")
        self.lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.t = 0  # number of step() calls
        self.steps = [0] * len(self.named_params)  # per-parameter step counts, used for bias correction
        self.m = [np.zeros_like(p.data) for _, p in self.named_params]
        self.v = [np.zeros_like(p.data) for _, p in self.named_params]
        self.decay = [p.data.ndim >= 2 for _, p in self.named_params]

    def step(self, lr=None):
        """One AdamW update of every parameter that has a gradient; lr overrides (and replaces) self.lr."""
        if lr is not None:
            if not lr >= 0.0:
                raise ValueError(f"lr must be >= 0, got {lr}")
            self.lr = float(lr)
        lr, (b1, b2), eps, wd = self.lr, self.betas, self.eps, self.weight_decay
        self.t += 1
        for i, (name, p) in enumerate(self.named_params):
            g = p.grad
            if g is None:
                continue
            if g.shape != p.data.shape:
                raise ValueError(f"gradient of {name!r} has shape {g.shape}, parameter has {p.data.shape}")
            self.steps[i] += 1
            adamw_update(p.data, g, self.m[i], self.v[i], self.steps[i], lr=lr, betas=(b1, b2), eps=eps,
                         weight_decay=wd if self.decay[i] else 0.0)

    def zero_grad(self):
        """Drop every gradient (set .grad to None), so the next backward starts from zero."""
        for _, p in self.named_params:
            p.grad = None

    def state_dict(self):
        """Flat arrays for np.savez: "optim.t" (step() calls), and per parameter name
        "optim.step.<name>" (its own step count), "optim.m.<name>", "optim.v.<name>" (copies)."""
        sd = {"optim.t": np.array(self.t, dtype=np.int64)}
        for i, (name, _) in enumerate(self.named_params):
            sd[f"optim.step.{name}"] = np.array(self.steps[i], dtype=np.int64)
            sd[f"optim.m.{name}"] = self.m[i].copy()
            sd[f"optim.v.{name}"] = self.v[i].copy()
        return sd

    def load_state_dict(self, sd):
        """Restore from state_dict(); raises ValueError listing missing or mis-shaped entries. Keys that do not
        start with "optim." are ignored, so a whole checkpoint's arrays can be passed in."""
        expected = {"optim.t": ()}
        for name, p in self.named_params:
            expected[f"optim.step.{name}"] = ()
            expected[f"optim.m.{name}"] = p.data.shape
            expected[f"optim.v.{name}"] = p.data.shape
        missing = sorted(k for k in expected if k not in sd)
        misshaped = sorted(
            f"{k}: {np.shape(sd[k])} != {shape}" for k, shape in expected.items() if k in sd and np.shape(sd[k]) != shape
        )
        unexpected = sorted(k for k in sd if k.startswith("optim.") and k not in expected)
        if missing or misshaped or unexpected:
            raise ValueError(
                "optimizer state does not match these parameters: "
                f"missing {missing}, mis-shaped {misshaped}, unexpected {unexpected}. "
                "Was it saved for a different model? Start the optimizer fresh instead."
            )
        self.t = int(sd["optim.t"])
        for i, (name, _) in enumerate(self.named_params):
            self.steps[i] = int(sd[f"optim.step.{name}"])
            self.m[i][...] = sd[f"optim.m.{name}"]
            self.v[i][...] = sd[f"optim.v.{name}"]


def adamw_update(p, g, m, v, t, *, lr, betas, eps, weight_decay):
    """One AdamW update of a parameter p with gradient g at its step t (from 1); p, m and v change in place.

        p <- p (1 - lr wd);  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
        p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    p, g, m, v: arrays of one shape and dtype. `kernels.use("fast")` replaces it with
    `minigpt_np.fast.optim.adamw_update`, which writes each line in place.
    """
    b1, b2 = betas
    if weight_decay != 0.0:
        p *= 1.0 - lr * weight_decay
    m[...] = b1 * m + (1.0 - b1) * g
    v[...] = b2 * v + (1.0 - b2) * g**2
    p -= m / (np.sqrt(v) / math.sqrt(1.0 - b2**t) + eps) * (lr / (1.0 - b1**t))


def clip_grad_norm(params, max_norm):
    """Scale all gradients together so their global L2 norm is at most max_norm; return the norm before.

        norm = sqrt(sum_p sum_i g_{p,i}^2),   g <- g * min(1, max_norm / (norm + 1e-6))

    as torch.nn.utils.clip_grad_norm_ (which also scales, by a factor just below 1, when norm is within 1e-6 of
    max_norm). params: Tensors or (name, Tensor) pairs; those without a gradient are ignored. A non-finite norm
    is returned as is and the gradients are left untouched, so the caller can skip the step.
    """
    if not max_norm > 0.0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    grads = [p.grad for _, p in _as_named(params) if p.grad is not None]
    total = 0.0
    for g in grads:
        flat = g.reshape(-1)
        total += float(np.dot(flat, flat))
    norm = math.sqrt(total)
    if not math.isfinite(norm):
        return norm
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        for g in grads:
            g *= coef
    return norm


def lr_schedule(step, *, max_lr, warmup_steps, total_steps, min_lr=0.0):
    """Learning rate at update number `step` (0-based): linear warmup from 0, then cosine decay to min_lr.

        lr(s) = max_lr * s / W                                                 for 0 <= s < W
        lr(s) = min_lr + (max_lr - min_lr) * (1 + cos(pi * (s - W) / (S - W))) / 2   for W <= s < S
        lr(s) = min_lr                                                         for s >= S

    with W = warmup_steps and S = total_steps, so lr(0) = 0, lr(W) = max_lr, lr((W + S) / 2) = (max_lr + min_lr) / 2.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup_steps < 0 or total_steps <= 0 or warmup_steps > total_steps:
        raise ValueError(f"need 0 <= warmup_steps <= total_steps and total_steps > 0, got {warmup_steps}, {total_steps}")
    if not 0.0 <= min_lr <= max_lr:
        raise ValueError(f"need 0 <= min_lr <= max_lr, got min_lr={min_lr}, max_lr={max_lr}")
    if step < warmup_steps:
        return max_lr * step / warmup_steps
    if step >= total_steps:
        return float(min_lr)
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
