"""Files and checkpoints: lossless round trips, atomic writes, no pickles, and errors that say what to do."""
import json
import os
import zipfile

import numpy as np
import pytest

from minigpt_np import checkpoint
from minigpt_np.checkpoint import load_npz, save_npz
from minigpt_np.model import GPT, GPTConfig, load_checkpoint
from minigpt_np.optim import AdamW

CFG = dict(vocab_size=37, block_size=12, n_layer=2, n_head=2, n_embd=8)


def sample_arrays():
    rng = np.random.default_rng(0)
    return {
        "transformer.wte.weight": rng.standard_normal((5, 3)).astype(np.float32),
        "optim.t": np.array(7, dtype=np.int64),
        "weird name/with slash": np.arange(4, dtype=np.int16),
        "words_vocabulary": np.array(["a", "b c", "\u00e9t\u00e9"]),   # unicode arrays load without pickles
    }


def folder_listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_npz_round_trip_of_arrays_and_meta(tmp_path):
    arrays = sample_arrays()
    meta = {"format": "x", "step": np.int64(3), "loss": np.float32(0.5), "nested": {"a": [1, 2.5, None]}}
    path = tmp_path / "ck.npz"
    save_npz(path, arrays, meta)
    loaded, loaded_meta = load_npz(path)
    assert sorted(loaded) == sorted(arrays)
    for name, arr in arrays.items():
        assert loaded[name].dtype == arr.dtype and np.array_equal(loaded[name], arr), name
    assert loaded_meta == {"format": "x", "step": 3, "loss": 0.5, "nested": {"a": [1, 2.5, None]}}
    assert folder_listing(tmp_path) == ["ck.npz"]
    with np.load(path, allow_pickle=False) as npz:  # a plain npz any NumPy can read
        assert npz["__meta__"].dtype.kind == "U" and json.loads(str(npz["__meta__"]))["step"] == 3
    with pytest.raises(ValueError, match="reserved"):   # np.savez(file, **arrays) would choke on this name
        save_npz(path, {"file": np.ones(1)}, {})


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "ck.npz"
    save_npz(path, {"a": np.ones(3)}, {"v": "old"})
    before = path.read_bytes()
    real_write_array = np.lib.format.write_array
    calls = []

    def crash_on_second_array(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the first member is already in the temporary file: a real mid-write crash
            raise OSError("disk full")
        return real_write_array(*args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", crash_on_second_array)
    with pytest.raises(OSError, match="disk full"):
        save_npz(path, {"a": np.zeros(1000), "b": np.zeros(1000)}, {"v": "new"})
    assert len(calls) == 2
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert folder_listing(tmp_path) == ["ck.npz"]

    def crash(*args):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="rename failed"):
        save_npz(path, {"a": np.zeros(5)}, {"v": "new"})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert folder_listing(tmp_path) == ["ck.npz"]
    assert load_npz(path)[1] == {"v": "old"}


def test_missing_file_raises_file_not_found_naming_path_and_creator(tmp_path):
    path = tmp_path / "gpt_pretrained.npz"
    with pytest.raises(FileNotFoundError) as info:
        load_npz(path)
    assert str(path) in str(info.value) and "run the stage that writes it" in str(info.value)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(path)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "bare_npy"])
def test_corrupt_file_raises_value_error_saying_recreate(tmp_path, damage):
    path = tmp_path / "ck.npz"
    save_npz(path, {"a": np.arange(1000.0)}, {"v": 1})
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"PK\x03\x04 this is not really a zip archive" * 10)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        np.save(open(path, "wb"), np.arange(3))
    with pytest.raises(ValueError, match="corrupt") as info:
        load_npz(path)
    assert "delete it and re-run the stage" in str(info.value) and str(path) in str(info.value)


def test_npz_without_meta_is_refused(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, a=np.ones(2))
    with pytest.raises(ValueError, match="__meta__"):
        load_npz(path)


def test_object_arrays_are_refused_on_load_and_on_save(tmp_path):
    path = tmp_path / "evil.npz"
    meta = np.array(json.dumps({"v": 1}))
    np.savez(path, payload=np.array([{"pickled": True}], dtype=object), __meta__=meta)  # savez pickles objects
    with pytest.raises(ValueError, match="not a readable") as info:
        load_npz(path)
    assert "allow_pickle" not in str(info.value), "numpy's advice to load unsafely must not reach the user"
    with pytest.raises(ValueError, match="no Python objects"):
        save_npz(tmp_path / "out.npz", {"payload": np.array([None], dtype=object)}, {})
    assert not (tmp_path / "out.npz").exists()


def test_meta_must_be_json(tmp_path):
    with pytest.raises(ValueError, match="JSON"):
        save_npz(tmp_path / "ck.npz", {"a": np.ones(1)}, {"f": object()})
    assert folder_listing(tmp_path) == []


def logits_of(model, idx):
    return model(idx).data


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_model_round_trip_gives_identical_logits(tmp_path, dtype):
    model = GPT(GPTConfig(**CFG), dtype=dtype, seed=3)
    idx = np.random.default_rng(0).integers(0, CFG["vocab_size"], (2, 10))
    path = tmp_path / "gpt.npz"
    model.save(path, extra_meta={"step": 5})
    loaded = load_checkpoint(path)
    assert loaded.cfg == model.cfg and loaded.dtype == np.dtype(dtype)
    for (name, p), (lname, lp) in zip(model.named_parameters(), loaded.named_parameters()):
        assert name == lname and np.array_equal(p.data, lp.data), name
    err = float(np.max(np.abs(logits_of(loaded, idx) - logits_of(model, idx))))
    assert err == 0.0, f"logits differ by {err:.3e} after a round trip"
    assert folder_listing(tmp_path) == ["gpt.npz"]


def test_dtype_override_converts(tmp_path):
    model = GPT(GPTConfig(**CFG), dtype=np.float64, seed=3)
    model.save(tmp_path / "gpt.npz")
    loaded = load_checkpoint(tmp_path / "gpt.npz", dtype=np.float32)
    assert all(p.data.dtype == np.float32 for p in loaded.parameters())
    err = max(float(np.max(np.abs(p.data - lp.data))) for p, lp in zip(model.parameters(), loaded.parameters()))
    assert 0 < err < 1e-6, f"float32 conversion error {err:.3e}"


def test_value_head_model_and_optimizer_state_round_trip(tmp_path):
    import minigpt_np as mg

    model = GPT(GPTConfig(**CFG, value_head=True), dtype=np.float64, seed=4)
    idx = np.random.default_rng(1).integers(0, CFG["vocab_size"], (2, 6))
    opt = AdamW(model.named_parameters(), lr=1e-2)
    for p in model.parameters():
        p.grad = np.full_like(p.data, 0.1)
    opt.step()
    path = tmp_path / "ppo.npz"
    model.save(path, extra_arrays=opt.state_dict(), extra_meta={"step": 1})
    loaded = load_checkpoint(path)
    arrays, meta = load_npz(path)
    extras = {k: v for k, v in arrays.items() if k.startswith("optim.")}
    assert loaded.cfg.value_head and meta["step"] == 1 and meta["format"] == "minigpt_np GPT"
    assert sorted(extras) == sorted(opt.state_dict())
    _, values = model.logits_and_values(idx)
    _, lvalues = loaded.logits_and_values(idx)
    assert np.array_equal(values.data, lvalues.data)
    opt2 = AdamW(loaded.named_parameters(), lr=1e-2)
    opt2.load_state_dict(extras)
    assert opt2.t == 1 and all(np.array_equal(a, b) for a, b in zip(opt.m, opt2.m))
    out = mg.generate(loaded, idx, max_new_tokens=3, temperature=0.0)
    assert out.shape == (2, 9) and np.array_equal(out, mg.generate(model, idx, max_new_tokens=3, temperature=0.0))


def test_save_refuses_clashing_extras(tmp_path):
    model = GPT(GPTConfig(**CFG), seed=0)
    with pytest.raises(ValueError, match="transformer.wte.weight"):
        model.save(tmp_path / "x.npz", extra_arrays={"transformer.wte.weight": np.ones(1)})
    with pytest.raises(ValueError, match="config"):
        model.save(tmp_path / "x.npz", extra_meta={"config": {}})
    assert folder_listing(tmp_path) == []


def rewrite_meta(path, change):
    arrays, meta = load_npz(path)
    change(meta, arrays)
    save_npz(path, arrays, meta)


@pytest.mark.parametrize("case", ["shape_mismatch", "unknown_field", "missing_array", "wrong_format"])
def test_incompatible_checkpoint_raises_value_error_naming_the_mismatch(tmp_path, case):
    path = tmp_path / "gpt.npz"
    GPT(GPTConfig(**CFG), seed=0).save(path)
    changes = {
        "shape_mismatch": (lambda m, a: m["config"].update(vocab_size=50), "transformer.wte.weight"),
        "unknown_field": (lambda m, a: m["config"].update(rotary=True), "rotary"),
        "missing_array": (lambda m, a: a.pop("transformer.h.1.mlp.c_fc.bias"), "transformer.h.1.mlp.c_fc.bias"),
        "wrong_format": (lambda m, a: m.update(format="something_else"), "something_else"),
    }
    change, expected_in_message = changes[case]
    rewrite_meta(path, change)
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    assert expected_in_message in str(info.value), str(info.value)


def test_model_save_method_writes_a_loadable_checkpoint(tmp_path):
    model = GPT(GPTConfig(**CFG), seed=2)
    model.save(tmp_path / "m.npz")
    assert load_checkpoint(tmp_path / "m.npz").cfg == model.cfg


def test_written_file_is_a_zip_of_npy_members(tmp_path):
    path = tmp_path / "ck.npz"
    save_npz(path, {"a": np.ones(2)}, {})
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["__meta__.npy", "a.npy"]
    assert checkpoint.META_KEY == "__meta__"
