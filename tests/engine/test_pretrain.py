"""Pretraining claims: the loss falls, a killed run resumes to the very same weights, divergence keeps the last
good checkpoint, batches are a function of the seed, and the unigram-entropy baseline is computed right."""
import dataclasses
import math

import numpy as np
import pytest

import minigpt_np as mg
from minigpt_np.checkpoint import load_npz
from minigpt_np.data import (build_tokenizer, count_chars, encode_corpus, load_or_build_tokenizer, sample_windows,
                             validation_windows)
from minigpt_np.metrics import bits_per_char, unigram_entropy
from minigpt_np.pretrain import PretrainConfig, TrainingDiverged, pretrain
from minigpt_np.resume import FingerprintMismatch, training_state

REVIEWS = [
    "A warm, funny and surprisingly moving film about growing up.",
    "The plot is thin, but the performances carry the movie.",
    "An ambitious mess that never finds its footing.",
    "This is one of the best films of the year.",
    "The dialogue is clumsy and the pacing is painfully slow.",
    "A smart, sharp comedy with a big heart.",
    "The director has made a film that is both beautiful and cold.",
    "It is a movie that will make you laugh and then make you think.",
    "The story is predictable, and the jokes fall flat.",
    "A gorgeous, haunting film with a great performance at its center.",
    "Too long, too loud and not nearly as clever as it thinks it is.",
    "The cast is terrific, and the script is even better.",
    "A dull and lifeless thriller with no thrills at all.",
    "The film is a joy to watch from start to finish.",
    "It is hard to care about characters this thin.",
    "A charming and funny movie for the whole family.",
    "The movie is a bore, and the ending is a cheat.",
    "One of the most original films in years.",
    "The actors do what they can with a weak script.",
    "A tender, funny and honest film about love and loss.",
    "The story never makes sense, and the film never makes us care.",
    "It is a great movie, and a great ride.",
    "A film that is as smart as it is funny.",
    "The pacing is slow, but the ending is worth the wait.",
]
HELD_OUT = [
    "A funny and moving film with a great cast.",
    "The script is weak and the story is slow.",
    "It is one of the best movies of the year, and a joy to watch.",
    "The film is too long, and the jokes are not funny.",
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(REVIEWS, vocab_size=320)


@pytest.fixture(scope="module")
def streams(tokenizer):
    return encode_corpus(tokenizer, REVIEWS * 4), encode_corpus(tokenizer, HELD_OUT)


def tiny_model(tokenizer, seed=0, dropout=0.0):
    cfg = mg.GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32,
                       dropout=dropout)
    return mg.GPT(cfg, seed=seed)


def test_encode_corpus_puts_eos_after_every_text(tokenizer):
    ids = encode_corpus(tokenizer, ["A fine film.", "Dull."])
    eos = tokenizer.eos_token_id
    expected = tokenizer.encode("A fine film.") + [eos] + tokenizer.encode("Dull.") + [eos]
    assert ids.dtype == np.int32
    assert ids.tolist() == expected
    assert tokenizer.decode(ids.tolist()) == "A fine film.<|endoftext|>Dull.<|endoftext|>"
    assert count_chars(["A fine film.", "Dull."]) == 12 + 1 + 5 + 1


def test_training_windows_are_a_function_of_the_seed(streams):
    train_ids, _ = streams
    a = sample_windows(train_ids, 16, 8, np.random.default_rng(3))
    b = sample_windows(train_ids, 16, 8, np.random.default_rng(3))
    c = sample_windows(train_ids, 16, 8, np.random.default_rng(4))
    assert a.shape == (8, 17)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c), "different seeds drew the same batch"
    # every window is a contiguous slice of the stream
    for w in a:
        starts = [s for s in range(len(train_ids) - 16) if np.array_equal(train_ids[s:s + 17], w)]
        assert starts, f"window {w.tolist()} is not a slice of the stream"


def test_validation_windows_tile_the_stream_without_overlap():
    ids = np.arange(50, dtype=np.int32)
    w = validation_windows(ids, 8)
    assert w.shape == (6, 9)                        # (50 - 1) // 8 windows
    np.testing.assert_array_equal(w[:, 1:].reshape(-1), np.arange(1, 49))   # each token a target exactly once
    few = validation_windows(ids, 8, max_windows=2)
    np.testing.assert_array_equal(few[:, 0], [0, 40])  # spread over the stream: first and last window
    with pytest.raises(ValueError, match="fewer than block_size"):
        validation_windows(ids[:5], 8)


def test_unigram_entropy_known_answers():
    assert abs(unigram_entropy([0, 1, 2, 3]) - math.log(4)) < 1e-12
    assert abs(unigram_entropy([5, 5, 5, 5])) < 1e-12
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))      # 0.5623351446...
    got = unigram_entropy(np.array([7, 7, 7, 2]), vocab_size=8)
    assert abs(got - expected) < 1e-12, f"unigram entropy {got} != {expected}"
    # ln 2 nats/token at 2 chars/token is half a bit per char
    assert abs(bits_per_char(math.log(2), 2.0) - 0.5) < 1e-12
    with pytest.raises(ValueError):
        unigram_entropy([0, 9], vocab_size=8)


def test_loss_goes_down_below_the_unigram_entropy(tokenizer, streams):
    train_ids, val_ids = streams
    model = tiny_model(tokenizer)
    cfg = PretrainConfig(max_steps=80, batch_size=16, lr=1e-2, min_lr_ratio=0.1, warmup_steps=5, eval_interval=20,
                         checkpoint_interval=1000, seed=0)
    m = pretrain(model, train_ids, val_ids, cfg, progress=False)
    first, last = m["history"][0], m["history"][-1]
    h = unigram_entropy(train_ids, tokenizer.vocab_size)
    print(f"uniform {math.log(tokenizer.vocab_size):.3f}, unigram {h:.3f}, train {first['train_loss']:.3f} -> "
          f"{last['train_loss']:.3f}, val {first['val_loss']:.3f} -> {last['val_loss']:.3f}")
    assert m["step"] == 80 and m["stop_reason"] == "max_steps" and m["tokens"] == 80 * 16 * 16
    assert last["train_loss"] < first["train_loss"] - 1.0
    assert last["train_loss"] < h - 1.0, f"train loss {last['train_loss']:.3f} not below unigram entropy {h:.3f}"
    assert last["val_loss"] < h, f"val loss {last['val_loss']:.3f} not below unigram entropy {h:.3f}"


def test_killed_run_resumes_to_the_same_weights_bit_for_bit(tokenizer, streams, tmp_path):
    train_ids, val_ids = streams
    # dropout > 0 so the model's own generator state must be restored as well
    cfg = PretrainConfig(max_steps=9, batch_size=4, lr=3e-3, warmup_steps=2, eval_interval=1, checkpoint_interval=4,
                         seed=1)
    straight = tiny_model(tokenizer, dropout=0.1)
    m_straight = pretrain(straight, train_ids, val_ids, cfg, checkpoint_path=tmp_path / "a.npz", progress=False)

    class Killed(Exception):
        pass

    def kill_at_step_6(record):
        if record["step"] == 6:
            raise Killed

    path = tmp_path / "b.npz"
    with pytest.raises(Killed):
        pretrain(tiny_model(tokenizer, dropout=0.1), train_ids, val_ids, cfg, checkpoint_path=path,
                 progress=False, log=kill_at_step_6)
    assert training_state(path)["step"] == 4 and not training_state(path)["finished"]
    # a fresh process: new model with different initial weights, same arguments
    resumed = tiny_model(tokenizer, seed=123, dropout=0.1)
    m_resumed = pretrain(resumed, train_ids, val_ids, cfg, checkpoint_path=path, progress=False)
    assert m_resumed["step"] == 9 and training_state(path)["finished"]
    worst = max(float(np.max(np.abs(p.data - q.data)))
                for (_, p), (_, q) in zip(straight.named_parameters(), resumed.named_parameters()))
    assert worst == 0.0, f"resumed weights differ from the uninterrupted run by up to {worst}"
    a, _ = load_npz(tmp_path / "a.npz")
    b, _ = load_npz(path)
    assert sorted(a) == sorted(b) and any(k.startswith("optim.m.") for k in a)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"checkpoint entry {k} differs")
    assert [r["val_loss"] for r in m_resumed["history"]] == [r["val_loss"] for r in m_straight["history"]]

    # a finished run is not trained again
    again = tiny_model(tokenizer, seed=5, dropout=0.1)
    m_again = pretrain(again, train_ids, val_ids, cfg, checkpoint_path=path, progress=False)
    assert m_again["step"] == 9 and m_again["val_loss"] == m_straight["val_loss"]
    np.testing.assert_array_equal(again.params["transformer.wte.weight"].data,
                                  straight.params["transformer.wte.weight"].data)


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tokenizer, streams, tmp_path):
    train_ids, val_ids = streams
    model = tiny_model(tokenizer)
    path = tmp_path / "gpt.npz"

    def poison_after_step_3(record):
        if record["step"] == 3:   # the checkpoint holds step 2; step 4's forward pass meets the NaN
            model.params["transformer.h.0.mlp.c_fc.weight"].data[0, 0] = np.nan

    cfg = PretrainConfig(max_steps=10, batch_size=4, warmup_steps=1, eval_interval=1, checkpoint_interval=2)
    with pytest.raises(TrainingDiverged, match=r"loss is nan in update 4.*still holds step 2"):
        pretrain(model, train_ids, val_ids, cfg, checkpoint_path=path, progress=False, log=poison_after_step_3)
    kept = mg.load_checkpoint(path)
    assert training_state(path)["step"] == 2
    for name, p in kept.named_parameters():
        assert np.isfinite(p.data).all(), f"{name} in the kept checkpoint is not finite"


def test_time_budget_is_a_plain_stop_counted_across_resumes(tokenizer, streams, tmp_path):
    train_ids, val_ids = streams
    path = tmp_path / "gpt.npz"
    cfg = PretrainConfig(max_steps=1000, max_seconds=1e-6, batch_size=4, warmup_steps=1)
    m = pretrain(tiny_model(tokenizer), train_ids, val_ids, cfg, checkpoint_path=path, progress=False)
    assert m["stop_reason"] == "max_seconds" and m["step"] == 1 and m["val_loss"] is not None
    assert training_state(path)["finished"] and training_state(path)["stop_reason"] == "max_seconds"
    # the budget is spent, so running again trains nothing; raising it continues the same run
    assert pretrain(tiny_model(tokenizer), train_ids, val_ids, cfg, checkpoint_path=path, progress=False)["step"] == 1
    more = dataclasses.replace(cfg, max_seconds=0.3)
    m = pretrain(tiny_model(tokenizer), train_ids, val_ids, more, checkpoint_path=path, progress=False)
    assert m["step"] > 1 and m["stop_reason"] == "max_seconds" and 0.3 <= m["elapsed"] < 5.0


def test_resuming_with_another_model_or_data_is_refused(tokenizer, streams, tmp_path):
    train_ids, val_ids = streams
    path = tmp_path / "gpt.npz"
    cfg = PretrainConfig(max_steps=2, batch_size=4, warmup_steps=1)
    pretrain(tiny_model(tokenizer), train_ids, val_ids, cfg, checkpoint_path=path, progress=False)
    with pytest.raises(FingerprintMismatch, match="train_ids"):
        pretrain(tiny_model(tokenizer), train_ids[:-1], val_ids, cfg, checkpoint_path=path, progress=False)
    other = mg.GPT(mg.GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=32))
    with pytest.raises(FingerprintMismatch, match=r"model.n_layer: 2 -> 1"):
        pretrain(other, train_ids, val_ids, cfg, checkpoint_path=path, progress=False)
    with pytest.raises(FingerprintMismatch, match=r"pretrain.lr: 0.002 -> 0.001"):
        pretrain(tiny_model(tokenizer), train_ids, val_ids, dataclasses.replace(cfg, lr=1e-3), checkpoint_path=path,
                 progress=False)
    # what only says when to evaluate or save may change
    pretrain(tiny_model(tokenizer), train_ids, val_ids, dataclasses.replace(cfg, eval_interval=7), checkpoint_path=path,
             progress=False)


def test_existing_tokenizer_is_reused_and_a_conflicting_vocab_size_refused(tmp_path):
    path = tmp_path / "tokenizer.json"
    tok = load_or_build_tokenizer(path, REVIEWS, vocab_size=300)
    assert path.exists() and tok.vocab_size <= 300
    again = load_or_build_tokenizer(path, ["ignored"], vocab_size=None)
    assert again.encode(REVIEWS[0]) == tok.encode(REVIEWS[0])
    with pytest.raises(ValueError, match="vocabulary"):
        load_or_build_tokenizer(path, REVIEWS, vocab_size=tok.vocab_size + 1)
