"""Files: one way to write them safely, and one .npz convention for everything that holds arrays.

Every file the project writes goes through `atomic_write`: the bytes go to a temporary file in the target's
folder, which is then renamed over the target with os.replace. A crash mid-write leaves the old file or
the new one, never half of one.

An .npz file is named arrays plus one JSON object of metadata, stored as the string array "__meta__":
the GPT (`GPT.save`), the training checkpoints (`minigpt_np.resume`) and the reward model all use it. It is
written with np.savez and read with allow_pickle=False, so loading a file cannot run code.
"""
import contextlib
import json
import os

import numpy as np

META_KEY = "__meta__"


@contextlib.contextmanager
def atomic_write(path, mode="wb", **open_kwargs):
    """Open `<path>.<pid>.tmp` for writing; when the block ends without error, flush it to disk and rename it
    over `path`. On an error the temporary file is removed and `path` is untouched."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_npz(path, arrays, meta):
    """Write {name: ndarray} and the JSON-serialisable dict `meta` to an .npz file, atomically."""
    bad = [name for name, a in arrays.items() if not isinstance(a, np.ndarray) or a.dtype.hasobject]
    if bad:
        raise ValueError(f"arrays {bad} must be numeric or string ndarrays (no Python objects)")
    if META_KEY in arrays or "file" in arrays or "allow_pickle" in arrays:
        raise ValueError(f"array names {META_KEY!r}, 'file' and 'allow_pickle' are reserved by the format")
    try:
        meta_json = json.dumps(meta, sort_keys=True, default=_json_scalar)
    except (TypeError, ValueError) as e:
        raise ValueError(f"the metadata must be JSON-serialisable: {e}") from e
    with atomic_write(path) as f:
        np.savez(f, **arrays, **{META_KEY: np.array(meta_json)})


def _json_scalar(obj):
    if isinstance(obj, np.generic):       # a float32 loss or an int64 step in the metadata
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def load_npz(path):
    """Read a file written by `save_npz` -> (arrays: {name: ndarray}, meta: dict).

    A missing file raises FileNotFoundError; anything unreadable (truncated, not an .npz, pickled objects,
    no metadata) raises ValueError that names the file and says to re-create it.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no file at {path}; run the stage that writes it, or check the path")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        meta = json.loads(str(arrays.pop(META_KEY)))
    except Exception as e:  # BadZipFile, CRC errors, EOFError, a pickled object, no or bad metadata ...
        reason = f"no {META_KEY!r} entry" if isinstance(e, KeyError) else type(e).__name__
        raise ValueError(f"{path} is not a readable .npz file of this project ({reason}); it is corrupt, "
                         "truncated or foreign: delete it and re-run the stage that writes it") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: its metadata is not a JSON object; delete it and re-run the stage that writes it")
    return arrays, meta
