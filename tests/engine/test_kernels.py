"""The fast kernels (minigpt_np.fast) compute what the reference kernels (minigpt_np.ops, functional, optim,
pretrain) compute: op by op, every forward/backward pair given the same inputs, and on a whole GPT training step
(the loss, every gradient and the AdamW update), through the one switch, `minigpt_np.kernels`.

Agreement is per tensor, ||fast - reference|| / ||reference|| (Frobenius norms), and a failure names the worst
tensor. At float64 the bound is 1e-12. At float32 it is FLOAT32_OP for one op and FLOAT32_STEP for a whole pass:

- float32 rounds each result to a relative u = 2^-24 = 6e-8. The two kernels compute the same expressions in other
  orders (einsum row sums against mean, the scale on q against on the scores, a sorted reduceat against add.at,
  in-place passes against temporaries), so an op's outputs differ by a rounding or two per element where they
  differ at all: measured up to 9.5e-8, 1.6 u, in relative norm. FLOAT32_OP = 1e-6, 16 u, is ten times that, and
  ten times below the negative controls' 1e-5; a real mistake (a dropped term, a wrong scale, a missing 1/n) is
  larger by orders of magnitude.
- a pass through the GPT chains some 30 ops per layer forward and back, and a difference made early is carried,
  and amplified where the softmax or LayerNorm is ill-conditioned, into every later tensor: measured up to 8.8e-7
  (AdamW's second moment of a bias, over ten batches; the gradients themselves up to 5.4e-7). FLOAT32_STEP = 1e-5
  leaves a margin of ten over that, and stays a thousand times below the 1e-2 relative change that the step's
  negative control (one op's backward off by 1e-2) makes.

Each comparison has a negative control: the same check against a fast kernel whose output is off by ten times the
tolerance (the step: by 1e-2) must fail, and name the worst tensor.
"""
import dataclasses
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import minigpt_np as mg
from minigpt_np import fast, functional, kernels, ops, optim, pretrain
from minigpt_np.tensor import Tensor

FLOAT64 = 1e-12
FLOAT32_OP = 1e-6
FLOAT32_STEP = 1e-5
TOLERANCE = {np.float64: (FLOAT64, FLOAT64), np.float32: (FLOAT32_OP, FLOAT32_STEP)}   # dtype -> (op, step)


def relative_errors(fast_results, reference_results):
    """{name: ||a - b|| / ||b||} over two dicts of arrays with the same names and shapes (||b|| = 0: ||a - b||)."""
    errors = {}
    for name, b in reference_results.items():
        a = np.asarray(fast_results[name], dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        assert a.shape == b.shape, f"{name}: fast shape {a.shape}, reference shape {b.shape}"
        scale = np.linalg.norm(b)
        errors[name] = float(np.linalg.norm(a - b) / (scale if scale > 0 else 1.0))
    return errors


def assert_agree(fast_results, reference_results, tolerance, what):
    """Fail, naming the worst tensor and listing every one, if some tensor's relative error exceeds tolerance."""
    errors = relative_errors(fast_results, reference_results)
    worst = max(errors, key=errors.get)
    table = "\n".join(f"  {name:<48s} {error:.3e}" for name, error in errors.items())
    print(f"{what}: worst {worst} {errors[worst]:.3e} (tolerance {tolerance:g})")
    assert errors[worst] <= tolerance, (f"{what}: the kernels disagree; worst tensor {worst}: relative error "
                                        f"{errors[worst]:.3e} > {tolerance:g}\n{table}")
    return errors


def perturbed(module, name, factor, output=0):
    """A stand-in for the module `module` whose function `name` returns its output number `output` times factor:
    a fast kernel that is wrong by a known relative amount."""
    real = getattr(module, name)

    def wrong(*args, **kwargs):
        results = real(*args, **kwargs)
        if not isinstance(results, tuple):
            return results * factor
        return tuple(r * factor if i == output else r for i, r in enumerate(results))
    return types.SimpleNamespace(**{**{k: getattr(module, k) for k in dir(module) if not k.startswith("__")},
                                    name: wrong})


def randn(rng, *shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


# -------------------------------------------------------------------------------------------------- op by op
# Each case: (rng, dtype, kernels) -> {name: array}, the op's forward and its backward on the same inputs. The
# backward's saved inputs come from the reference forward (laid out as each kernel keeps them), so that each function
# is compared on exactly the same numbers.
B, T, C, H, V = 3, 7, 12, 2, 11
LEFT_PADDING = np.array([[1] * T, [0, 0] + [1] * (T - 2), [0] * (T - 1) + [1]])
CACHED_PADDING = (np.arange(T + 3) >= np.array([[0], [2], [5]])).astype(np.int64)   # (B, S = T + 3) for a KV cache


def linear_case(rng, dtype, k):
    x, w, b, dy = randn(rng, B, T, C, dtype=dtype), randn(rng, C, 3 * C, dtype=dtype), randn(rng, 3 * C, dtype=dtype), \
        randn(rng, B, T, 3 * C, dtype=dtype)
    dx, dw, db = k.linear_backward(dy, x, w)
    return {"y": k.linear_forward(x, w, b), "y without bias": k.linear_forward(x, w), "dx": dx, "dW": dw, "db": db}


def lm_head_case(rng, dtype, k):
    x, wte, dlogits = randn(rng, B, T, C, dtype=dtype), randn(rng, V, C, dtype=dtype), randn(rng, B, T, V, dtype=dtype)
    dx, dwte = k.lm_head_backward(dlogits, x, wte)
    return {"logits": k.lm_head_forward(x, wte), "dx": dx, "dE": dwte}


def embedding_case(rng, dtype, k):
    weight, dout = randn(rng, V, C, dtype=dtype), randn(rng, B, T, C, dtype=dtype)
    idx = rng.integers(0, 4, (B, T))                          # 4 of 11 ids, each repeated: their gradients add up
    return {"out": k.embedding_forward(weight, idx), "dW": k.embedding_backward(dout, idx, V)}


def layernorm_case(rng, dtype, k):
    x, w, b, dy = 2 * randn(rng, B, T, C, dtype=dtype) + 1, randn(rng, C, dtype=dtype), randn(rng, C, dtype=dtype), \
        randn(rng, B, T, C, dtype=dtype)
    y, xhat, rstd = k.layernorm_forward(x, w, b)
    _, ref_xhat, ref_rstd = ops.layernorm_forward(x, w, b)
    dx, dw, db = k.layernorm_backward(dy, ref_xhat, ref_rstd, w)
    return {"y": y, "xhat": xhat, "rstd": rstd, "dx": dx, "dw": dw, "db": db}


def gelu_case(rng, dtype, k):
    x, dy = 2 * randn(rng, B, T, 4 * C, dtype=dtype), randn(rng, B, T, 4 * C, dtype=dtype)
    y, th = k.gelu_forward(x)
    return {"y": y, "tanh u": th, "dx": k.gelu_backward(dy, x, ops.gelu_forward(x)[1])}


def query_major(k, a):
    """An attention-shaped array (B, H, ., .) as the reference lays it out: the fast kernels keep it key-major."""
    return a if k is ops else np.swapaxes(a, -1, -2)


def attention_case(key_mask, S=T):
    """Attention on queries that are the last T of S positions (S > T: a KV cache), with a padding mask or not."""
    def case(rng, dtype, k):
        q, dy = randn(rng, B, H, T, C // H, dtype=dtype), randn(rng, B, H, T, C // H, dtype=dtype)
        kk, v = randn(rng, B, H, S, C // H, dtype=dtype), randn(rng, B, H, S, C // H, dtype=dtype)
        mask = None if key_mask is None else key_mask[:, -S:]
        allowed = k.causal_allowed(T, S, mask)
        y, att = k.attention_forward(q, kk, v, allowed)
        _, ref_att = ops.attention_forward(q, kk, v, ops.causal_allowed(T, S, mask))
        dq, dk, dv = k.attention_backward(dy, q, kk, v, np.ascontiguousarray(query_major(k, ref_att)),
                                          None if mask is None else allowed)
        return {"allowed": query_major(k, allowed), "y": y, "att": query_major(k, att), "dq": dq, "dk": dk, "dv": dv}
    return case


def cross_entropy_case(rng, dtype, k):
    logits, dloss = 3 * randn(rng, B * T, V, dtype=dtype), np.asarray(0.7, dtype=dtype)
    targets = np.where(rng.random(B * T) < 0.3, -100, rng.integers(0, V, B * T))
    loss, probs = k.cross_entropy_forward(logits, targets)
    _, ref_probs = ops.cross_entropy_forward(logits, targets)
    return {"loss": loss, "probs": probs, "dlogits": k.cross_entropy_backward(dloss, ref_probs.copy(), targets)}


OP_CASES = {"linear": (linear_case, "linear_forward"), "lm_head": (lm_head_case, "lm_head_forward"),
            "embedding": (embedding_case, "embedding_backward"), "layernorm": (layernorm_case, "layernorm_backward"),
            "gelu": (gelu_case, "gelu_backward"), "attention": (attention_case(None), "attention_forward"),
            "attention, left-padded": (attention_case(LEFT_PADDING), "attention_backward"),
            "attention over a KV cache": (attention_case(CACHED_PADDING, S=T + 3), "attention_forward"),
            "cross-entropy": (cross_entropy_case, "cross_entropy_backward")}
DTYPES = [np.float64, np.float32]


def op_results(case, dtype, k):
    return case(np.random.default_rng(0), dtype, k)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("op", OP_CASES)
def test_every_fast_op_equals_the_reference_forward_and_backward(op, dtype):
    case, _ = OP_CASES[op]
    assert_agree(op_results(case, dtype, fast.ops), op_results(case, dtype, ops), TOLERANCE[dtype][0],
                 f"{op}, {np.dtype(dtype).name}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("op", OP_CASES)
def test_each_op_comparison_fails_for_a_fast_kernel_off_by_ten_times_the_tolerance(op, dtype):
    """Negative control: one of the op's fast functions returns its first output times 1 + 10 tol."""
    case, function = OP_CASES[op]
    tolerance = TOLERANCE[dtype][0]
    wrong = perturbed(fast.ops, function, 1 + 10 * tolerance)
    with pytest.raises(AssertionError, match="the kernels disagree; worst tensor") as failure:
        assert_agree(op_results(case, dtype, wrong), op_results(case, dtype, ops), tolerance, op)
    print(str(failure.value).splitlines()[0])


# ------------------------------------------------------------------------------------ the fast functional ops
def functional_results(dtype, module, which):
    """The output and the input gradients of one functional op (through the Tensor graph) -> {name: array}."""
    rng = np.random.default_rng(1)
    if which == "causal_self_attention":
        qkv = Tensor(randn(rng, B, T, 3 * C, dtype=dtype), requires_grad=True)
        y = module.causal_self_attention(qkv, H, LEFT_PADDING)
        y.backward(randn(rng, *y.shape, dtype=dtype))
        return {"y": y.data, "dqkv": qkv.grad}
    x, wte = (Tensor(a, requires_grad=True) for a in (randn(rng, B, T, C, dtype=dtype), randn(rng, V, C, dtype=dtype)))
    targets = np.where(rng.random((B, T)) < 0.3, -100, rng.integers(0, V, (B, T)))
    loss = module.lm_head_cross_entropy(x, wte, targets)
    loss.backward()
    return {"loss": loss.data, "dx": x.grad, "dE": wte.grad}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("which", ["causal_self_attention", "lm_head_cross_entropy"])
def test_the_fast_functional_ops_equal_the_reference(which, dtype):
    """Attention written into head slices, and the fused lm_head + cross-entropy, against the reference's."""
    reference = functional_results(dtype, functional, which)
    assert_agree(functional_results(dtype, fast.functional, which), reference, TOLERANCE[dtype][0], which)
    wrong = perturbed(fast.functional, which, 1 + 10 * TOLERANCE[dtype][0])    # negative control: its output
    with pytest.raises(AssertionError, match="worst tensor"):
        assert_agree(functional_results(dtype, wrong, which), reference, TOLERANCE[dtype][0], which)


def adamw_results(update, dtype):
    """Three updates of a (5, 4) parameter by `update` -> {name: array}: the parameter and the moments."""
    rng = np.random.default_rng(2)
    p, m, v = randn(rng, 5, 4, dtype=dtype), np.zeros((5, 4), dtype), np.zeros((5, 4), dtype)
    for t in (1, 2, 3):
        update(p, randn(rng, 5, 4, dtype=dtype), m, v, t, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    return {"p": p, "m": m, "v": v}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_the_fast_adamw_update_equals_the_reference(dtype):
    reference = adamw_results(optim.adamw_update, dtype)
    assert_agree(adamw_results(fast.optim.adamw_update, dtype), reference, TOLERANCE[dtype][0], "AdamW")
    with pytest.raises(AssertionError, match="worst tensor v"):                # negative control: a wrong v
        assert_agree(adamw_results(optim.adamw_update, dtype) | {"v": reference["v"] * (1 + 10 * TOLERANCE[dtype][0])},
                     reference, TOLERANCE[dtype][0], "AdamW")


# -------------------------------------------------------------------------------------------- a whole step
STEP_CFG = mg.GPTConfig(vocab_size=37, block_size=16, n_layer=2, n_head=2, n_embd=16)


def training_step(name, dtype, windows, wrong=None, targets=None):
    """One pretraining update on `name` kernels: the loss and every gradient (pretrain.loss_and_gradients, two
    micro-batches), then a global-norm clip and AdamW -> {name: array}: the loss, the gradients, AdamW's moments
    and, at float64, the parameters after the update (see the test). wrong: (fast module, its function's name) to
    perturb by 1e-2. targets: as loss_and_gradients takes them (fine-tuning's, tests/engine/test_sft.py)."""
    with kernels.using(name):
        if wrong is not None:          # undone as the block ends, with the rest of the switch
            mg.functional.ops = perturbed(*wrong, 1.01)
        model = mg.GPT(STEP_CFG, dtype=dtype, seed=0)
        optimizer = mg.AdamW(model.named_parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
        loss = pretrain.loss_and_gradients(model, windows, targets)
        results = {"loss": np.asarray(loss), **{f"d {n}": p.grad.copy() for n, p in model.named_parameters()}}
        mg.clip_grad_norm(model.parameters(), 1.0)
        optimizer.step()
        if dtype == np.float64:
            results.update({f"{n} after the update": p.data for n, p in model.named_parameters()})
        results.update({f"m {n}": m for (n, _), m in zip(optimizer.named_params, optimizer.m)})
        results.update({f"v {n}": v for (n, _), v in zip(optimizer.named_params, optimizer.v)})
    return results


def windows(batch=5, seed=3):
    return np.random.default_rng(seed).integers(0, STEP_CFG.vocab_size, (batch, STEP_CFG.block_size + 1))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_a_whole_training_step_on_the_fast_kernels_equals_the_reference(dtype):
    """Loss, every parameter's gradient, and AdamW's moments after clipping and its update: 5 windows, split 3 + 2
    into micro-batches (on two cores with the fast kernels). At float64 the parameters after the update too. At
    float32 those are left out: a gradient that is zero in exact arithmetic (the key bias's, since the softmax
    ignores a constant added to all of a query's scores) is rounding noise in both engines, about 1e-12 here, and
    AdamW's first update divides it by |g| + eps, eps = 1e-8, so such entries move by noise of the size
    lr |g| / eps: a relative difference of 1e-4 in that bias after the update, however close the gradients. The
    moments the update is made from are compared instead, and the update itself op by op (above)."""
    w = windows()
    assert_agree(training_step("fast", dtype, w), training_step("reference", dtype, w), TOLERANCE[dtype][1],
                 f"training step, {np.dtype(dtype).name}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_the_step_comparison_fails_when_one_fast_backward_is_off(dtype):
    """Negative control: the fast GELU backward off by 1e-2; the step's comparison fails, naming a gradient."""
    w = windows()
    with pytest.raises(AssertionError, match="the kernels disagree; worst tensor") as failure:
        assert_agree(training_step("fast", dtype, w, (fast.ops, "gelu_backward")),
                     training_step("reference", dtype, w), TOLERANCE[dtype][1], "training step")
    print(str(failure.value).splitlines()[0])


def policy_pass(name, dtype):
    """A PPO policy's pass on left-padded rows: logits and values from one trunk, and the backward of a weighted sum
    of both (the trainer's two roots) -> {name: array}."""
    cfg = dataclasses.replace(STEP_CFG, value_head=True)
    rng = np.random.default_rng(4)
    idx, mask = rng.integers(0, cfg.vocab_size, LEFT_PADDING.shape), LEFT_PADDING
    with kernels.using(name):
        model = mg.GPT(cfg, dtype=dtype, seed=0)
        logits, values = model.logits_and_values(idx, attention_mask=mask)
        dlogits, dvalues = randn(rng, *logits.shape, dtype=dtype) * mask[..., None], randn(rng, *values.shape,
                                                                                           dtype=dtype) * mask
        mg.tensor.backward([logits, values], [dlogits, dvalues])
        real = mask == 1
        return {"logits": logits.data[real], "values": values.data[real],
                **{f"d {n}": p.grad for n, p in model.named_parameters()}}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_a_padded_policy_pass_on_the_fast_kernels_equals_the_reference(dtype):
    """Logits and values at real tokens, and every gradient, through left padding and the value head."""
    assert_agree(policy_pass("fast", dtype), policy_pass("reference", dtype), TOLERANCE[dtype][1],
                 f"policy pass, {np.dtype(dtype).name}")


# -------------------------------------------------------------------------------------------------- the switch
def test_the_switch_reaches_every_kernel_and_switches_back():
    assert kernels.in_use() == "reference" and mg.functional.ops is ops
    with kernels.using("fast"):
        assert kernels.in_use() == "fast"
        assert mg.functional.ops is fast.ops and pretrain.loss_and_gradients is fast.pretrain.loss_and_gradients
        assert optim.adamw_update is fast.optim.adamw_update
        assert mg.functional.lm_head_cross_entropy is fast.functional.lm_head_cross_entropy
    assert kernels.in_use() == "reference"
    assert all(getattr(module, name) is value for (module, name), value in kernels.REFERENCE.items())


def test_an_unknown_kernel_name_is_refused_in_one_line_naming_the_choices():
    with pytest.raises(ValueError) as refusal:
        kernels.use("quick")
    assert str(refusal.value) == "unknown kernels 'quick'; choose reference or fast"
    assert kernels.in_use() == "reference"


ONLY_NUMPY = """
import sys
sys.modules["threadpoolctl"] = None                 # importing it now fails, as where it is not installed
import numpy as np
import minigpt_np as mg
model = mg.GPT(mg.GPTConfig(vocab_size=17, block_size=8, n_layer=1, n_head=2, n_embd=8), seed=0)
windows = np.random.default_rng(0).integers(0, 17, (4, 9))
mg.pretrain.train_step(model, mg.AdamW(model.named_parameters()), windows, 1e-3, 1.0)
mg.generate(model, windows[:, :2], 3, seed=0)
print(sorted(m for m in sys.modules if m.startswith("minigpt_np.fast")))
try:
    mg.kernels.use("fast")
except ImportError:
    print("the fast kernels need threadpoolctl", mg.kernels.in_use())
"""


def test_the_reference_engine_needs_only_numpy_and_the_fast_kernels_threadpoolctl():
    """In a fresh interpreter where threadpoolctl cannot be imported: `import minigpt_np`, a training step and
    generation run on the reference kernels without loading minigpt_np.fast; the switch to it fails (the control)."""
    ran = subprocess.run([sys.executable, "-c", ONLY_NUMPY], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == ["[]", "the fast kernels need threadpoolctl reference"]
