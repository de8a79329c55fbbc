"""Byte-level BPE tokenizer: lossless round trips, vocabulary bound, save/load, determinism, clear errors."""
import json
import os
import subprocess
import sys

import pytest

from minigpt_np.tokenizer import EOS, Tokenizer, load_tokenizer, train_tokenizer

SENTENCES = [
    "A warm, funny and surprisingly tender film about growing up in a small town.",
    "The plot is thin, the dialogue is worse, and the ending drags on forever.",
    "An unexpected delight: the cast is terrific and the script never talks down to its audience.",
    "It's the kind of movie that makes you want to call your mother.",
    "Too long by half an hour, and nobody seems to know what the story is about.",
    "The director's eye for detail makes every scene feel alive.",
    "A tedious exercise in style over substance.",
    "Beautifully shot, but the characters are as flat as the cardboard sets.",
    "One of the best performances of the year, quiet and devastating.",
    "The jokes land more often than not, and the pacing is brisk.",
    "I wanted to like it, but the film never finds its footing.",
    "A smart, sharp thriller that keeps you guessing until the very last frame.",
    "The movie is so busy being clever that it forgets to be entertaining.",
    "Her performance alone is worth the price of admission.",
    "A gorgeous, moving story told with restraint and grace.",
    "The sequel repeats every mistake of the original and adds a few new ones.",
    "Funny, heartfelt and never less than charming.",
    "The action scenes are loud, confusing and strangely boring.",
    "It is a film about friendship, and it earns every one of its tears.",
    "Nothing here is new, but it is all done with real affection.",
    "The soundtrack is the best thing about this dreary, overlong drama.",
    "A clever premise wasted on a lazy script.",
    "The performances are strong, the writing is stronger, and the direction is confident.",
    "You will forget this movie before you reach the parking lot.",
    "Few films this year have been as ambitious or as rewarding.",
    "The story wanders, but the characters are good company.",
    "A mess of a movie, with a few moments of genuine wit.",
    "It's rare to see a comedy this sweet that is also this sharp.",
    "The film is handsome and well acted, but it never comes to life.",
    "An honest, unsentimental look at a family coming apart.",
]
TEXTS = SENTENCES * 3  # repeats give merges above min_frequency


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=400, min_frequency=2)


def test_round_trip_of_arbitrary_unicode_emoji_and_eos(tok):
    samples = [
        "Plain ASCII, with punctuation!?",
        "  leading spaces and\ttabs\nand newlines\r\n",
        "Ünïcödé: naïve café, Straße, ½ ≠ ¾, 日本語の映画, Ελληνικά, עברית, ☃",
        "emoji 🎬🍿👍🏽 and a family 👨‍👩‍👧 (zero-width joiners)",
        f"first review{EOS}second review{EOS}",
        "",
    ]
    for text in samples:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text, f"round trip failed for {text!r}: {tok.decode(ids)!r}"


def test_eos_is_one_special_token_and_decodes(tok):
    assert tok.encode(EOS) == [tok.eos_token_id]
    assert tok.decode([tok.eos_token_id]) == EOS
    ids = tok.encode(f"good{EOS}bad")
    assert ids.count(tok.eos_token_id) == 1


def test_merges_compress_the_training_text(tok):
    text = " ".join(SENTENCES)
    chars_per_token = len(text) / len(tok.encode(text))
    assert chars_per_token > 2.0, f"only {chars_per_token:.2f} chars/token: merges were not learned"


def test_vocab_size_is_respected():
    for vocab_size in (300, 500):
        tok = train_tokenizer(TEXTS, vocab_size=vocab_size)
        assert 257 < tok.vocab_size <= vocab_size, f"asked {vocab_size}, got {tok.vocab_size}"
        assert max(max(ids) for ids in tok.encode_batch(SENTENCES)) < tok.vocab_size
    assert train_tokenizer(TEXTS, vocab_size=300).vocab_size == 300


def test_encode_batch_equals_encode(tok):
    assert tok.encode_batch(SENTENCES) == [tok.encode(s) for s in SENTENCES]


def test_save_and_load_give_identical_ids(tok, tmp_path):
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"], "temporary file left behind"
    loaded = load_tokenizer(path)
    assert isinstance(loaded, Tokenizer)
    assert (loaded.vocab_size, loaded.eos_token_id) == (tok.vocab_size, tok.eos_token_id)
    text = " ".join(SENTENCES) + EOS + "🎬 unseen wörds"
    assert loaded.encode(text) == tok.encode(text)
    assert load_tokenizer(tmp_path).encode(text) == tok.encode(text)  # a folder means folder/tokenizer.json


def test_training_is_deterministic_across_processes(tok, tmp_path):
    # a fresh process gets fresh hash seeds (Python's and Rust's), the likely source of nondeterminism
    script = (
        "import json, sys; from minigpt_np.tokenizer import train_tokenizer; "
        "texts = json.load(open(sys.argv[1])); "
        "train_tokenizer(texts, vocab_size=400, min_frequency=2).save(sys.argv[2])"
    )
    (tmp_path / "texts.json").write_text(json.dumps(TEXTS))
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "texts.json"), str(tmp_path / "tok.json")],
                   check=True, cwd=root)
    assert load_tokenizer(tmp_path / "tok.json").hf.to_str() == tok.hf.to_str()
    assert train_tokenizer(TEXTS, vocab_size=400, min_frequency=2).hf.to_str() == tok.hf.to_str()


def test_missing_file_raises_file_not_found_with_a_hint(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_tokenizer"):
        load_tokenizer(tmp_path / "nope.json")


def test_garbage_file_raises_value_error(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": ')
    with pytest.raises(ValueError, match="not a valid tokenizer.json"):
        load_tokenizer(path)


def test_bad_arguments_raise_value_error(tok):
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(TEXTS, vocab_size=100)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError, match="single str"):
        train_tokenizer("one long string")


def test_save_failure_keeps_old_file_and_leaves_no_temp(tok, tmp_path, monkeypatch):
    path = tmp_path / "tokenizer.json"
    path.write_text("old")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        tok.save(path)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json"]
