"""The GPT model: Hugging Face names, determinism, training steps that lower the loss, the value head, and
ValueErrors that say what to fix."""
import dataclasses

import numpy as np
import pytest

import minigpt_np as mg
import minigpt_np.fast  # noqa: F401 - its functional's make is recorded too
from minigpt_np import functional as F
from minigpt_np.optim import AdamW

CFG = mg.GPTConfig(vocab_size=29, block_size=12, n_layer=2, n_head=2, n_embd=16)
B, T = 4, 10


def batch(seed=0, cfg=CFG):
    """A fixed next-token batch: idx (B, T) and targets = idx shifted left by one."""
    tokens = np.random.default_rng(seed).integers(0, cfg.vocab_size, (B, T + 1))
    return tokens[:, :-1], tokens[:, 1:]


# -------------------------------------------------------------------------------------------------- structure
def test_parameter_names_and_shapes_are_hugging_face_gpt2():
    model = mg.GPT(CFG)
    shapes = {name: p.data.shape for name, p in model.named_parameters()}
    C, V = CFG.n_embd, CFG.vocab_size
    assert shapes["transformer.wte.weight"] == (V, C)
    assert shapes["transformer.wpe.weight"] == (CFG.block_size, C)
    assert shapes["transformer.h.1.attn.c_attn.weight"] == (C, 3 * C)       # Conv1D layout: (in, out)
    assert shapes["transformer.h.1.mlp.c_fc.weight"] == (C, 4 * C)
    assert shapes["transformer.h.1.mlp.c_proj.weight"] == (4 * C, C)
    assert shapes["transformer.ln_f.bias"] == (C,)
    assert "lm_head.weight" not in shapes                                     # tied to wte
    per_block = 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + 2 * C + (C * 4 * C + 4 * C) + (4 * C * C + C)
    assert model.num_parameters() == V * C + CFG.block_size * C + CFG.n_layer * per_block + 2 * C
    assert all(p.data.dtype == np.float32 for p in model.parameters())


def test_initialisation_is_gpt2s():
    model = mg.GPT(mg.GPTConfig(vocab_size=500, block_size=64, n_layer=4, n_head=2, n_embd=64), seed=0)
    P = model.params
    assert abs(P["transformer.wte.weight"].data.std() - 0.02) < 1e-3
    assert abs(P["transformer.h.0.mlp.c_proj.weight"].data.std() - 0.02 / np.sqrt(2 * 4)) < 5e-4
    assert np.all(P["transformer.h.0.ln_1.weight"].data == 1) and np.all(P["transformer.h.0.attn.c_attn.bias"].data == 0)


# -------------------------------------------------------------------------------------------------- determinism
def test_same_seed_gives_identical_weights_and_samples():
    a, b, c = mg.GPT(CFG, seed=7), mg.GPT(CFG, seed=7), mg.GPT(CFG, seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)
    assert not np.array_equal(sa["transformer.wte.weight"], sc["transformer.wte.weight"])
    idx, _ = batch()
    np.testing.assert_array_equal(mg.generate(a, idx[:, :4], 6, seed=1), mg.generate(b, idx[:, :4], 6, seed=1))


def test_forward_is_deterministic_and_eval_mode_switches_dropout_off():
    idx, _ = batch()
    plain = mg.GPT(CFG, dtype=np.float64, seed=0)
    dropped = mg.GPT(dataclasses.replace(CFG, dropout=0.2), dtype=np.float64, seed=0)
    dropped.load_state_dict(plain.state_dict())
    np.testing.assert_array_equal(plain(idx).data, plain(idx).data)
    assert not np.allclose(dropped(idx).data, plain(idx).data), "dropout must act while training"
    dropped.training = False
    np.testing.assert_array_equal(dropped(idx).data, plain(idx).data)


# -------------------------------------------------------------------------------------------------- training
def loss_of(model, idx, targets):
    return float(F.cross_entropy(model(idx), targets).data)


def test_sgd_step_lowers_the_loss_by_lr_times_squared_gradient_norm():
    """First order: L(p - lr g) = L(p) - lr |g|^2 + O(lr^2). A sign or scale error in any backward breaks this."""
    model = mg.GPT(CFG, dtype=np.float64, seed=0)
    idx, targets = batch()
    loss = F.cross_entropy(model(idx), targets)
    model.zero_grad()
    loss.backward()
    lr = 1e-3
    gnorm2 = sum(float(np.sum(p.grad ** 2)) for p in model.parameters())
    for p in model.parameters():
        p.data -= lr * p.grad
    drop = float(loss.data) - loss_of(model, idx, targets)
    print(f"loss drop {drop:.6e}, predicted lr*|g|^2 {lr * gnorm2:.6e}")
    assert drop > 0 and abs(drop - lr * gnorm2) < 0.05 * lr * gnorm2


def test_adamw_steps_lower_the_loss_on_a_fixed_batch_and_move_every_weight():
    model = mg.GPT(CFG, seed=0)
    idx, targets = batch()
    before = model.state_dict()
    opt = AdamW(model.named_parameters(), lr=1e-2, weight_decay=0.1)
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(model(idx), targets)
        losses.append(float(loss.data))
        opt.zero_grad()
        loss.backward()
        opt.step()
    losses.append(loss_of(model, idx, targets))
    print("losses", np.round(losses, 4))
    assert losses[1] < losses[0] and losses[-1] < losses[0] - 0.2
    after = model.state_dict()
    unmoved = [k for k in before if np.array_equal(before[k], after[k])]
    # wpe rows past T get no gradient, but the embedding matrix as a whole must move
    assert not unmoved, f"parameters the optimizer did not change: {unmoved}"


@pytest.mark.parametrize("kernels", mg.kernels.CHOICES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_model_loss_equals_cross_entropy_of_the_logits_value_and_every_gradient(dtype, kernels):
    """`model.loss` (lm_head and cross-entropy, fused by the fast kernels; what pretraining calls) gives the very
    same numbers."""
    idx, targets = batch()
    targets = np.where(np.arange(T) < 2, -100, targets)                   # ignored positions too
    results = []
    for loss_fn in (lambda m: m.loss(idx, targets), lambda m: F.cross_entropy(m(idx), targets)):
        model = mg.GPT(CFG, dtype=dtype, seed=0)
        with mg.kernels.using(kernels):
            loss = loss_fn(model)
            loss.backward()
        results.append((loss.data, {k: p.grad for k, p in model.named_parameters()}))
    (fused, fused_grads), (composed, composed_grads) = results
    assert fused.dtype == dtype and fused == composed
    for name in fused_grads:
        np.testing.assert_array_equal(fused_grads[name], composed_grads[name], err_msg=name)


@pytest.mark.parametrize("kernels", mg.kernels.CHOICES)
def test_a_float32_training_step_never_promotes_to_float64(monkeypatch, kernels):
    """Every activation and every gradient of a float32 step, padded or not, is float32, on both kernels: a float64
    that escaped into one (a NumPy float64 scalar in an expression that allocates, say) would double the memory
    traffic of every op after it, silently."""
    seen = []
    make = mg.tensor.make

    def recording_make(data, parents, backward_fn):
        def backward(dy):
            grads = backward_fn(dy)
            seen.extend(("gradient", backward_fn.__qualname__, g.dtype) for g in grads if g is not None)
            return grads
        seen.append(("output", backward_fn.__qualname__, np.asarray(data).dtype))
        return make(data, parents, backward)
    for module in (mg.tensor, F, mg.fast.functional):
        monkeypatch.setattr(module, "make", recording_make)
    model = mg.GPT(dataclasses.replace(CFG, value_head=True), seed=0)
    idx, targets = batch()
    mask = np.ones((B, T), dtype=np.int64)
    mask[0, :2] = 0
    with mg.kernels.using(kernels):
        logits, values = model.logits_and_values(idx, attention_mask=mask)
        loss = F.cross_entropy(logits, targets) + model.loss(idx, targets) + values.sum()
        loss.backward()
        AdamW(model.named_parameters(), lr=1e-3).step()
    promoted = sorted({(kind, name) for kind, name, dtype in seen if dtype != np.float32})
    assert len(seen) > 100 and not promoted, promoted
    assert all(p.data.dtype == np.float32 and p.grad.dtype == np.float32 for p in model.parameters())


def test_gradients_accumulate_until_zero_grad():
    model = mg.GPT(CFG, dtype=np.float64, seed=0)
    idx, targets = batch()
    F.cross_entropy(model(idx), targets).backward()
    once = {k: p.grad.copy() for k, p in model.named_parameters()}
    F.cross_entropy(model(idx), targets).backward()
    assert all(np.allclose(p.grad, 2 * once[k], rtol=1e-12, atol=0) for k, p in model.named_parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_no_grad_builds_no_graph():
    model = mg.GPT(CFG, seed=0)
    idx, _ = batch()
    with mg.no_grad():
        logits = model(idx)
    assert not logits.requires_grad and logits._backward is None


# -------------------------------------------------------------------------------------------------- value head
def test_add_value_head_gives_one_value_per_position_and_leaves_logits_alone():
    model = mg.GPT(CFG, seed=0)
    idx, _ = batch()
    logits = model(idx).data
    with pytest.raises(ValueError, match="add_value_head"):
        model.logits_and_values(idx)
    model.add_value_head(seed=0)
    new_logits, values = model.logits_and_values(idx)
    assert values.shape == (B, T) and values.dtype == np.float32
    np.testing.assert_array_equal(new_logits.data, logits)
    sd = model.state_dict()
    assert sd["v_head.weight"].shape == (CFG.n_embd, 1) and sd["v_head.bias"].shape == (1,)
    assert model.cfg.value_head
    model.add_value_head(seed=1)                          # a second call keeps the existing head
    np.testing.assert_array_equal(model.state_dict()["v_head.weight"], sd["v_head.weight"])


def test_values_are_the_value_head_applied_to_the_final_hidden_states():
    model = mg.GPT(dataclasses.replace(CFG, value_head=True), dtype=np.float64, seed=0)
    model.params["v_head.bias"].data[:] = 0.5
    idx, _ = batch()
    _, values = model.logits_and_values(idx)
    # the value head is linear in h: doubling w_v doubles values - b_v
    model.params["v_head.weight"].data *= 2
    _, doubled = model.logits_and_values(idx)
    np.testing.assert_allclose(doubled.data - 0.5, 2 * (values.data - 0.5), rtol=1e-12, atol=1e-15)


# -------------------------------------------------------------------------------------------------- bad input
def test_token_ids_outside_the_vocabulary_raise_value_error():
    model = mg.GPT(CFG)
    idx, _ = batch()
    for bad in (CFG.vocab_size, -1):
        wrong = idx.copy()
        wrong[1, 3] = bad
        with pytest.raises(ValueError, match=r"token ids must lie in \[0, 29\).*tokenizer"):
            model(wrong)


def test_sequence_longer_than_block_size_raises_value_error():
    model = mg.GPT(CFG)
    idx = np.zeros((1, CFG.block_size + 1), dtype=np.int64)
    with pytest.raises(ValueError, match="exceeds block_size 12.*truncate"):
        model(idx)
    model(idx[:, :CFG.block_size])                          # exactly block_size is fine


def test_attention_mask_shape_mismatch_raises_value_error():
    model = mg.GPT(CFG)
    idx, _ = batch()
    with pytest.raises(ValueError, match=r"attention_mask shape \(4, 9\)"):
        model(idx, attention_mask=np.ones((B, T - 1)))


def test_idx_that_is_not_a_2d_integer_array_raises_value_error():
    model = mg.GPT(CFG)
    with pytest.raises(ValueError, match="2-D integer"):
        model(np.zeros(5, dtype=np.int64))
    with pytest.raises(ValueError, match="2-D integer"):
        model(np.zeros((2, 5)))


def test_bad_config_raises_value_error():
    with pytest.raises(ValueError, match="divisible by n_head"):
        mg.GPTConfig(n_embd=10, n_head=4)
    with pytest.raises(ValueError, match="dropout"):
        mg.GPTConfig(dropout=1.0)
    with pytest.raises(ValueError, match="vocab_size"):
        mg.GPTConfig(vocab_size=0)


def test_cross_entropy_bad_targets_raise_value_error():
    logits = mg.GPT(CFG)(batch()[0])
    with pytest.raises(ValueError, match="targets shape"):
        F.cross_entropy(logits, np.zeros((B, T - 1), dtype=np.int64))
    with pytest.raises(ValueError, match="target ids must lie in"):
        F.cross_entropy(logits, np.full((B, T), CFG.vocab_size))
    with pytest.raises(ValueError, match="ignore_index"):
        F.cross_entropy(logits, np.full((B, T), -100))


# -------------------------------------------------------------------------------------------------- state dicts
def test_state_dict_round_trip_copies_and_casts():
    source = mg.GPT(CFG, dtype=np.float64, seed=1)
    target = mg.GPT(CFG, seed=2)
    sd = source.state_dict()
    target.load_state_dict(sd)
    sd["transformer.wte.weight"][:] = 0                    # the model holds its own copy
    assert target.params["transformer.wte.weight"].data.dtype == np.float32
    assert np.abs(target.params["transformer.wte.weight"].data).max() > 0
    idx, _ = batch()
    np.testing.assert_allclose(target(idx).data, source(idx).data, atol=1e-5)


def load_error(model, sd):
    before = model.state_dict()
    with pytest.raises(ValueError) as info:
        model.load_state_dict(sd)
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before), "a failed load must not change the weights"
    print(info.value)
    return str(info.value)


def test_load_state_dict_lists_missing_unexpected_and_misshaped_keys():
    model = mg.GPT(CFG)
    sd = model.state_dict()
    del sd["transformer.h.1.ln_2.bias"], sd["transformer.wpe.weight"]
    sd["transformer.h.2.ln_1.weight"] = np.ones(CFG.n_embd)
    sd["v_head.weight"] = np.ones((CFG.n_embd, 1))
    sd["transformer.h.0.attn.c_attn.weight"] = np.ones((3 * CFG.n_embd, CFG.n_embd))   # transposed (nn.Linear)
    message = load_error(model, sd)
    for key in ("transformer.h.1.ln_2.bias", "transformer.wpe.weight", "transformer.h.2.ln_1.weight",
                "v_head.weight", "transformer.h.0.attn.c_attn.weight: expected (16, 48), got (48, 16)"):
        assert key in message
    assert "missing" in message and "unexpected" in message and "mis-shaped" in message
    assert "value_head=True" in message                      # says how to fix the common case


@pytest.mark.parametrize("problem", ["missing", "unexpected", "misshaped"])
def test_load_state_dict_names_each_kind_of_problem_alone(problem):
    model = mg.GPT(CFG)
    sd = model.state_dict()
    if problem == "missing":
        del sd["transformer.ln_f.weight"]
    elif problem == "unexpected":
        sd["transformer.h.0.attn.c_attn.extra"] = np.zeros(3)
    else:
        sd["transformer.wte.weight"] = np.zeros((CFG.vocab_size + 1, CFG.n_embd))
    message = load_error(model, sd)
    assert {"missing": "missing keys ['transformer.ln_f.weight']",
            "unexpected": "unexpected keys ['transformer.h.0.attn.c_attn.extra']",
            "misshaped": "transformer.wte.weight: expected (29, 16), got (30, 16)"}[problem] in message


def test_hugging_face_style_state_dict_with_lm_head_and_attention_buffers_loads():
    source = mg.GPT(CFG, seed=3)
    sd = source.state_dict()
    sd["lm_head.weight"] = sd["transformer.wte.weight"].copy()
    for i in range(CFG.n_layer):
        sd[f"transformer.h.{i}.attn.bias"] = np.tril(np.ones((CFG.block_size, CFG.block_size)))[None, None]
        sd[f"transformer.h.{i}.attn.masked_bias"] = np.array(-1e4)
    model = mg.GPT(CFG, seed=4)
    model.load_state_dict(sd)
    idx, _ = batch()
    np.testing.assert_array_equal(model(idx).data, source(idx).data)
    sd["lm_head.weight"] = sd["lm_head.weight"] + 1.0                    # an untied head cannot be represented
    assert "lm_head.weight differs" in load_error(model, sd)


def test_value_head_state_dict_needs_a_value_head_model():
    sd = mg.GPT(dataclasses.replace(CFG, value_head=True)).state_dict()
    message = load_error(mg.GPT(CFG), sd)
    assert "v_head.bias" in message and "v_head.weight" in message
    mg.GPT(dataclasses.replace(CFG, value_head=True), seed=5).load_state_dict(sd)
