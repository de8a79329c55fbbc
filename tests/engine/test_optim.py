"""AdamW, gradient clipping and the learning-rate schedule against PyTorch and their equations."""
import math

import numpy as np
import torch

from minigpt_np.optim import AdamW, clip_grad_norm, lr_schedule


class P:
    """The two attributes the optimizer uses from minigpt_np.tensor.Tensor."""

    def __init__(self, data):
        self.data = data
        self.grad = None


SHAPES = {"wte": (11, 6), "c_attn.weight": (6, 18), "c_attn.bias": (18,), "ln.weight": (6,), "v_head.bias": (1,)}


def make_params(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return [(name, P(rng.standard_normal(shape).astype(dtype))) for name, shape in SHAPES.items()]


def torch_adamw(named, lr, betas, eps, wd):
    tparams = {name: torch.tensor(p.data.copy(), requires_grad=True) for name, p in named}
    groups = [
        {"params": [t for t in tparams.values() if t.ndim >= 2], "weight_decay": wd},
        {"params": [t for t in tparams.values() if t.ndim < 2], "weight_decay": 0.0},
    ]
    return tparams, torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def worst_error(named, tparams):
    errs = {name: float(np.max(np.abs(p.data - tparams[name].detach().numpy()))) for name, p in named}
    name = max(errs, key=errs.get)
    return errs[name], name


def test_adamw_ten_steps_match_torch_adamw_with_decay_on_matrices_only():
    lr, betas, eps, wd = 3e-2, (0.8, 0.95), 1e-8, 0.1
    named = make_params()
    start = {name: p.data.copy() for name, p in named}
    tparams, topt = torch_adamw(named, lr, betas, eps, wd)
    opt = AdamW(named, lr=lr, betas=betas, eps=eps, weight_decay=wd)
    rng = np.random.default_rng(1)
    for step in range(10):
        step_lr = lr * (step + 1) / 10  # a changing lr exercises step(lr=...)
        for group in topt.param_groups:
            group["lr"] = step_lr
        for name, p in named:
            p.grad = rng.standard_normal(p.data.shape)
            tparams[name].grad = torch.tensor(p.grad.copy())
        opt.step(lr=step_lr)
        topt.step()
    err, name = worst_error(named, tparams)
    assert err < 1e-13, f"worst |numpy - torch| = {err:.3e} in {name}"
    moved = min(float(np.max(np.abs(p.data - start[n]))) for n, p in named)
    assert moved > 1e-2, f"some parameter barely moved in 10 steps: min max-change {moved:.3e}"


def test_adamw_weight_decay_touches_only_matrices():
    named = make_params()
    for _, p in named:
        p.grad = np.zeros_like(p.data)  # zero gradient: only the decay can move a weight
    before = {name: p.data.copy() for name, p in named}
    AdamW(named, lr=0.1, weight_decay=0.5).step()
    for name, p in named:
        expected = before[name] * (1 - 0.1 * 0.5) if p.data.ndim >= 2 else before[name]
        err = float(np.max(np.abs(p.data - expected)))
        assert err < 1e-15, f"{name}: |p - expected| = {err:.3e}"


def test_adamw_skips_parameters_without_grad_like_torch():
    named = make_params()
    tparams, topt = torch_adamw(named, 1e-2, (0.9, 0.999), 1e-8, 0.01)
    opt = AdamW(named, lr=1e-2, weight_decay=0.01)
    rng = np.random.default_rng(2)
    for step in range(6):
        for i, (name, p) in enumerate(named):
            # the bias of c_attn gets a gradient only every other step: its own step count lags
            has_grad = not (name == "c_attn.bias" and step % 2 == 0)
            p.grad = rng.standard_normal(p.data.shape) if has_grad else None
            tparams[name].grad = torch.tensor(p.grad.copy()) if has_grad else None
        opt.step()
        topt.step()
    err, name = worst_error(named, tparams)
    assert err < 1e-13, f"worst |numpy - torch| = {err:.3e} in {name}"


def test_adamw_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(3)
    grads = [[rng.standard_normal(shape) for shape in SHAPES.values()] for _ in range(8)]

    def run(named, opt, steps):
        for gs in steps:
            for (_, p), g in zip(named, gs):
                p.grad = g.copy()
            opt.step()

    named_a = make_params()
    opt_a = AdamW(named_a, lr=1e-2, weight_decay=0.1)
    run(named_a, opt_a, grads)

    named_b = make_params()
    opt_b = AdamW(named_b, lr=1e-2, weight_decay=0.1)
    run(named_b, opt_b, grads[:4])
    sd = opt_b.state_dict()
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    weights = {name: p.data.copy() for name, p in named_b}
    named_c = make_params(seed=99)
    for name, p in named_c:
        p.data[...] = weights[name]
    opt_c = AdamW(named_c, lr=1e-2, weight_decay=0.1)
    opt_c.load_state_dict({k: v.copy() for k, v in sd.items()})
    assert opt_c.t == 4
    run(named_c, opt_c, grads[4:])
    err = max(float(np.max(np.abs(pa.data - pc.data))) for (_, pa), (_, pc) in zip(named_a, named_c))
    assert err == 0.0, f"resumed run differs from the uninterrupted one by {err:.3e}"


def test_adamw_load_state_dict_names_missing_and_misshaped_entries():
    named = make_params()
    sd = AdamW(named).state_dict()
    del sd["optim.m.wte"]
    sd["optim.v.ln.weight"] = np.zeros(7)
    try:
        AdamW(make_params()).load_state_dict(sd)
    except ValueError as e:
        msg = str(e)
    else:
        raise AssertionError("load_state_dict accepted a broken state")
    assert "optim.m.wte" in msg and "optim.v.ln.weight" in msg, msg


def test_adamw_float32_state_stays_float32():
    named = make_params(np.float32)
    for _, p in named:
        p.grad = np.ones_like(p.data)
    opt = AdamW(named)
    opt.step()
    assert all(p.data.dtype == np.float32 for _, p in named)
    assert all(m.dtype == np.float32 and v.dtype == np.float32 for m, v in zip(opt.m, opt.v))


def test_adamw_zero_grad_clears_gradients():
    named = make_params()
    for _, p in named:
        p.grad = np.ones_like(p.data)
    AdamW(named).zero_grad()
    assert all(p.grad is None for _, p in named)


def test_clip_grad_norm_matches_torch_clip_grad_norm():
    rng = np.random.default_rng(4)
    for max_norm in (0.5, 1e3):  # one that clips, one that does not
        named = make_params()
        for _, p in named:
            p.grad = rng.standard_normal(p.data.shape)
        tgrads = [torch.tensor(p.grad.copy(), requires_grad=False) for _, p in named]
        tparams = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in tgrads]
        for tp, g in zip(tparams, tgrads):
            tp.grad = g
        tnorm = float(torch.nn.utils.clip_grad_norm_(tparams, max_norm))
        norm = clip_grad_norm(named, max_norm)
        assert (norm > max_norm) == (max_norm == 0.5), f"norm {norm}: the two cases must clip / not clip"
        assert abs(norm - tnorm) < 1e-12, f"norm {norm} vs torch {tnorm}"
        err = max(float(np.max(np.abs(p.grad - tp.grad.numpy()))) for (_, p), tp in zip(named, tparams))
        assert err < 1e-15, f"max_norm={max_norm}: worst |grad - torch grad| = {err:.3e}"


def test_clip_grad_norm_result_has_norm_max_norm():
    named = make_params()
    for _, p in named:
        p.grad = 10 * np.ones_like(p.data)
    before = clip_grad_norm(named, 1.0)
    after = math.sqrt(sum(float(np.sum(p.grad**2)) for _, p in named))
    assert before > 10 and abs(after - 1.0) < 1e-6, f"norm before {before}, after {after}"


def test_lr_schedule_warmup_cosine_and_end_values():
    kw = dict(max_lr=1e-3, warmup_steps=10, total_steps=110, min_lr=1e-4)
    assert lr_schedule(0, **kw) == 0.0
    assert abs(lr_schedule(5, **kw) - 5e-4) < 1e-18
    assert abs(lr_schedule(10, **kw) - 1e-3) < 1e-18
    assert abs(lr_schedule(60, **kw) - 5.5e-4) < 1e-15  # cosine midpoint: (max + min) / 2
    assert abs(lr_schedule(35, **kw) - (1e-4 + 0.9e-3 * (1 + math.cos(math.pi / 4)) / 2)) < 1e-15
    assert 1e-4 < lr_schedule(109, **kw) < 1e-4 + 1e-6
    assert lr_schedule(110, **kw) == 1e-4 and lr_schedule(500, **kw) == 1e-4
    lrs = [lr_schedule(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:])), "cosine phase must not increase"


def test_lr_schedule_rejects_bad_arguments():
    for kw in (dict(warmup_steps=20, total_steps=10), dict(warmup_steps=-1, total_steps=10)):
        try:
            lr_schedule(0, max_lr=1e-3, **kw)
        except ValueError:
            continue
        raise AssertionError(f"accepted {kw}")
