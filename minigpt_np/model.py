"""GPT-2, top to bottom, with Hugging Face `GPT2LMHeadModel` parameter names and layouts.

    x = wte[idx] + wpe[pos]
    for each block:  x = x + c_proj(attn(ln_1(x)));  x = x + mlp_c_proj(gelu(c_fc(ln_2(x))))
    logits = ln_f(x) wte^T                      (lm_head tied to wte)
    values = ln_f(x) w_v + b_v                  (optional value head for PPO)

Conv1D weights are stored (in, out) as in GPT-2, so a converted GPT-2 state dict loads unchanged.
"""
import dataclasses

import numpy as np

from . import functional as F
from .checkpoint import load_npz, save_npz
from .tensor import Tensor

FORMAT = "minigpt_np GPT"   # the "format" entry of a GPT file's metadata


@dataclasses.dataclass
class GPTConfig:
    vocab_size: int = 4096      # tokens in the vocabulary, V (4096 beat 2048 in validation bits/char)
    block_size: int = 64        # longest sequence the position embedding covers, T_max
    n_layer: int = 4            # transformer blocks, L
    n_head: int = 4             # attention heads per block, H
    n_embd: int = 128           # channels, C (divisible by n_head)
    dropout: float = 0.0        # embedding and residual dropout probability while training
    value_head: bool = False    # add a linear value head v = h w_v + b_v on the final hidden states (PPO)

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must lie in [0, 1), got {self.dropout}")


def parameter_shapes(cfg):
    """Hugging Face names and shapes of every parameter, in GPT2LMHeadModel order."""
    C, V = cfg.n_embd, cfg.vocab_size
    shapes = {"transformer.wte.weight": (V, C), "transformer.wpe.weight": (cfg.block_size, C)}
    for i in range(cfg.n_layer):
        h = f"transformer.h.{i}."
        shapes.update({
            h + "ln_1.weight": (C,), h + "ln_1.bias": (C,),
            h + "attn.c_attn.weight": (C, 3 * C), h + "attn.c_attn.bias": (3 * C,),
            h + "attn.c_proj.weight": (C, C), h + "attn.c_proj.bias": (C,),
            h + "ln_2.weight": (C,), h + "ln_2.bias": (C,),
            h + "mlp.c_fc.weight": (C, 4 * C), h + "mlp.c_fc.bias": (4 * C,),
            h + "mlp.c_proj.weight": (4 * C, C), h + "mlp.c_proj.bias": (C,),
        })
    shapes.update({"transformer.ln_f.weight": (C,), "transformer.ln_f.bias": (C,)})
    if cfg.value_head:
        shapes.update({"v_head.weight": (C, 1), "v_head.bias": (1,)})
    return shapes


def init_parameter(name, shape, cfg, rng, dtype):
    """GPT-2 initialisation: N(0, 0.02) weights, residual projections scaled by 1/sqrt(2 L), zero biases, unit LN gains."""
    if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
        return np.ones(shape, dtype)
    if name.endswith("bias"):
        return np.zeros(shape, dtype)
    std = 0.02 / np.sqrt(2 * cfg.n_layer) if name.endswith("c_proj.weight") else 0.02
    return (rng.standard_normal(shape) * std).astype(dtype)


# Buffers and tied weights that a Hugging Face GPT-2 state dict carries but that are not parameters here.
_HF_EXTRAS = (".attn.bias", ".attn.masked_bias")


class GPT:
    def __init__(self, cfg, dtype=np.float32, seed=0):
        self.cfg = cfg
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"GPT dtype must be float32 or float64, got {self.dtype}")
        self.training = True
        self._rng = np.random.default_rng(seed)
        self.params = {name: Tensor(init_parameter(name, shape, cfg, self._rng, self.dtype), requires_grad=True)
                       for name, shape in parameter_shapes(cfg).items()}

    # ------------------------------------------------------------------------------------------ parameters
    def named_parameters(self):
        return list(self.params.items())

    def parameters(self):
        return list(self.params.values())

    def num_parameters(self):
        return sum(p.data.size for p in self.params.values())

    def zero_grad(self):
        for p in self.params.values():
            p.grad = None

    def state_dict(self):
        """{Hugging Face name: ndarray copy}. lm_head.weight is omitted: it is wte."""
        return {name: p.data.copy() for name, p in self.params.items()}

    def load_state_dict(self, state_dict):
        """Copy arrays in by name; a mismatch raises a ValueError that lists every missing, unexpected or mis-shaped key.

        Accepts a converted Hugging Face GPT-2 state dict: its attention-mask buffers are ignored and its
        lm_head.weight must equal wte (the head is tied).
        """
        expected = parameter_shapes(self.cfg)
        given = {k: v for k, v in state_dict.items() if not k.endswith(_HF_EXTRAS) and k != "lm_head.weight"}
        missing = sorted(set(expected) - set(given))
        unexpected = sorted(set(given) - set(expected))
        misshaped = [f"{k}: expected {expected[k]}, got {tuple(np.shape(given[k]))}"
                     for k in expected if k in given and tuple(np.shape(given[k])) != expected[k]]
        problems = []
        if missing:
            problems.append(f"missing keys {missing}")
        if unexpected:
            problems.append(f"unexpected keys {unexpected}")
        if misshaped:
            problems.append(f"mis-shaped keys [{'; '.join(misshaped)}]")
        if "lm_head.weight" in state_dict and "transformer.wte.weight" in given and not np.array_equal(
                state_dict["lm_head.weight"], given["transformer.wte.weight"]):
            problems.append("lm_head.weight differs from transformer.wte.weight, but this GPT ties them")
        if problems:
            raise ValueError("load_state_dict: " + "; ".join(problems) +
                             ". Build the GPT with the GPTConfig the weights were trained with "
                             "(value_head=True for a PPO policy).")
        for name, p in self.params.items():
            p.data = np.array(given[name], dtype=self.dtype)

    def add_value_head(self, seed=0):
        """Give the model a freshly initialised value head (PPO policy made from a pretrained LM)."""
        if self.cfg.value_head:
            return
        self.cfg = dataclasses.replace(self.cfg, value_head=True)
        rng = np.random.default_rng(seed)
        C = self.cfg.n_embd
        self.params["v_head.weight"] = Tensor(init_parameter("v_head.weight", (C, 1), self.cfg, rng, self.dtype), True)
        self.params["v_head.bias"] = Tensor(np.zeros(1, self.dtype), True)

    def save(self, path, extra_arrays=None, extra_meta=None):
        """Write the parameters, the config and the dtype to one .npz (`checkpoint.save_npz`), atomically.

        extra_arrays (e.g. optimizer moments) must not reuse parameter names; extra_meta keys go beside
        "format", "config" and "dtype" in the metadata (a training checkpoint's state, for instance).
        """
        arrays, extra_arrays, extra_meta = self.state_dict(), dict(extra_arrays or {}), dict(extra_meta or {})
        clash = sorted(set(extra_arrays) & set(arrays)) + sorted(set(extra_meta) & {"format", "config", "dtype"})
        if clash:
            raise ValueError(f"extra arrays or metadata reuse the names {clash}; rename them")
        meta = {"format": FORMAT, "config": dataclasses.asdict(self.cfg), "dtype": self.dtype.name, **extra_meta}
        save_npz(path, {**arrays, **extra_arrays}, meta)

    # ------------------------------------------------------------------------------------------ forward
    def _positions(self, idx, attention_mask, cache):
        """Position ids: t (+ cache length) without a mask; clip(cumsum(mask) - 1, 0) with one, as HF generation."""
        B, T = idx.shape
        past = 0 if cache is None else cache.length
        if past + T > self.cfg.block_size:
            raise ValueError(f"sequence length {past + T} exceeds block_size {self.cfg.block_size}; "
                             f"truncate the input (keep the last {self.cfg.block_size} tokens) or train a "
                             f"model with a larger block_size")
        if attention_mask is None:
            return np.broadcast_to(np.arange(past, past + T), (B, T)), None
        mask = np.asarray(attention_mask)
        if mask.shape != (B, past + T):
            raise ValueError(f"attention_mask shape {mask.shape} must be (batch, past + new tokens) = "
                             f"{(B, past + T)}")
        pos = np.clip(np.cumsum(mask, axis=-1) - 1, 0, None)[:, past:]
        return pos, mask

    def hidden_states(self, idx, attention_mask=None, cache=None):
        """idx int (B, T) -> the final hidden states ln_f(x), Tensor (B, T, C): what the heads read.

        attention_mask (B, T) (with a cache: (B, past + T)), 1 = token, 0 = padding, for left-padded batches.
        cache: a `KVCache` from `generate`; keys and values of these positions are appended to it.
        """
        idx = np.asarray(idx)
        if idx.ndim != 2 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"idx must be a 2-D integer array (batch, time), got shape {idx.shape} dtype {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.cfg.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.cfg.vocab_size}); got min {idx.min()} max {idx.max()}. "
                             "Was the tokenizer trained with a different vocabulary size than the model?")
        pos, key_mask = self._positions(idx, attention_mask, cache)
        P, cfg = self.params, self.cfg
        p_drop = cfg.dropout if self.training else 0.0

        x = F.embedding(P["transformer.wte.weight"], idx) + F.embedding(P["transformer.wpe.weight"], pos)
        x = F.dropout(x, p_drop, self._rng)                                               # (B, T, C)
        for i in range(cfg.n_layer):
            h = f"transformer.h.{i}."
            a = F.layer_norm(x, P[h + "ln_1.weight"], P[h + "ln_1.bias"])
            qkv = F.linear(a, P[h + "attn.c_attn.weight"], P[h + "attn.c_attn.bias"])   # (B, T, 3C)
            a = F.causal_self_attention(qkv, cfg.n_head, key_mask, None if cache is None else cache.layers[i])
            a = F.linear(a, P[h + "attn.c_proj.weight"], P[h + "attn.c_proj.bias"])
            x = x + F.dropout(a, p_drop, self._rng)
            m = F.layer_norm(x, P[h + "ln_2.weight"], P[h + "ln_2.bias"])
            m = F.gelu(F.linear(m, P[h + "mlp.c_fc.weight"], P[h + "mlp.c_fc.bias"]))   # (B, T, 4C)
            m = F.linear(m, P[h + "mlp.c_proj.weight"], P[h + "mlp.c_proj.bias"])
            x = x + F.dropout(m, p_drop, self._rng)
        return F.layer_norm(x, P["transformer.ln_f.weight"], P["transformer.ln_f.bias"])

    def __call__(self, idx, attention_mask=None, cache=None):
        """idx int (B, T) -> logits Tensor (B, T, V) = ln_f(x) wte^T (the tied lm_head)."""
        return F.lm_head(self.hidden_states(idx, attention_mask, cache), self.params["transformer.wte.weight"])

    forward = __call__

    def loss(self, idx, targets):
        """Mean cross-entropy of the logits at idx (B, T) against targets int (B, T), -100 ignored -> scalar Tensor.

        Equals F.cross_entropy(model(idx), targets), value and gradients, without keeping the (B, T, V) logits
        (`functional.lm_head_cross_entropy`): what pretraining and its evaluation call.
        """
        return F.lm_head_cross_entropy(self.hidden_states(idx), self.params["transformer.wte.weight"], targets)

    def logits_and_values(self, idx, attention_mask=None):
        """idx int (B, T) -> (logits Tensor (B, T, V), values Tensor (B, T)): both heads on one trunk (PPO)."""
        if not self.cfg.value_head:
            raise ValueError("logits_and_values needs a value head: call model.add_value_head() first")
        x = self.hidden_states(idx, attention_mask)
        logits = F.lm_head(x, self.params["transformer.wte.weight"])                    # (B, T, V)
        values = F.linear(x, self.params["v_head.weight"], self.params["v_head.bias"])   # (B, T, 1)
        return logits, values.reshape(np.shape(idx))


def load_checkpoint(path, dtype=None):
    """The GPT stored at path by `GPT.save` -> GPT (with its value head, if it was saved with one).

    dtype: None keeps the stored dtype; np.float32 / np.float64 converts. Arrays that are not parameters
    (an optimizer's moments in a training checkpoint) are ignored here; `minigpt_np.resume` reads them.
    """
    arrays, meta = load_npz(path)
    model = GPT(config_of(path, meta), dtype=meta.get("dtype", "float32") if dtype is None else dtype)
    shapes = parameter_shapes(model.cfg)
    missing = sorted(k for k in shapes if k not in arrays)
    misshaped = sorted(k for k in shapes if k in arrays and arrays[k].shape != shapes[k])
    if missing or misshaped:
        raise ValueError(f"{path}: the arrays do not fit the stored config (missing {missing[:4]}, mis-shaped "
                         f"{misshaped[:4]}); the file mixes two models: delete it and re-create it")
    model.load_state_dict({k: arrays[k] for k in shapes})
    return model


def config_of(path, meta):
    """The GPTConfig stored in a GPT file's metadata; ValueError if the file is not a GPT or its config is bad."""
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a GPT checkpoint (its format is {meta.get('format')!r}, "
                         f"expected {FORMAT!r}); pass a gpt_*.npz file written by this project")
    try:
        return GPTConfig(**meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: the stored config is not a valid GPTConfig ({e}); it was written by an "
                         "incompatible version: re-create it") from e
