"""KV-cache generation gives the logits and tokens of recomputing the whole sequence every step; sampling options
(seed, temperature 0, top_k, top_p, eos) do what they say; bad requests raise a ValueError."""
import numpy as np
import pytest

import minigpt_np as mg
from minigpt_np.generate import KVCache, sample_next

CFG = mg.GPTConfig(vocab_size=19, block_size=16, n_layer=2, n_head=2, n_embd=16)
PROMPT_LEN, NEW = 6, 8
LEFT_PADDING = np.array([[1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 1]])


def random_gpt(cfg=CFG, dtype=np.float64, seed=0):
    """Weights of size O(0.3): distinct, confident logits, so greedy paths are well defined."""
    model = mg.GPT(cfg, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed + 1)
    model.load_state_dict({name: (1.0 if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")) else 0.0)
                           + 0.3 * rng.standard_normal(p.shape) for name, p in model.named_parameters()})
    return model


def prompts(seed=2, batch=3):
    return np.random.default_rng(seed).integers(0, CFG.vocab_size, (batch, PROMPT_LEN))


def greedy_by_recomputation(model, idx, n_new, attention_mask=None):
    """The reference: no cache, the full forward pass over the whole sequence for every new token."""
    out = idx.copy()
    mask = None if attention_mask is None else attention_mask.copy()
    step_logits = []
    for _ in range(n_new):
        logits = model(out, attention_mask=mask).data[:, -1]
        step_logits.append(logits)
        out = np.concatenate([out, logits.argmax(-1)[:, None]], axis=1)
        if mask is not None:
            mask = np.concatenate([mask, np.ones((len(out), 1), dtype=mask.dtype)], axis=1)
    return out, step_logits


@pytest.mark.parametrize("padded", [False, True])
def test_kv_cache_logits_equal_full_forward_at_every_step(padded):
    model, idx = random_gpt(), prompts()
    mask = LEFT_PADDING if padded else None
    expected_tokens, expected_logits = greedy_by_recomputation(model, idx, NEW, mask)

    # the same decoding, one position at a time through a KV cache
    B = len(idx)
    full_mask = np.ones((B, PROMPT_LEN + NEW), dtype=np.int64)
    if padded:
        full_mask[:, :PROMPT_LEN] = mask
    cache = KVCache(model.cfg, B, model.dtype)
    out = idx.copy()
    logits = model(idx, attention_mask=full_mask[:, :PROMPT_LEN], cache=cache).data[:, -1]
    errors = []
    for step in range(NEW):
        errors.append(np.max(np.abs(logits - expected_logits[step])))
        token = logits.argmax(-1)[:, None]
        out = np.concatenate([out, token], axis=1)
        t = out.shape[1]
        logits = model(token, attention_mask=full_mask[:, :t], cache=cache).data[:, -1]
    print(f"max abs logit error per step: {np.array(errors)}")
    assert max(errors) < 1e-10, f"worst step {int(np.argmax(errors))}: max abs err {max(errors):.3e}"
    np.testing.assert_array_equal(out, expected_tokens)
    # and through the public function
    np.testing.assert_array_equal(mg.generate(model, idx, NEW, temperature=0, attention_mask=mask), expected_tokens)


def test_kv_cache_over_chunks_of_several_tokens_equals_full_forward():
    """Several new positions at once against a non-empty cache (queries are the last T of S keys)."""
    model, idx = random_gpt(), prompts(batch=2)
    seq = np.concatenate([idx, prompts(seed=5, batch=2)], axis=1)            # (2, 12)
    mask = np.ones_like(seq)
    mask[1, :4] = 0
    full = model(seq, attention_mask=mask).data
    cache = KVCache(model.cfg, 2, model.dtype)
    pieces = [model(seq[:, a:b], attention_mask=mask[:, :b], cache=cache).data for a, b in [(0, 5), (5, 7), (7, 12)]]
    cached = np.concatenate(pieces, axis=1)
    real = mask == 1
    err = np.max(np.abs(cached - full)[real])
    assert err < 1e-10, f"max abs err {err:.3e}"


def test_generate_leaves_the_prompt_alone_and_restores_training_mode():
    model, idx = random_gpt(), prompts()
    model.training = True
    out = mg.generate(model, idx, NEW, seed=0)
    assert out.shape == (3, PROMPT_LEN + NEW) and np.issubdtype(out.dtype, np.integer)
    np.testing.assert_array_equal(out[:, :PROMPT_LEN], idx)
    assert out.min() >= 0 and out.max() < CFG.vocab_size
    assert model.training


def test_seeded_sampling_is_repeatable_and_different_seeds_differ():
    model, idx = random_gpt(), prompts()
    a = mg.generate(model, idx, NEW, temperature=1.0, seed=11)
    b = mg.generate(model, idx, NEW, temperature=1.0, seed=11)
    c = mg.generate(model, idx, NEW, temperature=1.0, seed=12)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[:, PROMPT_LEN:], c[:, PROMPT_LEN:])
    # a generator passed in is used as is: the same state gives the same samples
    d = mg.generate(model, idx, NEW, temperature=1.0, rng=np.random.default_rng(11))
    np.testing.assert_array_equal(a, d)


def test_top_k_one_and_tiny_top_p_equal_greedy():
    model, idx = random_gpt(), prompts()
    greedy = mg.generate(model, idx, NEW, temperature=0)
    assert not np.array_equal(greedy, mg.generate(model, idx, NEW, temperature=1.0, seed=0)), \
        "the model must be uncertain enough that plain sampling differs from greedy"
    np.testing.assert_array_equal(mg.generate(model, idx, NEW, temperature=1.0, top_k=1, seed=0), greedy)
    np.testing.assert_array_equal(mg.generate(model, idx, NEW, temperature=1.0, top_p=1e-9, seed=0), greedy)


def test_sample_next_draws_from_the_softmax_restricted_by_top_k_and_top_p():
    logits = np.log(np.array([[0.05, 0.4, 0.1, 0.3, 0.15]]))
    logits = np.repeat(logits, 40000, axis=0)
    rng = np.random.default_rng(0)

    def freqs(**kw):
        return np.bincount(sample_next(logits, rng, **kw), minlength=5) / len(logits)
    f = freqs(temperature=1.0)
    assert np.max(np.abs(f - [0.05, 0.4, 0.1, 0.3, 0.15])) < 0.01, f
    f = freqs(temperature=1.0, top_k=2)                     # tokens 1 and 3, renormalised
    assert np.max(np.abs(f - [0, 0.4 / 0.7, 0, 0.3 / 0.7, 0])) < 0.01, f
    f = freqs(temperature=1.0, top_p=0.75)                  # 0.4 + 0.3 < 0.75, so 0.15 is needed too
    assert np.max(np.abs(f - [0, 0.4 / 0.85, 0, 0.3 / 0.85, 0.15 / 0.85])) < 0.01, f
    f = freqs(temperature=0.5)                              # p^2 renormalised
    p2 = np.array([0.05, 0.4, 0.1, 0.3, 0.15]) ** 2
    assert np.max(np.abs(f - p2 / p2.sum())) < 0.01, f


@pytest.mark.parametrize("temperature", [0, 1.0])
def test_after_eos_a_row_emits_only_padding(temperature):
    model, idx = random_gpt(), prompts(batch=6)
    free = mg.generate(model, idx, NEW, temperature=temperature, seed=3)
    eos = int(np.bincount(free[:, PROMPT_LEN:].ravel()).argmax())     # the token most often generated
    pad = (eos + 1) % CFG.vocab_size
    out = mg.generate(model, idx, NEW, temperature=temperature, seed=3, eos_token_id=eos, pad_token_id=pad)
    rows_with_eos = 0
    for row_free, row in zip(free[:, PROMPT_LEN:], out[:, PROMPT_LEN:]):
        hits = np.nonzero(row == eos)[0]
        if len(hits) == 0:
            np.testing.assert_array_equal(row, row_free)
            continue
        rows_with_eos += 1
        first = hits[0]
        np.testing.assert_array_equal(row[:first + 1], row_free[:first + 1])   # identical until eos
        assert np.all(row[first + 1:] == pad), f"tokens after eos: {row[first + 1:]}"
    assert rows_with_eos >= 1 and any(np.nonzero(r == eos)[0][0] < NEW - 1
                                      for r in out[:, PROMPT_LEN:] if eos in r)
    # without pad_token_id the padding is eos itself
    out = mg.generate(model, idx, NEW, temperature=temperature, seed=3, eos_token_id=eos)
    for row in out[:, PROMPT_LEN:]:
        if eos in row:
            assert np.all(row[np.argmax(row == eos):] == eos)


def test_generate_with_a_value_head_samples_as_the_plain_model():
    model, idx = random_gpt(), prompts()
    expected = mg.generate(model, idx, NEW, temperature=1.0, seed=4)
    model.add_value_head(seed=0)
    np.testing.assert_array_equal(mg.generate(model, idx, NEW, temperature=1.0, seed=4), expected)


def test_float32_kv_cache_generation_matches_recomputation():
    model, idx = random_gpt(dtype=np.float32), prompts()
    expected, _ = greedy_by_recomputation(model, idx, NEW, LEFT_PADDING)
    np.testing.assert_array_equal(mg.generate(model, idx, NEW, temperature=0, attention_mask=LEFT_PADDING), expected)


def test_generate_past_block_size_raises_value_error():
    model, idx = random_gpt(), prompts()
    with pytest.raises(ValueError, match="block_size"):
        mg.generate(model, idx, CFG.block_size - PROMPT_LEN + 1)
    mg.generate(model, idx, CFG.block_size - PROMPT_LEN, seed=0)         # exactly full is fine


def test_generate_rejects_bad_requests_with_value_errors():
    model, idx = random_gpt(), prompts()
    with pytest.raises(ValueError, match="attention_mask shape"):
        mg.generate(model, idx, 2, attention_mask=np.ones((3, PROMPT_LEN + 1)))
    with pytest.raises(ValueError, match="temperature"):
        mg.generate(model, idx, 2, temperature=-1.0)
    with pytest.raises(ValueError, match="batch, time"):
        mg.generate(model, idx[0], 2)
    with pytest.raises(ValueError, match="token ids"):
        mg.generate(model, idx + CFG.vocab_size, 2)
