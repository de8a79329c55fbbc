"""The GPT reward model: Hugging Face's pooling and names, both losses and every parameter's gradient against
torch at float64, finite differences, padding on either side, training that resumes bit for bit, files.

The torch reference is GPT2ForSequenceClassification's head written from transformers 5.23.0
(models/gpt2/modeling_gpt2.py:905-928): the score head at every position, read at
argmax(arange(T) * (input_ids != pad_token_id)). The losses are written from TRL 1.16.0's
RewardTrainer.compute_loss (trainer/reward_trainer.py:786-795).
"""
import dataclasses
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import minigpt_np as mg
from minigpt_np.checkpoint import load_npz
from minigpt_np.data import build_tokenizer
from minigpt_np.resume import FingerprintMismatch
from minigpt_np.tensor import backward, make
from reward.gpt_reward import (FORMAT, GPTRewardModel, auc, last_non_pad_token, load_gpt_reward, right_pad,
                               score_head_backward)
from reward import gpt_reward_train
from reward.gpt_reward_train import GPTRewardConfig, preference_pairs, train_gpt_reward
from reward.losses import bce_loss, bce_loss_backward, pairwise_loss, pairwise_loss_backward
from gradcheck import gradcheck
from test_gpt_parity_torch import random_state_dict, torch_hidden_states
from tiny_run import BAD, GOOD

CFG = dict(vocab_size=23, block_size=10, n_layer=2, n_head=2, n_embd=16)
PAD = 0
LOSS_ATOL, GRAD_RTOL = 1e-12, 1e-8
# rows of real tokens (ids 1..22) and how long each is; row 2 ends with the pad id itself, as TRL's added eos
LENGTHS = [8, 5, 3, 7, 1, 6]


def tiny_reward_model(seed=0, cfg=CFG):
    gpt = mg.GPT(mg.GPTConfig(**cfg), dtype=np.float64, seed=seed)
    gpt.load_state_dict(random_state_dict(gpt, seed + 1))
    w = 0.3 * np.random.default_rng(seed + 2).standard_normal((1, cfg["n_embd"]))
    return GPTRewardModel(gpt, w, PAD)


def padded_batch(side, seed=3, T=8):
    """(idx (6, T), attention_mask or None): LENGTHS real tokens per row, padded on `side` with PAD."""
    rng = np.random.default_rng(seed)
    rows = [list(rng.integers(1, CFG["vocab_size"], n)) for n in LENGTHS]
    rows[2][-1] = PAD                            # an eos = pad at the end of a text: read one token earlier
    idx = np.full((len(rows), T), PAD)
    mask = np.zeros((len(rows), T), dtype=np.int64)
    for i, r in enumerate(rows):
        sl = slice(0, len(r)) if side == "right" else slice(T - len(r), T)
        idx[i, sl], mask[i, sl] = r, 1
    return idx, (mask if side == "left" else None)


def torch_rewards(P, cfg, idx, mask, pool="hf"):
    """GPT2ForSequenceClassification in torch: logits = score(h) (B, T, 1), read at the last non-pad token."""
    h = torch_hidden_states(P, cfg, torch.tensor(idx), None if mask is None else torch.tensor(mask))
    logits = h @ P["score.weight"].T                                                   # (B, T, 1)
    t_idx = torch.tensor(idx)
    if pool == "hf":
        last = (torch.arange(t_idx.shape[-1]) * (t_idx != PAD).int()).argmax(-1)
    else:                                        # the negative control: the last position, padding or not
        last = torch.full((t_idx.shape[0],), t_idx.shape[-1] - 1)
    return logits[torch.arange(t_idx.shape[0]), last].squeeze(-1)


def torch_loss(rewards, kind, labels, margin, center):
    if kind == "bce":
        return TF.binary_cross_entropy_with_logits(rewards, torch.tensor(labels, dtype=torch.float64))
    chosen, rejected = torch.chunk(rewards, chunks=2)
    d = chosen - rejected if margin is None else chosen - rejected - torch.tensor(margin)
    loss = -TF.logsigmoid(d).mean()
    if center is not None:
        loss = loss + center * torch.mean((chosen + rejected) ** 2)
    return loss


LOSS_CASES = {"bce": ("bce", None, None), "pairwise": ("pairwise", None, None),
              "pairwise+margin+center": ("pairwise", np.array([0.5, 0.0, 1.5]), 0.01)}


def grad_error(a, b):
    """max |a - b| / max(max |b|, 1e-6). The floor matters for one tensor: the pairwise loss ignores a shift shared by
    all rewards, and ln_f.bias shifts them all by bias . w, so its true gradient is exactly 0 (ours is 1e-17)."""
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-6))


def compare_with_torch(loss_case, side, pool="hf"):
    kind, margin, center = LOSS_CASES[loss_case]
    model = tiny_reward_model()
    cfg = model.gpt.cfg
    idx, mask = padded_batch(side)
    labels = np.array([1, 0, 1, 1, 0, 0])

    model.zero_grad()
    r = model.rewards(idx, attention_mask=mask)
    if kind == "bce":
        loss, terms = bce_loss(r.data, labels)
        dr = bce_loss_backward(terms)
    else:
        loss, terms = pairwise_loss(r.data, margin, center)
        dr = pairwise_loss_backward(terms)
    backward([r], [dr])

    P = {name: torch.tensor(a, requires_grad=True) for name, a in model.state_dict().items()}
    t_r = torch_rewards(P, cfg, idx, mask, pool)
    t_loss = torch_loss(t_r, kind, labels, margin, center)
    t_loss.backward()
    errors = {"rewards (abs)": float(np.max(np.abs(r.data - t_r.detach().numpy()))),
              "loss (abs)": abs(loss - t_loss.item())}
    grads = {name: grad_error(p.grad, P[name].grad.numpy()) for name, p in model.named_parameters()}
    print(f"\nreward parity loss={loss_case} padding={side} pool={pool}")
    for name, err in {**errors, **{f"d {n} (rel)": e for n, e in grads.items()}}.items():
        print(f"  {name:<45s} {err:.3e}")
    return errors, grads


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("loss_case", list(LOSS_CASES))
def test_reward_losses_and_every_parameter_gradient_match_torch(loss_case, side):
    errors, grads = compare_with_torch(loss_case, side)
    for found, tolerance in ((errors, LOSS_ATOL), (grads, GRAD_RTOL)):
        name = max(found, key=found.get)
        assert found[name] < tolerance, f"worst: {name} error {found[name]:.3e} (tolerance {tolerance:g})"
    assert len(grads) == len(mg.model.parameter_shapes(mg.GPTConfig(**CFG))) + 1 and "score.weight" in grads


def test_parity_fails_when_the_reference_reads_the_last_position_instead_of_the_last_real_token():
    """Negative control: Hugging Face's pooling replaced by "the last position" must be caught on a padded batch."""
    errors, grads = compare_with_torch("bce", "right", pool="last position")
    assert errors["rewards (abs)"] > 1e-3 and grads["score.weight"] > 1e-3


# ------------------------------------------------------------------------------------- finite differences
def reward_loss_fn(model, idx, mask, margin, center):
    """fn for gradcheck: the parameters as fresh Tensors -> the pairwise loss as a scalar Tensor."""
    def fn(params):
        for name, t in params.items():
            if name == "score.weight":
                model.score_weight = t
            else:
                model.gpt.params[name] = t
        r = model.rewards(idx, attention_mask=mask)
        loss, terms = pairwise_loss(r.data, margin, center)
        dr = pairwise_loss_backward(terms)
        return make(np.array(loss), (r,), lambda dloss: (dloss * dr,))
    return fn


def test_reward_model_gradient_matches_finite_differences():
    model = tiny_reward_model(cfg=dict(vocab_size=23, block_size=10, n_layer=1, n_head=2, n_embd=8))
    idx, mask = padded_batch("left")
    report = gradcheck(reward_loss_fn(model, idx, mask, 0.3, 0.1), model.state_dict(), max_entries=6)
    print(report)
    assert report.n_checked > 6 * len(model.state_dict()) - 20


def test_gradcheck_catches_a_head_backward_that_scatters_into_the_wrong_position(monkeypatch):
    """Negative control: the head's gradient sent to the position after the read one must fail the check."""
    import reward.gpt_reward as gr
    monkeypatch.setattr(gr, "score_head_backward",
                        lambda dr, h, w, last: score_head_backward(dr, h, w, np.minimum(last + 1, h.shape[1] - 1)))
    model = tiny_reward_model(cfg=dict(vocab_size=23, block_size=10, n_layer=1, n_head=2, n_embd=8))
    idx, _ = padded_batch("right")
    with pytest.raises(AssertionError, match="gradcheck FAILED"):
        gradcheck(reward_loss_fn(model, idx, None, None, None), model.state_dict(), max_entries=6)


def test_loss_backwards_match_finite_differences_and_fail_without_the_centring_term(monkeypatch):
    rng = np.random.default_rng(0)
    r, y, margin = rng.standard_normal(8), np.array([1, 0, 0, 1, 1, 0, 1, 0]), rng.random(4)

    def as_op(forward, backward_):
        def fn(p):
            loss, terms = forward(p["r"].data)
            return make(np.array(loss), (p["r"],), lambda dloss: (dloss * backward_(terms),))
        return fn
    gradcheck(as_op(lambda x: bce_loss(x, y), bce_loss_backward), {"r": r})
    gradcheck(as_op(lambda x: pairwise_loss(x, margin, 0.2), pairwise_loss_backward), {"r": r})
    with pytest.raises(AssertionError, match="gradcheck FAILED"):
        gradcheck(as_op(lambda x: pairwise_loss(x, margin, 0.2),
                        lambda t: pairwise_loss_backward({**t, "c": 0.0})), {"r": r})


def test_losses_known_answers():
    assert bce_loss(np.zeros(3), np.array([1, 0, 1]))[0] == pytest.approx(np.log(2))
    loss, terms = pairwise_loss(np.array([2.0, 0.0, 1.0, 1.0]))       # d = (1, -1)
    assert loss == pytest.approx(np.mean([np.log1p(np.exp(-1)), np.log1p(np.exp(1))]))
    assert terms["accuracy"] == 0.5 and terms["margin"] == 0.0
    # a margin of 1 moves d to (0, -2); centring adds c mean((r_w + r_l)^2) = 0.5 * mean(9, 1)
    assert pairwise_loss(np.array([2.0, 0.0, 1.0, 1.0]), 1.0)[0] == pytest.approx(
        np.mean([np.log(2), np.log1p(np.exp(2))]))
    assert pairwise_loss(np.array([2.0, 0.0, 1.0, 1.0]), None, 0.5)[0] == pytest.approx(loss + 0.5 * 5.0)
    with pytest.raises(ValueError, match="chosen then the rejected"):
        pairwise_loss(np.zeros(3))


# ------------------------------------------------------------------------------------- pooling and padding
def test_last_non_pad_token_follows_hugging_face():
    idx = np.array([[5, 6, 7, 0, 0], [0, 0, 5, 6, 7], [5, 0, 6, 0, 0], [0, 0, 0, 0, 0]])
    assert last_non_pad_token(idx, 0).tolist() == [2, 4, 2, 0]       # right, left, a pad inside, all padding
    assert last_non_pad_token(idx[:1], None).tolist() == [4]         # no pad token: the last position, batch of 1
    with pytest.raises(ValueError, match="pad_token_id"):
        last_non_pad_token(idx, None)


def test_a_text_gets_the_same_reward_unpadded_right_padded_or_left_padded_with_its_mask():
    model = tiny_reward_model()
    right, _ = padded_batch("right")
    left, mask = padded_batch("left")
    alone = np.array([model.rewards(right[i:i + 1, :n]).data[0] for i, n in enumerate(LENGTHS)])
    errors = {"right": np.max(np.abs(model.rewards(right).data - alone)),
              "left + mask": np.max(np.abs(model.rewards(left, attention_mask=mask).data - alone))}
    assert max(errors.values()) < 1e-12, errors
    # the pad token ending row 2 (TRL's added eos) is skipped: row 2 reads the same as without it
    assert abs(alone[2] - model.rewards(right[2:3, :LENGTHS[2] - 1]).data[0]) < 1e-12
    # left padding without the mask lets the real tokens see the pads: a different number
    assert np.max(np.abs(model.rewards(left).data - alone)) > 1e-3


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(GOOD + BAD, vocab_size=300)


def texts_and_labels(titles):
    texts = [f"{t} is {s} ." for t in titles for s in GOOD + BAD]
    return texts, np.tile([1] * len(GOOD) + [0] * len(BAD), len(titles))


def small_model(tokenizer, seed=0, block_size=24):
    gpt = mg.GPT(mg.GPTConfig(vocab_size=tokenizer.vocab_size, block_size=block_size, n_layer=1, n_head=2,
                              n_embd=16), dtype=np.float64, seed=seed)
    return GPTRewardModel.from_pretrained(gpt, tokenizer, seed=seed)


def test_score_is_independent_of_order_and_batch_size_and_cuts_long_texts_to_their_end(tokenizer):
    model = small_model(tokenizer, block_size=12)
    texts, _ = texts_and_labels(["the heist", "a"])
    texts = texts + ["", "good " * 30]
    a = model.score(texts, forward_batch_size=64)
    b = model.score(texts[::-1], forward_batch_size=3)[::-1]
    assert a.dtype == np.float64 and a.shape == (len(texts),) and np.max(np.abs(a - b)) < 1e-12
    ids = tokenizer.encode("good " * 30)
    assert abs(a[-1] - model.rewards(np.array([ids[-12:]])).data[0]) < 1e-12
    with pytest.raises(TypeError, match="wrap it in a list"):
        model.score("one text")


def test_state_dict_has_hugging_face_names_and_a_converted_one_loads(tokenizer, tmp_path):
    model = small_model(tokenizer)
    sd = model.state_dict()
    assert sd["score.weight"].shape == (1, 16) and "transformer.h.0.attn.c_attn.weight" in sd
    assert not any(k.startswith(("lm_head", "v_head")) for k in sd)
    hf = {**{k: v + 1.0 for k, v in sd.items()}, "transformer.h.0.attn.bias": np.ones((1, 1, 24, 24))}
    model.load_state_dict(hf)                                   # a Hugging Face buffer is ignored
    assert np.array_equal(model.score_weight.data, sd["score.weight"] + 1.0)
    with pytest.raises(ValueError, match="score.weight"):
        model.load_state_dict({k: v for k, v in sd.items() if k != "score.weight"})
    texts, labels = texts_and_labels(["night train"])
    path = model.save(tmp_path / "reward_gpt.npz")
    loaded = load_gpt_reward(path)
    assert np.array_equal(loaded.score(texts), model.score(texts)) and loaded.pad_token_id == tokenizer.eos_token_id
    assert loaded.metrics(texts, labels).keys() == {"accuracy", "log_loss", "auc", "n"}
    mg.GPT(mg.GPTConfig(vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=16)).save(tmp_path / "lm.npz")
    with pytest.raises(ValueError, match=FORMAT):
        load_gpt_reward(tmp_path / "lm.npz")


def test_auc_and_preference_pairs():
    assert auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert auc([1.0, 1.0], [0, 1]) == 0.5
    labels = np.array([1, 1, 1, 0, 0, 1, 0])
    chosen, rejected = preference_pairs(labels, None, np.random.default_rng(0))
    assert len(chosen) == 3 and np.all(labels[chosen] == 1) and np.all(labels[rejected] == 0)
    assert len(set(rejected.tolist())) == 3                      # every text of the smaller class once
    chosen, rejected = preference_pairs(labels, 8, np.random.default_rng(0))
    assert len(rejected) == 8 and np.all(labels[rejected] == 0)  # the smaller class cycled


# ------------------------------------------------------------------------------------- training
TRAIN_TITLES = ["the heist", "summer rain", "iron coast", "blue valley", "paper moon"]
VAL_TITLES = ["cold harbor", "red desert"]


@pytest.mark.parametrize("loss", ["bce", "pairwise"])
def test_training_separates_held_out_texts_and_keeps_the_best_validation_weights(tokenizer, loss):
    train, y_train = texts_and_labels(TRAIN_TITLES)
    val, y_val = texts_and_labels(VAL_TITLES)
    extra = {"center_rewards_coefficient": 0.01} if loss == "pairwise" else {}
    cfg = GPTRewardConfig(loss=loss, lr=3e-3, epochs=8, batch_size=8, eval_interval=4, seed=1, **extra)
    model = small_model(tokenizer, seed=1)
    before = model.metrics(val, y_val)
    model, metrics = train_gpt_reward(model, train, y_train, val, y_val, cfg)
    history = metrics["history"]
    best = min(history, key=lambda rec: rec["val_loss"])
    assert metrics["best_step"] == best["step"] and metrics["val"]["selection_loss"] == best["val_loss"]
    assert metrics["val"]["auc"] > 0.95 and before["auc"] < 0.75, (before, metrics["val"])
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert model.info["best_step"] == metrics["best_step"] and not model.training


def test_killed_training_resumes_to_the_same_weights_bit_for_bit(tokenizer, tmp_path, monkeypatch):
    train, y_train = texts_and_labels(TRAIN_TITLES)
    val, y_val = texts_and_labels(VAL_TITLES)
    # dropout > 0 so the dropout generator's state must be restored as well
    cfg = GPTRewardConfig(loss="pairwise", lr=3e-3, epochs=3, batch_size=8, dropout=0.1, margin=0.5,
                          center_rewards_coefficient=0.01, eval_interval=1, checkpoint_interval=4, seed=2)
    straight, m_straight = train_gpt_reward(small_model(tokenizer, 2), train, y_train, val, y_val, cfg,
                                            checkpoint_path=tmp_path / "a.npz")

    # killed inside update 11: the checkpoint holds step 8, and updates 9 and 10 are lost with the process
    real_update, calls = gpt_reward_train._update, []

    def dies_in_update_11(*args):
        calls.append(1)
        if len(calls) == 11:
            sys.exit("killed")
        return real_update(*args)
    monkeypatch.setattr(gpt_reward_train, "_update", dies_in_update_11)
    path = tmp_path / "b.npz"
    with pytest.raises(SystemExit):
        train_gpt_reward(small_model(tokenizer, 2), train, y_train, val, y_val, cfg, checkpoint_path=path)
    monkeypatch.setattr(gpt_reward_train, "_update", real_update)
    assert load_npz(path)[1]["training"]["state"]["step"] == 8
    resumed, m_resumed = train_gpt_reward(small_model(tokenizer, 2), train, y_train, val, y_val, cfg,
                                          checkpoint_path=path)
    worst = max(float(np.max(np.abs(a - b)))
                for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()))
    assert worst == 0.0, f"resumed weights differ from the uninterrupted run by up to {worst}"
    untimed = [[{k: v for k, v in rec.items() if k != "elapsed"} for rec in m["history"]]
               for m in (m_straight, m_resumed)]
    assert untimed[0] == untimed[1] and m_resumed["best_step"] == m_straight["best_step"]
    # another option is refused, naming it
    with pytest.raises(FingerprintMismatch, match="lr"):
        train_gpt_reward(small_model(tokenizer, 2), train, y_train, val, y_val,
                         dataclasses.replace(cfg, lr=1e-3), checkpoint_path=path)


def test_a_time_budget_is_a_plain_stop_that_a_larger_budget_resumes(tokenizer, tmp_path):
    train, y_train = texts_and_labels(TRAIN_TITLES)
    val, y_val = texts_and_labels(VAL_TITLES)
    cfg = GPTRewardConfig(lr=3e-3, epochs=2, batch_size=8, eval_interval=100, max_seconds=1e-9, seed=3)
    path = tmp_path / "c.npz"
    _, stopped = train_gpt_reward(small_model(tokenizer, 3), train, y_train, val, y_val, cfg, checkpoint_path=path)
    assert stopped["steps"] == 1 and stopped["stop_reason"] == "max_seconds" and stopped["best_step"] == 1
    _, resumed = train_gpt_reward(small_model(tokenizer, 3), train, y_train, val, y_val,
                                  dataclasses.replace(cfg, max_seconds=None), checkpoint_path=path)
    assert resumed["steps"] == 16 and resumed["stop_reason"] == "max_steps"
    assert [rec["step"] for rec in resumed["history"]] == [1, 16]


def test_config_refuses_bad_options_and_training_refuses_bad_labels(tokenizer):
    with pytest.raises(ValueError, match="belong to loss='pairwise'"):
        GPTRewardConfig(loss="bce", margin=1.0)
    with pytest.raises(ValueError, match="loss must be one of"):
        GPTRewardConfig(loss="hinge")
    with pytest.raises(ValueError, match="dropout must lie in"):
        GPTRewardConfig(dropout=1.0)
    train, y = texts_and_labels(["a"])
    with pytest.raises(ValueError, match="labels in"):
        train_gpt_reward(small_model(tokenizer), train, y * 2, train, y)


def test_right_pad():
    assert right_pad([[3, 4], [5], []], 0).tolist() == [[3, 4], [5, 0], [0, 0]]
    assert right_pad([], 0).shape == (0, 1)
