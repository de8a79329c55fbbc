"""Pretraining: fit the GPT as a next-token language model on a token stream, resumably.

One update, at step s with learning rate lr(s) (linear warmup, then cosine decay to min_lr):

    windows ~ sample_windows(train_ids, T, B, rng)          (B, T+1), offsets from a seeded rng
    loss    = cross_entropy(model(windows[:, :-1]), windows[:, 1:])    mean nats per target token
    g       = clip(dloss/dtheta, global norm <= grad_clip)
    theta   = AdamW(theta, g, lr(s)), weight decay on matrices and embeddings only

The checkpoint holds everything the next update depends on: weights, AdamW moments and step counts, the
batch sampler's generator state, the step and the elapsed time. A run killed at any moment and started
again with the same arguments therefore continues from its last checkpoint and ends with the same weights,
bit for bit, as a run that was never interrupted. A non-finite loss or gradient stops training with
`TrainingDiverged` before anything is written, so the file keeps the last good state.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import time
from typing import Optional

import numpy as np

from . import functional as F
from .checkpoint import load_checkpoint, load_npz, save_checkpoint
from .data import sample_windows, validation_windows
from .optim import AdamW, clip_grad_norm, lr_schedule
from .tensor import no_grad

logger = logging.getLogger(__name__)

META_KEY = "pretrain"


@dataclasses.dataclass
class PretrainConfig:
    max_steps: Optional[int] = 2000       # optimizer updates; the cosine schedule reaches min_lr here (None: time only)
    max_seconds: Optional[float] = None   # training-time budget summed over resumes: a hard stop that also keeps
                                          # the schedule from falling behind the clock (see learning_rate)
    batch_size: int = 16                  # windows per update, B (16 beat 32 per token seen, measured)
    block_size: Optional[int] = None      # tokens of context per window, T (None: the model's block_size)
    lr: float = 2e-3                      # peak learning rate, reached after warmup
    min_lr: float = 2e-4                  # learning rate at the end of the cosine decay
    warmup_steps: int = 50                # linear warmup from 0 to lr over this many updates
    weight_decay: float = 0.1             # AdamW decoupled decay on matrices and embeddings (never biases, gains)
    beta1: float = 0.9                    # AdamW first-moment decay
    beta2: float = 0.95                   # AdamW second-moment decay (0.95 as GPT-3 / nanoGPT: steadier at high lr)
    grad_clip: float = 1.0                # rescale gradients so their global L2 norm is at most this
    eval_interval: int = 100              # validation loss every this many updates, and after the last one
    eval_windows: Optional[int] = 512     # validation windows per evaluation, spread over the stream (None: all)
    checkpoint_interval: int = 100        # write the checkpoint every this many updates, and after the last one
    seed: int = 0                         # seeds the batch sampler: same seed, data and config -> same weights

    def __post_init__(self):
        if self.max_steps is None and self.max_seconds is None:
            raise ValueError("PretrainConfig needs a budget: max_steps, max_seconds or both")
        for name in ("batch_size", "eval_interval", "checkpoint_interval") + (("max_steps",) if self.max_steps is not None else ()):
            if getattr(self, name) < 1:
                raise ValueError(f"PretrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0 or (self.max_steps is not None and self.warmup_steps > self.max_steps):
            raise ValueError(f"PretrainConfig.warmup_steps must lie in [0, max_steps={self.max_steps}], "
                             f"got {self.warmup_steps}")
        if not 0.0 <= self.min_lr <= self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"PretrainConfig.max_seconds must be > 0 or None, got {self.max_seconds}")
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"PretrainConfig.block_size must be >= 1 or None, got {self.block_size}")


# Fields that may change between a run and its resumption without breaking anything but the bit-for-bit claim
# (max_steps also reshapes the rest of the schedule): they only say when to stop, evaluate or save.
_BOOKKEEPING = ("max_steps", "max_seconds", "eval_interval", "eval_windows", "checkpoint_interval")


def learning_rate(cfg, step, elapsed):
    """Learning rate of update `step` (0-based) after `elapsed` seconds of training.

    A step budget S = max_steps: warmup over W = warmup_steps updates, then cosine decay, `optim.lr_schedule`:
        lr(s) = lr s / W  for s < W,  then  min_lr + (lr - min_lr) (1 + cos(pi (s - W) / (S - W))) / 2
    It depends on the step alone, so a run is reproducible by seed.
    A time budget alone, with p = min(1, elapsed / max_seconds) (the warmup still counts updates):
        lr = min(1, s / W) (min_lr + (lr - min_lr) (1 + cos(pi p)) / 2)
    The run anneals to min_lr just as its time runs out on any machine, but depends on the machine's speed.
    Both budgets: the schedule runs on the step budget's clock, but never behind the wall clock,
        lr(max(s, floor(S elapsed / max_seconds)))
    so while the run keeps ahead of the time plan it is the reproducible step schedule, and on a machine slower
    than planned it still ends annealed and on time.
    """
    return _paced_learning_rate(cfg, step, elapsed)[0]


def _paced_learning_rate(cfg, step, elapsed):
    """(lr, time_paced): time_paced says the time budget, not the step count, set this learning rate."""
    if cfg.max_steps is None:
        p = min(1.0, elapsed / cfg.max_seconds)
        warmup = min(1.0, step / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        return warmup * (cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * p))), True
    effective = step
    if cfg.max_seconds is not None:
        effective = max(step, math.floor(cfg.max_steps * elapsed / cfg.max_seconds))
    lr = lr_schedule(effective, max_lr=cfg.lr, warmup_steps=cfg.warmup_steps, total_steps=cfg.max_steps,
                     min_lr=cfg.min_lr)
    return lr, effective != step


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite; the checkpoint on disk was left untouched."""


def fingerprint(ids):
    """sha256 of the int32 token stream: a resumed run must see the very same training data."""
    return hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int32).tobytes()).hexdigest()


def evaluate(model, windows, batch_size=32):
    """Mean next-token cross-entropy (nats/token) over fixed windows (W, T+1), in chunks of batch_size, no graph."""
    was_training, model.training = model.training, False
    total, count = 0.0, 0
    try:
        with no_grad():
            for i in range(0, len(windows), batch_size):
                chunk = windows[i:i + batch_size]
                loss = F.cross_entropy(model(chunk[:, :-1]), chunk[:, 1:])
                n = chunk[:, 1:].size
                total += float(loss.data) * n
                count += n
    finally:
        model.training = was_training
    return total / count


def checkpoint_status(path):
    """The "pretrain" metadata stored in a checkpoint (step, finished, val_loss, history, ...), or None if the
    file does not exist or was not written by `pretrain`."""
    if path is None or not os.path.exists(path):
        return None
    _, meta = load_npz(path)
    return meta.get(META_KEY)


def _is_finished(state, cfg):
    return ((cfg.max_steps is not None and state["step"] >= cfg.max_steps)
            or (cfg.max_seconds is not None and state["elapsed"] >= cfg.max_seconds))


def _rng_state_from_json(state):
    # JSON keeps the 128-bit PCG64 integers exactly (Python ints), so the generator resumes where it stopped
    return {"bit_generator": state["bit_generator"], "state": dict(state["state"]),
            "has_uint32": state["has_uint32"], "uinteger": state["uinteger"]}


def _restore(model, optimizer, rng, path, cfg, train_fp):
    """Load weights, optimizer and rng state from path into the live objects -> the stored pretrain state."""
    stored_model, extras, meta = load_checkpoint(path, dtype=model.dtype, with_extras=True)
    state = meta.get(META_KEY)
    if state is None:
        raise ValueError(f"{path} holds a model but no pretraining state (it was not written by pretrain); "
                         "pass another checkpoint_path or delete the file to start afresh")
    if dataclasses.asdict(stored_model.cfg) != dataclasses.asdict(model.cfg):
        raise ValueError(f"{path} was trained with GPTConfig {dataclasses.asdict(stored_model.cfg)}, but the model "
                         f"passed in has {dataclasses.asdict(model.cfg)}. Build the model from the checkpoint "
                         "(mg.load_checkpoint) or use a new checkpoint path.")
    if state["train_fingerprint"] != train_fp:
        raise ValueError(f"{path} was trained on a different token stream (tokenizer, corpus, split or seed "
                         "changed), so it cannot be resumed exactly. Use a new output path or delete the file.")
    changed = {k: (state["config"].get(k), v) for k, v in dataclasses.asdict(cfg).items()
               if k not in _BOOKKEEPING and state["config"].get(k) != v}
    if changed:
        logger.warning("resuming %s with changed settings %s (stored, now): the run will not match an "
                       "uninterrupted one", path, changed)
    model.load_state_dict(stored_model.state_dict())
    optimizer.load_state_dict(extras)
    rng.bit_generator.state = _rng_state_from_json(state["rng_state"])
    if state.get("model_rng_state") is not None and hasattr(model, "_rng"):
        model._rng.bit_generator.state = _rng_state_from_json(state["model_rng_state"])
    return state


def _check_finite_weights(model, step):
    for name, p in model.named_parameters():
        if not np.isfinite(p.data).all():
            raise TrainingDiverged(f"parameter {name} holds NaN or inf after step {step}; not saving it")


def pretrain(model, train_ids, val_ids, cfg, checkpoint_path=None, progress=True, log=None):
    """Train model (a GPT) on the int token stream train_ids; evaluate on fixed windows of val_ids.

    checkpoint_path: .npz written every cfg.checkpoint_interval updates and at the end (weights, AdamW state,
    sampler state, step, elapsed time, history). If it already exists the run resumes from it; if that run had
    already finished, nothing is trained and its stored metrics are returned.
    progress: show a tqdm bar with the loss and tokens/s. log: callable receiving one dict per evaluation.

    Returns a dict: step, tokens (seen in total), train_loss (mean over the updates since the previous evaluation
    in this session), val_loss
    (nats/token), tokens_per_s (this session, excluding evaluation), elapsed (s, all sessions),
    stop_reason ("max_steps" or "max_seconds"), time_paced_updates (updates whose learning rate the time budget
    set, see learning_rate; 0 means a step-budget run is reproducible), history (one dict per evaluation).
    Raises TrainingDiverged on a NaN/inf loss or gradient norm, leaving the checkpoint at its last good state.
    """
    T = cfg.block_size or model.cfg.block_size
    if T > model.cfg.block_size:
        raise ValueError(f"PretrainConfig.block_size {T} exceeds the model's block_size {model.cfg.block_size}")
    train_ids = np.ascontiguousarray(train_ids, dtype=np.int32)
    val_ids = np.ascontiguousarray(val_ids, dtype=np.int32)
    for name, ids in (("train_ids", train_ids), ("val_ids", val_ids)):
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError(f"{name} must be a non-empty 1-D token stream, got shape {ids.shape}")
        if ids.min() < 0 or ids.max() >= model.cfg.vocab_size:
            raise ValueError(f"{name} has ids outside [0, {model.cfg.vocab_size}) (min {ids.min()}, max "
                             f"{ids.max()}): the tokenizer and the model's vocab_size disagree")
    val_windows = validation_windows(val_ids, T, cfg.eval_windows)
    train_fp = fingerprint(train_ids)

    optimizer = AdamW(model.named_parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    state = {"step": 0, "elapsed": 0.0, "tokens": 0, "history": [], "val_loss": None, "stop_reason": None,
             "time_paced_updates": 0}
    if checkpoint_path is not None and os.path.exists(checkpoint_path):
        state = _restore(model, optimizer, rng, checkpoint_path, cfg, train_fp)
        if _is_finished(state, cfg):
            logger.info("%s is a finished run (step %d); nothing to train", checkpoint_path, state["step"])
            return _metrics(state, tokens_per_s=None)
        logger.info("resuming %s from step %d", checkpoint_path, state["step"])
        state["stop_reason"] = None  # a budget raised since: this session decides anew when to stop
    last_saved = state["step"] if checkpoint_path is not None and os.path.exists(checkpoint_path) else None

    def save():
        _check_finite_weights(model, state["step"])
        state["finished"] = _is_finished(state, cfg)
        state["config"] = dataclasses.asdict(cfg)
        state["train_fingerprint"] = train_fp
        state["rng_state"] = rng.bit_generator.state
        model_rng = getattr(model, "_rng", None)  # drives dropout; part of the exact-resume state
        state["model_rng_state"] = None if model_rng is None else model_rng.bit_generator.state
        save_checkpoint(model, checkpoint_path, extra_arrays=optimizer.state_dict(), extra_meta={META_KEY: state})

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.max_steps, initial=state["step"], desc="pretrain", unit="step", dynamic_ncols=True)
    B = cfg.batch_size
    session_start = time.perf_counter()
    elapsed_before = state["elapsed"]

    def elapsed():
        return elapsed_before + time.perf_counter() - session_start

    train_seconds, session_tokens, interval_losses = 0.0, 0, []
    was_training, model.training = model.training, True
    try:
        while True:
            t0 = time.perf_counter()
            step = state["step"]
            lr, time_paced = _paced_learning_rate(cfg, step, elapsed())
            state["time_paced_updates"] += time_paced   # > 0: this run's weights depend on the machine's speed
            windows = sample_windows(train_ids, T, B, rng)                          # (B, T+1)
            loss = F.cross_entropy(model(windows[:, :-1]), windows[:, 1:])
            loss_value = float(loss.data)
            if not math.isfinite(loss_value):
                raise TrainingDiverged(_diverged_message("loss", loss_value, step, checkpoint_path, last_saved, cfg))
            model.zero_grad()
            loss.backward()
            grad_norm = clip_grad_norm(model.parameters(), cfg.grad_clip)
            if not math.isfinite(grad_norm):
                raise TrainingDiverged(_diverged_message("gradient norm", grad_norm, step, checkpoint_path,
                                                         last_saved, cfg))
            optimizer.step(lr)
            model.zero_grad()  # gradients are dead weight between updates
            state["step"] = step + 1
            state["tokens"] += B * T
            session_tokens += B * T
            train_seconds += time.perf_counter() - t0
            interval_losses.append(loss_value)
            tokens_per_s = session_tokens / train_seconds
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.3f}", val=_fmt(state["val_loss"]), tok_s=f"{tokens_per_s:,.0f}",
                                refresh=False)

            # The only place the run decides to stop, so the last update is always evaluated and saved.
            if cfg.max_steps is not None and state["step"] >= cfg.max_steps:
                state["stop_reason"] = "max_steps"
            elif cfg.max_seconds is not None and elapsed() >= cfg.max_seconds:
                state["stop_reason"] = "max_seconds"
            stopping = state["stop_reason"] is not None
            if state["step"] % cfg.eval_interval == 0 or stopping:
                state["val_loss"] = evaluate(model, val_windows, B)
                record = {"step": state["step"], "tokens": state["tokens"],
                          "train_loss": float(np.mean(interval_losses)), "val_loss": state["val_loss"], "lr": lr,
                          "grad_norm": grad_norm, "tokens_per_s": tokens_per_s, "elapsed": elapsed()}
                state["history"].append(record)
                interval_losses = []
                if bar is not None:
                    bar.set_postfix(loss=f"{loss_value:.3f}", val=_fmt(state["val_loss"]),
                                    tok_s=f"{tokens_per_s:,.0f}")
                logger.debug("step %d: train %.4f val %.4f nats/token, %.0f tokens/s", record["step"],
                            record["train_loss"], record["val_loss"], tokens_per_s)
                if log is not None:
                    log(record)
            if checkpoint_path is not None and (state["step"] % cfg.checkpoint_interval == 0 or stopping):
                state["elapsed"] = elapsed()
                save()
                last_saved = state["step"]
            if stopping:
                break
    finally:
        model.training = was_training
        if bar is not None:
            bar.close()
    state["elapsed"] = elapsed()
    return _metrics(state, tokens_per_s=session_tokens / train_seconds)


def _fmt(x):
    return "-" if x is None else f"{x:.3f}"


def _diverged_message(what, value, step, path, last_saved, cfg):
    kept = (f"The checkpoint {path} still holds step {last_saved}, the last good state."
            if last_saved is not None else "No checkpoint was written yet.")
    return (f"{what} is {value} in update {step + 1}: training diverged. {kept} Lower the learning rate (now {cfg.lr}) "
            f"or lengthen the warmup (now {cfg.warmup_steps} steps), then run again.")


def _metrics(state, tokens_per_s):
    history = state["history"]
    return {"step": state["step"], "tokens": state["tokens"],
            "train_loss": history[-1]["train_loss"] if history else None, "val_loss": state["val_loss"],
            "tokens_per_s": tokens_per_s, "elapsed": state["elapsed"], "stop_reason": state["stop_reason"],
            "time_paced_updates": state.get("time_paced_updates", 0),
            "history": list(history)}
