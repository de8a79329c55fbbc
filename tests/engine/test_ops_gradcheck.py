"""Every op's hand-written backward matches float64 central differences, and each check can fail.

Each `test_<op>_backward_matches_finite_differences` is paired with a negative control: the same gradcheck
against a deliberately wrong backward (a classic bug for that op, monkeypatched in) must raise.
"""
import dataclasses

import numpy as np
import pytest

import minigpt_np as mg
from minigpt_np import functional as F
from minigpt_np import fast, kernels, ops
from minigpt_np import tensor as tensor_module
from minigpt_np.tensor import Tensor, unbroadcast
from gradcheck import gradcheck


def randn(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def assert_gradcheck_fails(fn, inputs, **kwargs):
    with pytest.raises(AssertionError, match="gradcheck FAILED") as info:
        gradcheck(fn, inputs, **kwargs)
    print(info.value)


def break_backward(monkeypatch, transform):
    """Route every backward built by `functional` and `tensor` through transform(grads) -> grads: a wrong backward
    for inline ops (the arithmetic lives in `tensor`, the network's ops in `functional`)."""
    make = tensor_module.make
    for module in (F, tensor_module):
        monkeypatch.setattr(module, "make", lambda data, parents, backward_fn: make(
            data, parents, lambda dy: transform(tuple(backward_fn(dy)))))


# ------------------------------------------------------------------------------------------------ gradcheck itself
def test_gradcheck_reports_worst_input_and_passes_a_correct_gradient():
    report = gradcheck(lambda t: F.mul(t["a"], t["b"]), {"a": randn(3, 4), "b": randn(3, 4, seed=1)})
    print(report)
    assert report.n_checked == 24
    assert report.worst_error < 1e-8 and report.worst_name in ("a", "b")


def test_gradcheck_samples_a_seeded_subset_of_entries():
    inputs = {"x": randn(50, 40)}
    report = gradcheck(lambda t: F.gelu(t["x"]), inputs, max_entries=30)
    assert report.n_checked == 30


# ------------------------------------------------------------------------------------------------ add / mul
ADD_SHAPES = [((2, 3, 4), (4,)), ((2, 3, 4), (2, 1, 4)), ((1, 3, 1), (2, 3, 4)), ((3, 4), (3, 4))]


@pytest.mark.parametrize("shape_a, shape_b", ADD_SHAPES)
def test_add_backward_with_broadcasting_matches_finite_differences(shape_a, shape_b):
    gradcheck(lambda t: F.add(t["a"], t["b"]), {"a": randn(*shape_a), "b": randn(*shape_b, seed=1)})


def unbroadcast_forgetting_stretched_axes(grad, shape):
    """Bug: sums the added leading axes but takes the first slice of stretched size-1 axes instead of summing."""
    while grad.ndim > len(shape):
        grad = grad.sum(axis=0)
    for axis, size in enumerate(shape):
        if size == 1 and grad.shape[axis] != 1:
            grad = grad.take([0], axis=axis)
    return grad


def test_add_gradcheck_catches_a_missing_sum_over_a_broadcast_axis(monkeypatch):
    monkeypatch.setattr(tensor_module, "unbroadcast", unbroadcast_forgetting_stretched_axes)
    assert_gradcheck_fails(lambda t: F.add(t["a"], t["b"]), {"a": randn(2, 3, 4), "b": randn(2, 1, 4, seed=1)})


@pytest.mark.parametrize("shape_a, shape_b", ADD_SHAPES)
def test_mul_backward_with_broadcasting_matches_finite_differences(shape_a, shape_b):
    gradcheck(lambda t: F.mul(t["a"], t["b"]), {"a": randn(*shape_a), "b": randn(*shape_b, seed=1)})


def test_mul_gradcheck_catches_swapped_operand_gradients(monkeypatch):
    break_backward(monkeypatch, lambda grads: grads[::-1])      # da = dy a, db = dy b
    assert_gradcheck_fails(lambda t: F.mul(t["a"], t["b"]), {"a": randn(3, 4), "b": randn(3, 4, seed=1)})


def test_mul_gradcheck_catches_a_wrong_unbroadcast(monkeypatch):
    monkeypatch.setattr(tensor_module, "unbroadcast", unbroadcast_forgetting_stretched_axes)
    assert_gradcheck_fails(lambda t: F.mul(t["a"], t["b"]), {"a": randn(3, 4), "b": randn(3, 1, seed=1)})


def test_unbroadcast_sums_added_and_stretched_axes():
    grad = np.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(unbroadcast(grad, (3, 1)), grad.sum(axis=(0, 2))[:, None])


# ------------------------------------------------------------------------------------------------ sum / reshape
def test_sum_backward_matches_finite_differences():
    gradcheck(lambda t: F.mul(t["x"], t["x"]).sum(), {"x": randn(3, 5)})


def test_sum_gradcheck_catches_a_scaled_gradient(monkeypatch):
    break_backward(monkeypatch, lambda grads: tuple(1.01 * g for g in grads))
    assert_gradcheck_fails(lambda t: t["x"].sum(), {"x": randn(3, 5)})


def test_reshape_backward_matches_finite_differences():
    gradcheck(lambda t: F.mul(t["x"].reshape(6, 4), Tensor(randn(6, 4, seed=3))), {"x": randn(2, 3, 4)})


def test_reshape_gradcheck_catches_gradients_sent_to_the_wrong_entries(monkeypatch):
    break_backward(monkeypatch, lambda grads: tuple(g.reshape(-1)[::-1].reshape(g.shape) for g in grads))
    assert_gradcheck_fails(lambda t: t["x"].reshape(6, 4), {"x": randn(2, 3, 4)})


# ------------------------------------------------------------------------------------------------ embedding
IDS = np.array([[1, 3, 3, 0], [3, 4, 1, 3]])       # repeated ids: their gradients must add up


def test_embedding_backward_with_repeated_ids_matches_finite_differences():
    report = gradcheck(lambda t: F.embedding(t["W"], IDS), {"W": randn(6, 5)})
    assert report.n_checked == 30     # includes row 2 and 5, never looked up: their gradient must be 0


def test_embedding_gradcheck_catches_assignment_instead_of_scatter_add(monkeypatch):
    def embedding_backward_assigning(dout, idx, num_embeddings):
        dweight = np.zeros((num_embeddings, dout.shape[-1]), dtype=dout.dtype)
        dweight[idx.reshape(-1)] = dout.reshape(-1, dout.shape[-1])    # repeated ids: last write wins
        return dweight
    monkeypatch.setattr(ops, "embedding_backward", embedding_backward_assigning)
    assert_gradcheck_fails(lambda t: F.embedding(t["W"], IDS), {"W": randn(6, 5)})


# ------------------------------------------------------------------------------------------------ linear / lm_head
def test_linear_backward_with_bias_matches_finite_differences():
    gradcheck(lambda t: F.linear(t["x"], t["W"], t["b"]),
              {"x": randn(2, 3, 4), "W": randn(4, 5, seed=1), "b": randn(5, seed=2)})


def test_linear_backward_without_bias_matches_finite_differences():
    gradcheck(lambda t: F.linear(t["x"], t["W"]), {"x": randn(2, 3, 4), "W": randn(4, 5, seed=1)})


def test_linear_gradcheck_catches_a_transposed_weight_gradient(monkeypatch):
    linear_backward = ops.linear_backward

    def linear_backward_transposed(dy, x, w, need_dx=True):
        dx, dw, db = linear_backward(dy, x, w, need_dx)
        return dx, dw.T, db                                   # W is square here, so only the values are wrong
    monkeypatch.setattr(ops, "linear_backward", linear_backward_transposed)
    assert_gradcheck_fails(lambda t: F.linear(t["x"], t["W"], t["b"]),
                           {"x": randn(2, 3, 4), "W": randn(4, 4, seed=1), "b": randn(4, seed=2)})


def test_lm_head_backward_matches_finite_differences():
    gradcheck(lambda t: F.lm_head(t["x"], t["E"]), {"x": randn(2, 3, 4), "E": randn(7, 4, seed=1)})


def test_lm_head_gradcheck_catches_a_scaled_embedding_gradient(monkeypatch):
    lm_head_backward = ops.lm_head_backward
    monkeypatch.setattr(ops, "lm_head_backward",
                        lambda dl, x, wte: (lambda dx, dwte: (dx, 1.01 * dwte))(*lm_head_backward(dl, x, wte)))
    assert_gradcheck_fails(lambda t: F.lm_head(t["x"], t["E"]), {"x": randn(2, 3, 4), "E": randn(7, 4, seed=1)})


# ------------------------------------------------------------------------------------------------ layer_norm / gelu
LN_INPUTS = {"x": 2.0 * randn(2, 3, 6) + 0.5, "w": 1.0 + 0.3 * randn(6, seed=1), "b": randn(6, seed=2)}


def test_layer_norm_backward_matches_finite_differences():
    gradcheck(lambda t: F.layer_norm(t["x"], t["w"], t["b"]), LN_INPUTS)


def test_layer_norm_gradcheck_catches_a_dropped_mean_term(monkeypatch):
    def layernorm_backward_without_mean(dy, xhat, rstd, w):
        dxhat = dy * w
        dx = rstd * (dxhat - xhat * np.mean(dxhat * xhat, axis=-1, keepdims=True))   # bug: no - mean(dxhat)
        return dx, np.sum(dy * xhat, axis=(0, 1)), np.sum(dy, axis=(0, 1))
    monkeypatch.setattr(ops, "layernorm_backward", layernorm_backward_without_mean)
    assert_gradcheck_fails(lambda t: F.layer_norm(t["x"], t["w"], t["b"]), LN_INPUTS)


def test_gelu_backward_matches_finite_differences():
    gradcheck(lambda t: F.gelu(t["x"]), {"x": 2.0 * randn(3, 7)})


def test_gelu_gradcheck_catches_a_dropped_tanh_derivative(monkeypatch):
    monkeypatch.setattr(ops, "gelu_backward", lambda dy, x, th: dy * 0.5 * (1.0 + th))
    assert_gradcheck_fails(lambda t: F.gelu(t["x"]), {"x": 2.0 * randn(3, 7)})


# ------------------------------------------------------------------------------------------------ attention
N_HEAD = 2
LEFT_PADDING = np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 0, 1]])   # (B, S) 1 = token, 0 = padding


def attention_fn(key_mask):
    return lambda t: F.causal_self_attention(t["qkv"], N_HEAD, key_mask)


def test_causal_self_attention_backward_matches_finite_differences():
    gradcheck(attention_fn(None), {"qkv": randn(3, 5, 3 * 4)})


def test_causal_self_attention_with_left_padding_backward_matches_finite_differences():
    gradcheck(attention_fn(LEFT_PADDING), {"qkv": randn(3, 5, 3 * 4)})


def test_masked_attention_gives_no_gradient_to_padded_keys():
    qkv = Tensor(randn(3, 5, 12), requires_grad=True)
    y = F.causal_self_attention(qkv, N_HEAD, LEFT_PADDING)
    dy = randn(*y.shape, seed=1) * LEFT_PADDING[:, :, None]      # only real-token outputs matter downstream
    y.backward(dy)
    dk_dv = qkv.grad[..., 4:]
    assert np.abs(dk_dv[LEFT_PADDING == 0]).max() == 0.0


def test_attention_gradcheck_catches_an_untransposed_key_gradient(monkeypatch):
    def attention_backward_untransposed(dy, q, k, v, att, allowed=None):
        scale = 1.0 / np.sqrt(q.shape[-1])
        datt = dy @ v.swapaxes(-1, -2)                                # (T, S), as att
        ds = att * (datt - np.sum(datt * att, axis=-1, keepdims=True)) * scale
        return ds @ k, ds @ q, att.swapaxes(-1, -2) @ dy             # bug: dk = ds q, should be ds^T q
    monkeypatch.setattr(ops, "attention_backward", attention_backward_untransposed)
    assert_gradcheck_fails(attention_fn(None), {"qkv": randn(3, 5, 3 * 4)})


def test_masked_attention_gradcheck_catches_a_missing_softmax_jacobian_term(monkeypatch):
    def attention_backward_no_sum(dy, q, k, v, att, allowed=None):
        scale = 1.0 / np.sqrt(q.shape[-1])
        ds = att * (dy @ v.swapaxes(-1, -2)) * scale                 # bug: forgot - sum_S(datt * att)
        return ds @ k, ds.swapaxes(-1, -2) @ q, att.swapaxes(-1, -2) @ dy
    monkeypatch.setattr(ops, "attention_backward", attention_backward_no_sum)
    assert_gradcheck_fails(attention_fn(LEFT_PADDING), {"qkv": randn(3, 5, 3 * 4)})


def test_masked_attention_gradcheck_catches_gradient_in_query_rows_that_see_no_key(monkeypatch):
    """A padding query with no allowed key has uniform att over constant scores: ds must be 0 there, not att * (...)."""
    attention_backward = ops.attention_backward
    monkeypatch.setattr(ops, "attention_backward",
                        lambda dy, q, k, v, att, allowed=None: attention_backward(dy, q, k, v, att))
    assert_gradcheck_fails(attention_fn(LEFT_PADDING), {"qkv": randn(3, 5, 3 * 4)})


def test_causal_allowed_is_each_querys_row_of_keys():
    """allowed[b, 0, t, j] = (j <= t + S - T) and key_mask[b, j], with queries the last T of S positions."""
    key_mask = np.array([[0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    for T, S, mask in [(4, 4, None), (3, 7, None), (1, 5, None), (3, 7, key_mask), (1, 7, key_mask)]:
        allowed = ops.causal_allowed(T, S, mask)
        expected = np.array([[[[j <= t + S - T and (mask is None or mask[b, j] == 1) for j in range(S)]
                               for t in range(T)]] for b in range(1 if mask is None else len(mask))])
        assert allowed.dtype == bool and np.array_equal(allowed, expected)


@pytest.mark.parametrize("k", [ops, fast.ops], ids=["reference", "fast"])
def test_attention_with_a_nan_query_gives_nan_there_and_nowhere_else(k):
    """A NaN score makes its query's softmax NaN (the fast kernels' shift, np.fmax, skips NaN; the exp does not)."""
    q, kk, v = randn(1, 2, 4, 3), randn(1, 2, 4, 3, seed=1), randn(1, 2, 4, 3, seed=2)
    q[0, 1, 2, 0] = np.nan
    y, att = k.attention_forward(q, kk, v, k.causal_allowed(4, 4))
    att = att if k is ops else att.swapaxes(-1, -2)                     # the fast kernels keep it key-major
    assert np.isnan(y[0, 1, 2]).all() and np.isnan(att[0, 1, 2, :]).all()
    y[0, 1, 2] = 0
    assert np.isfinite(y).all()


# ------------------------------------------------------------------------------------------------ dropout
P_DROP = 0.3


def dropout_fn(t):
    # a fresh generator with the same seed on every call: the same mask for the analytic and every numeric pass
    return F.dropout(t["x"], P_DROP, np.random.default_rng(7))


def test_dropout_backward_matches_finite_differences():
    x = randn(4, 6)
    report = gradcheck(dropout_fn, {"x": x})
    y = dropout_fn({"x": Tensor(x)}).data
    dropped = y == 0
    assert 0 < dropped.sum() < x.size, "the test needs a mask that both keeps and drops"
    np.testing.assert_allclose(y[~dropped], x[~dropped] / (1 - P_DROP))
    assert report.worst_error < 1e-8


def test_dropout_gradcheck_catches_a_missing_rescale(monkeypatch):
    break_backward(monkeypatch, lambda grads: tuple(g * (1 - P_DROP) for g in grads))
    assert_gradcheck_fails(dropout_fn, {"x": randn(4, 6)})


def test_dropout_with_p_zero_is_the_identity():
    x = Tensor(randn(3, 4))
    assert F.dropout(x, 0.0, np.random.default_rng(0)) is x


# ------------------------------------------------------------------------------------------------ cross_entropy
CE_TARGETS = np.array([[2, -100, 0, 6], [-100, -100, 3, 3]])


def test_cross_entropy_with_ignored_rows_backward_matches_finite_differences():
    gradcheck(lambda t: F.cross_entropy(t["logits"], CE_TARGETS), {"logits": 3.0 * randn(2, 4, 7)})


def test_cross_entropy_value_is_the_mean_over_valid_targets():
    logits = 3.0 * randn(2, 4, 7)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    valid = CE_TARGETS != -100
    expected = -np.mean(logp[valid, CE_TARGETS[valid]])
    assert abs(float(F.cross_entropy(Tensor(logits), CE_TARGETS).data) - expected) < 1e-12


def cross_entropy_backward_all_rows(dloss, probs, targets, ignore_index=-100):
    valid = targets != ignore_index
    dlogits = probs * (dloss / len(targets))                 # bug: the mean counts ignored rows too
    dlogits[~valid] = 0
    dlogits[np.nonzero(valid)[0], targets[valid]] -= dloss / len(targets)
    return dlogits


def test_cross_entropy_gradcheck_catches_dividing_by_all_rows(monkeypatch):
    monkeypatch.setattr(ops, "cross_entropy_backward", cross_entropy_backward_all_rows)
    assert_gradcheck_fails(lambda t: F.cross_entropy(t["logits"], CE_TARGETS), {"logits": 3.0 * randn(2, 4, 7)})


# ---------------------------------------------------------------------------------------- lm_head + cross_entropy
LM_CE_INPUTS = {"x": randn(2, 4, 5), "E": randn(7, 5, seed=1)}


def test_lm_head_cross_entropy_backward_matches_finite_differences():
    gradcheck(lambda t: F.lm_head_cross_entropy(t["x"], t["E"], CE_TARGETS), LM_CE_INPUTS)


def test_lm_head_cross_entropy_gradcheck_catches_dividing_by_all_rows(monkeypatch):
    monkeypatch.setattr(ops, "cross_entropy_backward", cross_entropy_backward_all_rows)
    assert_gradcheck_fails(lambda t: F.lm_head_cross_entropy(t["x"], t["E"], CE_TARGETS), LM_CE_INPUTS)


@pytest.mark.parametrize("name", kernels.CHOICES)
def test_lm_head_cross_entropy_backward_runs_once(name):
    """As in PyTorch, on both kernels (the fast ones write dlogits over the probabilities the forward kept)."""
    x, E = (Tensor(a.copy(), requires_grad=True) for a in LM_CE_INPUTS.values())
    with kernels.using(name):
        loss = F.lm_head_cross_entropy(x, E, CE_TARGETS)
        loss.backward()
        with pytest.raises(RuntimeError, match="backward ran twice"):
            loss.backward()


# ------------------------------------------------------------------------------------------------ the whole GPT
TINY = mg.GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)


def gpt_loss_fn(model, idx, targets, mask=None, value_weights=None):
    """Cross-entropy (plus sum(values * value_weights) when given) of `model` with its parameters replaced by t."""
    def fn(t):
        model.params.update(t)
        if value_weights is None:
            return F.cross_entropy(model(idx, attention_mask=mask), targets)
        logits, values = model.logits_and_values(idx, attention_mask=mask)
        return F.cross_entropy(logits, targets) + F.mul(values, Tensor(value_weights)).sum()
    return fn


def random_gpt(cfg, seed=0):
    """A float64 GPT whose weights are O(0.3), not GPT-2's 0.02, so every nonlinearity is exercised."""
    model = mg.GPT(cfg, dtype=np.float64, seed=seed)
    rng = np.random.default_rng(seed + 100)
    model.load_state_dict({name: (1.0 if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")) else 0.0)
                           + 0.3 * rng.standard_normal(p.shape) for name, p in model.named_parameters()})
    return model


@pytest.mark.parametrize("value_head, padded", [(False, False), (True, False), (False, True), (True, True)])
def test_tiny_gpt_loss_gradient_matches_finite_differences_for_every_parameter(value_head, padded):
    cfg = dataclasses.replace(TINY, value_head=value_head)
    model = random_gpt(cfg)
    rng = np.random.default_rng(1)
    B, T = 2, 6
    idx = rng.integers(0, cfg.vocab_size, (B, T))
    targets = rng.integers(0, cfg.vocab_size, (B, T))
    mask = None
    if padded:
        mask = np.array([[1] * T, [0, 0, 1, 1, 1, 1]])
        targets = np.where(mask == 1, targets, -100)
    value_weights = rng.standard_normal((B, T)) if value_head else None
    inputs = {name: p.data.copy() for name, p in model.named_parameters()}
    report = gradcheck(gpt_loss_fn(model, idx, targets, mask, value_weights), inputs, max_entries=12, rtol=1e-6)
    print(report)
    assert report.n_checked == sum(min(12, x.size) for x in inputs.values())    # every parameter was checked


def test_tiny_gpt_gradcheck_catches_a_wrong_layer_norm_backward(monkeypatch):
    model = random_gpt(TINY)
    rng = np.random.default_rng(1)
    idx, targets = rng.integers(0, 11, (2, 6)), rng.integers(0, 11, (2, 6))
    layernorm_backward = ops.layernorm_backward
    monkeypatch.setattr(ops, "layernorm_backward",
                        lambda dy, xhat, rstd, w: (lambda dx, dw, db: (dx, dw, 1.01 * db))(
                            *layernorm_backward(dy, xhat, rstd, w)))
    inputs = {name: p.data.copy() for name, p in model.named_parameters() if name.endswith("ln_1.bias")}
    assert_gradcheck_fails(gpt_loss_fn(model, idx, targets), inputs)
