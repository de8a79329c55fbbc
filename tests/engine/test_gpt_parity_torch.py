"""The NumPy GPT equals the same GPT-2 written with PyTorch ops, at float64: logits, loss, values and the gradient
of every named parameter, with and without a left-padding attention_mask.

The torch model below is the reference and is written from the GPT-2 / Hugging Face conventions, not from our
code: F.layer_norm (eps 1e-5), tanh GELU, causal attention scaled by 1/sqrt(D) whose masked scores are set to
torch.finfo(dtype).min, position ids clip(cumsum(mask) - 1, 0), lm_head tied to wte, Conv1D weights (in, out).
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import minigpt_np as mg
from minigpt_np import functional as F
from minigpt_np.tensor import Tensor

LOGITS_ATOL = 1e-9
GRAD_RTOL = 1e-8
CFG = dict(vocab_size=23, block_size=10, n_layer=2, n_head=2, n_embd=16)
B, T = 3, 8
LEFT_PADDING = np.array([[1] * 8, [0, 0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 1, 1]])


def torch_gpt(P, cfg, idx, attention_mask=None):
    """GPT-2 forward in plain torch. P: {HF name: tensor}; idx (B, T) long -> logits (B, T, V), values (B, T) | None."""
    x = torch_hidden_states(P, cfg, idx, attention_mask)
    logits = x @ P["transformer.wte.weight"].T
    values = None
    if "v_head.weight" in P:
        values = (x @ P["v_head.weight"] + P["v_head.bias"]).squeeze(-1)
    return logits, values


def torch_hidden_states(P, cfg, idx, attention_mask=None):
    """The GPT-2 trunk in plain torch: idx (B, T) long -> ln_f output (B, T, C), what the heads read."""
    Bsz, Tlen = idx.shape
    C, H = cfg.n_embd, cfg.n_head
    D = C // H
    allowed = torch.tril(torch.ones(Tlen, Tlen, dtype=torch.bool))[None, None]          # (1, 1, T, T)
    if attention_mask is None:
        pos = torch.arange(Tlen).expand(Bsz, Tlen)
    else:
        pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        allowed = allowed & attention_mask.bool()[:, None, None, :]
    x = P["transformer.wte.weight"][idx] + P["transformer.wpe.weight"][pos]
    for i in range(cfg.n_layer):
        h = f"transformer.h.{i}."
        a = TF.layer_norm(x, (C,), P[h + "ln_1.weight"], P[h + "ln_1.bias"], eps=1e-5)
        qkv = a @ P[h + "attn.c_attn.weight"] + P[h + "attn.c_attn.bias"]
        q, k, v = (z.view(Bsz, Tlen, H, D).transpose(1, 2) for z in qkv.split(C, dim=-1))
        scores = q @ k.transpose(-1, -2) / math.sqrt(D)
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        y = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(Bsz, Tlen, C)
        x = x + y @ P[h + "attn.c_proj.weight"] + P[h + "attn.c_proj.bias"]
        m = TF.layer_norm(x, (C,), P[h + "ln_2.weight"], P[h + "ln_2.bias"], eps=1e-5)
        m = TF.gelu(m @ P[h + "mlp.c_fc.weight"] + P[h + "mlp.c_fc.bias"], approximate="tanh")
        x = x + m @ P[h + "mlp.c_proj.weight"] + P[h + "mlp.c_proj.bias"]
    return TF.layer_norm(x, (C,), P["transformer.ln_f.weight"], P["transformer.ln_f.bias"], eps=1e-5)


def random_state_dict(model, seed):
    """Weights of size O(0.3) (GPT-2's 0.02 would make every layer nearly linear and the comparison weak)."""
    rng = np.random.default_rng(seed)
    return {name: (1.0 if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")) else 0.0)
            + 0.3 * rng.standard_normal(p.shape) for name, p in model.named_parameters()}


def relative_error(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def compare(value_head, padded, seed=0):
    cfg = mg.GPTConfig(**CFG, value_head=value_head)
    model = mg.GPT(cfg, dtype=np.float64, seed=seed)
    model.load_state_dict(random_state_dict(model, seed + 1))
    rng = np.random.default_rng(seed + 2)
    idx = rng.integers(0, cfg.vocab_size, (B, T))
    targets = rng.integers(0, cfg.vocab_size, (B, T))
    targets[0, 2] = -100                                     # an ignored target among real tokens too
    mask = LEFT_PADDING if padded else None
    if padded:
        targets = np.where(mask == 1, targets, -100)
    value_weights = rng.standard_normal((B, T)) * (1 if mask is None else mask)

    # NumPy engine
    model.zero_grad()
    if value_head:
        logits, values = model.logits_and_values(idx, attention_mask=mask)
        ce = F.cross_entropy(logits, targets)
        loss = ce + F.mul(values, Tensor(value_weights)).sum()
    else:
        logits, values = model(idx, attention_mask=mask), None
        loss = ce = F.cross_entropy(logits, targets)
    loss.backward()

    # torch reference, same weights
    P = {name: torch.tensor(a, requires_grad=True) for name, a in model.state_dict().items()}
    t_mask = None if mask is None else torch.tensor(mask)
    t_logits, t_values = torch_gpt(P, cfg, torch.tensor(idx), t_mask)
    t_ce = TF.cross_entropy(t_logits.reshape(-1, cfg.vocab_size), torch.tensor(targets).reshape(-1), ignore_index=-100)
    t_loss = t_ce + (t_values * torch.tensor(value_weights)).sum() if value_head else t_ce
    t_loss.backward()

    real = np.ones((B, T), dtype=bool) if mask is None else mask == 1       # padding positions are not compared
    errors = {"logits (abs)": float(np.max(np.abs(logits.data - t_logits.detach().numpy())[real]))}
    errors["loss (abs)"] = abs(float(loss.data) - t_loss.item())
    errors["cross-entropy (abs)"] = abs(float(ce.data) - t_ce.item())
    if value_head:
        errors["values (abs)"] = float(np.max(np.abs(values.data - t_values.detach().numpy())[real]))
    grad_errors = {name: relative_error(p.grad, P[name].grad.numpy()) for name, p in model.named_parameters()}
    print(f"\nparity value_head={value_head} padded={padded}")
    for name, err in {**errors, **{f"d {n} (rel)": e for n, e in grad_errors.items()}}.items():
        print(f"  {name:<45s} {err:.3e}")
    return errors, grad_errors


@pytest.mark.parametrize("value_head", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_gpt_logits_loss_and_every_parameter_gradient_match_torch(value_head, padded):
    errors, grad_errors = compare(value_head, padded)
    worst_value = max(errors, key=errors.get)
    assert errors[worst_value] < LOGITS_ATOL, f"worst output: {worst_value} error {errors[worst_value]:.3e}"
    worst_grad = max(grad_errors, key=grad_errors.get)
    assert grad_errors[worst_grad] < GRAD_RTOL, f"worst gradient: {worst_grad} rel error {grad_errors[worst_grad]:.3e}"
    assert len(grad_errors) == len(mg.model.parameter_shapes(mg.GPTConfig(**CFG, value_head=value_head)))


def test_parity_check_fails_when_the_reference_uses_another_convention(monkeypatch):
    """Negative control: with the torch GELU switched to the exact erf form, the comparison must fail."""
    gelu = TF.gelu
    monkeypatch.setattr(TF, "gelu", lambda x, approximate="none": gelu(x))
    errors, grad_errors = compare(value_head=False, padded=False)
    assert errors["logits (abs)"] > 1e3 * LOGITS_ATOL and max(grad_errors.values()) > 1e3 * GRAD_RTOL


def test_padding_positions_change_nothing_at_real_tokens():
    """Left padding is invisible: a padded row's real-token logits equal the unpadded row's logits."""
    cfg = mg.GPTConfig(**CFG)
    model = mg.GPT(cfg, dtype=np.float64, seed=0)
    model.load_state_dict(random_state_dict(model, 1))
    tokens = np.random.default_rng(3).integers(0, cfg.vocab_size, (1, 5))
    padded = np.concatenate([np.full((1, 3), 7), tokens], axis=1)
    mask = np.array([[0, 0, 0, 1, 1, 1, 1, 1]])
    err = np.max(np.abs(model(padded, attention_mask=mask).data[:, 3:] - model(tokens).data))
    assert err < 1e-12, f"max abs err {err:.3e}"
