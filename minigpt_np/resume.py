"""Exact resume, one design for pretraining and for PPO.

A training checkpoint is a GPT file (`GPT.save`) that also holds the optimizer's moments and, in its metadata
under "training":

    fingerprint  what the run is built from: the options that shape its result and hashes of its inputs
    state        the loop's own counters (step, finished, history, ...), as JSON
    rngs         the state of every random generator the loop draws from

Started again with the same command, a loop loads all of it and continues. Nothing else influences an update,
so the run ends bit for bit where an uninterrupted one would. A checkpoint with another fingerprint is
refused with every difference named: resuming it would silently mix two runs.
"""
import hashlib
import json
import os

import numpy as np

from .checkpoint import load_npz
from .model import config_of, parameter_shapes


class FingerprintMismatch(ValueError):
    """A checkpoint was built from other options or inputs than the run that wants to resume it."""


def sha256_of_array(x):
    """sha256 of an array's dtype, shape and bytes: a fingerprint of a token stream or a set of prompts."""
    x = np.ascontiguousarray(x)
    return hashlib.sha256(f"{x.dtype.str}{x.shape}".encode() + x.tobytes()).hexdigest()


def sha256_of_file(path):
    """sha256 of a file's bytes, read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_training_checkpoint(path, model, optimizer, *, fingerprint, state, rngs):
    """Write the model, optimizer.state_dict(), the fingerprint, the loop's JSON state and the generators' states."""
    training = {"fingerprint": fingerprint, "state": state,
                "rngs": {name: rng.bit_generator.state for name, rng in rngs.items()}}
    model.save(path, extra_arrays=optimizer.state_dict(), extra_meta={"training": training})


def training_state(path):
    """The loop state stored in a training checkpoint (e.g. {"step": 40, "finished": True, ...}); None if no file."""
    if not os.path.exists(path):
        return None
    return _training_meta(path, load_npz(path)[1])["state"]


def resume(path, model, optimizer, *, fingerprint, rngs):
    """Load a training checkpoint into the live model, optimizer and generators -> the loop's state.

    Returns None when there is no checkpoint (a fresh start). Raises FingerprintMismatch when the checkpoint
    was built from other options or inputs than `fingerprint`.
    """
    if not os.path.exists(path):
        return None
    arrays, meta = load_npz(path)
    training = _training_meta(path, meta)
    changes = differences(training["fingerprint"], json.loads(json.dumps(fingerprint)))   # tuples as JSON lists
    if changes:
        raise FingerprintMismatch(f"{path} was built from other options or inputs ({'; '.join(changes)}), so it "
                                  "cannot be resumed: use a new output folder, or delete it to start again")
    if config_of(path, meta) != model.cfg:
        raise FingerprintMismatch(f"{path} holds a model of another shape ({meta['config']}) than the run's "
                                  f"({model.cfg}); use a new output folder, or delete it to start again")
    model.load_state_dict({name: arrays[name] for name in parameter_shapes(model.cfg)})
    optimizer.load_state_dict(arrays)
    for name, rng in rngs.items():
        rng.bit_generator.state = training["rngs"][name]
    return training["state"]


def _training_meta(path, meta):
    if "training" not in meta:
        raise ValueError(f"{path} holds a model but no training state, so it cannot be resumed; move it away "
                         "or use a new output folder")
    return meta["training"]


def differences(stored, current, prefix=""):
    """Every key of two nested dicts whose values differ, as "key: stored -> current" lines."""
    changes = []
    for key in sorted(set(stored) | set(current), key=str):
        old, new = stored.get(key, "(absent)"), current.get(key, "(absent)")
        if isinstance(old, dict) and isinstance(new, dict):
            changes += differences(old, new, f"{prefix}{key}.")
        elif old != new:
            changes.append(f"{prefix}{key}: {_short(old)} -> {_short(new)}")
    return changes


def _short(value):
    text = repr(value)
    return text if len(text) <= 20 else text[:12] + "..."
