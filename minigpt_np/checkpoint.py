"""Checkpoints: one .npz of named arrays plus a JSON `__meta__` entry holding the GPTConfig, no pickles.

Writes are atomic: the archive goes to a temporary file in the target's folder, is flushed and fsynced, then
renamed over the target with os.replace, so a crash mid-write leaves either the old file or the new one.
Reads use allow_pickle=False, so a file cannot run code when it is loaded.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import zipfile

import numpy as np

FORMAT = "minigpt_np"
VERSION = 1
META_KEY = "__meta__"
_RESERVED_META = ("format", "version", "config", "dtype")


def _json_default(obj):
    # numpy scalars (a float32 loss, an int64 step) are common in meta; store them as plain numbers
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


@contextlib.contextmanager
def atomic_write(path, mode="wb", **open_kwargs):
    """Open a temporary file beside `path`; when the block ends without error, fsync it and rename it over `path`.

    A crash or an exception mid-write leaves the old file (or none) and no temporary file: every file this
    project writes (checkpoints, tokenizer.json, reward.npz, logs, the corpus cache) goes through here.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)   # mkstemp makes it owner-only; give it a normal file's permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable; not every platform can fsync a directory
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def save_npz(path, arrays, meta):
    """Write {name: ndarray} and the JSON-serializable dict meta to path (.npz, uncompressed), atomically."""
    path = os.fspath(path)
    if META_KEY in arrays:
        raise ValueError(f"{META_KEY!r} is reserved for the metadata; rename that array")
    for name, arr in arrays.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"array names must be non-empty strings, got {name!r}")
        if not isinstance(arr, np.ndarray) or arr.dtype.hasobject:
            raise ValueError(f"array {name!r} must be a numeric ndarray (no Python objects), got {type(arr).__name__}")
    try:
        meta_json = json.dumps(meta, sort_keys=True, default=_json_default)
    except (TypeError, ValueError) as e:
        raise ValueError(f"meta must be JSON-serializable: {e}") from e
    entries = dict(arrays)
    entries[META_KEY] = np.frombuffer(meta_json.encode("utf-8"), dtype=np.uint8)

    with atomic_write(path, "wb") as f:
        # The same archive np.savez writes, built directly: checkpoint keys are not Python identifiers and
        # could collide with savez's own keyword arguments ("file", "allow_pickle").
        with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, arr in entries.items():
                with zf.open(name + ".npy", mode="w", force_zip64=True) as member:
                    np.lib.format.write_array(member, arr, allow_pickle=False)


def load_npz(path):
    """Read a file written by save_npz -> (arrays: dict[str, ndarray], meta: dict)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no checkpoint at {path}. Checkpoints are written by save_checkpoint / GPT.save (the pretraining "
            "and PPO stages write them); check the path or run the stage that creates it."
        )
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory; pass the path of the .npz checkpoint file inside it")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except Exception as e:  # BadZipFile, zlib/CRC errors, EOFError, pickled-object refusal, a bare .npy, ...
        raise ValueError(
            f"{path} is not a readable .npz checkpoint ({type(e).__name__}: {e}). It is corrupt, truncated or "
            "not a minigpt_np file: delete it and re-create it by re-running the stage that writes it."
        ) from e
    if META_KEY not in arrays:
        raise ValueError(
            f"{path} has no {META_KEY!r} entry, so it was not written by minigpt_np (or it is corrupt): "
            "delete it and re-create it."
        )
    raw = arrays.pop(META_KEY)
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path}: the {META_KEY!r} entry is not valid JSON ({e}); the file is corrupt, re-create it") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: {META_KEY!r} must hold a JSON object, got {type(meta).__name__}; re-create the file")
    return arrays, meta


def save_checkpoint(model, path, extra_arrays=None, extra_meta=None):
    """Save model.state_dict() with its GPTConfig and dtype (and optional extra arrays / meta) to one .npz.

    extra_arrays (e.g. optimizer.state_dict(), keys "optim.*") must not reuse parameter names; extra_meta
    (e.g. {"step": 1200, "tokenizer": "tokenizer.json"}) must not reuse format, version, config or dtype.
    """
    arrays = model.state_dict()
    extra_arrays = dict(extra_arrays or {})
    clash = sorted(set(extra_arrays) & set(arrays))
    if clash:
        raise ValueError(f"extra_arrays reuse parameter names {clash}; prefix them (e.g. 'optim.')")
    extra_meta = dict(extra_meta or {})
    clash = sorted(set(extra_meta) & set(_RESERVED_META))
    if clash:
        raise ValueError(f"extra_meta keys {clash} are reserved by the checkpoint format; rename them")
    dtype = getattr(model, "dtype", None)
    if dtype is None:
        dtype = next(iter(arrays.values())).dtype
    meta = {"format": FORMAT, "version": VERSION, "config": dataclasses.asdict(model.cfg), "dtype": str(np.dtype(dtype))}
    meta.update(extra_meta)
    save_npz(path, {**arrays, **extra_arrays}, meta)


def load_checkpoint(path, dtype=None, with_extras=False):
    """Rebuild the GPT stored at path -> GPT, or (GPT, extra_arrays, meta) when with_extras.

    dtype: None keeps the stored dtype; np.float32 / np.float64 converts. A model saved with a value head comes
    back with one (generate ignores it). Arrays that are not parameters of the stored config are returned as
    extra_arrays (e.g. the "optim.*" state).
    """
    from .model import GPT, GPTConfig

    path = os.fspath(path)
    arrays, meta = load_npz(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} model checkpoint (format {meta.get('format')!r})")
    if meta.get("version") != VERSION:
        raise ValueError(
            f"{path} has checkpoint format version {meta.get('version')!r}; this code reads version {VERSION}. "
            "Re-create it with this version of minigpt_np."
        )
    config = meta.get("config")
    if not isinstance(config, dict):
        raise ValueError(f"{path}: meta has no 'config' object; the file is corrupt, re-create it")
    known = {f.name for f in dataclasses.fields(GPTConfig)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(
            f"{path}: stored config has fields {unknown} that this GPTConfig does not know "
            f"(known: {sorted(known)}); it was written by an incompatible version"
        )
    try:
        cfg = GPTConfig(**config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: stored config {config} is not a valid GPTConfig: {e}") from e
    try:
        dtype = np.dtype(meta.get("dtype", "float32") if dtype is None else dtype)
    except TypeError as e:
        raise ValueError(f"{path}: unknown dtype {meta.get('dtype')!r}") from e
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")

    model = GPT(cfg, dtype=dtype, seed=0)
    expected = {name: p.data.shape for name, p in model.named_parameters()}
    missing = sorted(k for k in expected if k not in arrays)
    misshaped = [f"{k}: {arrays[k].shape} in the file, config expects {shape}"
                 for k, shape in expected.items() if k in arrays and arrays[k].shape != shape]
    if missing or misshaped:
        problems = []
        if missing:
            problems.append(f"missing arrays {missing}")
        if misshaped:
            more = f"; ... {len(misshaped) - 4} more" if len(misshaped) > 4 else ""
            problems.append(f"mis-shaped arrays [{'; '.join(misshaped[:4])}{more}]")
        raise ValueError(
            f"{path}: the stored arrays do not match the stored config {config}: {', '.join(problems)}. "
            "The file mixes two models; re-create it."
        )
    model.load_state_dict({k: arrays[k] for k in expected})
    if not with_extras:
        return model
    extras = {k: v for k, v in arrays.items() if k not in expected}
    return model, extras, meta
