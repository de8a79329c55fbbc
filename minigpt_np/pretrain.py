"""Pretraining: fit the GPT as a next-token language model on a token stream, resumably.

One update, at step s with learning rate lr(s) (linear warmup, then cosine decay to lr * min_lr_ratio,
`optim.lr_schedule`):

    windows ~ sample_windows(train_ids, T, B, rng)          (B, T+1), offsets from a seeded rng
    loss    = cross_entropy(model(windows[:, :-1]), windows[:, 1:])    mean nats per target token (model.loss)
    g       = clip(dloss/dtheta, global norm <= grad_clip)
    theta   = AdamW(theta, g, lr(s)), weight decay on matrices and embeddings only

`train_step` is one update, `validation_loss` the evaluation, and `pretrain` the loop around them, which
checkpoints through `minigpt_np.resume`: a run killed at any moment and started again with the same arguments
ends with the same weights, bit for bit, as a run that was never interrupted. A time budget is a plain stop:
the run ends after the update during which the budget ran out, and records where and why it stopped. A
non-finite loss or gradient stops training with `TrainingDiverged` before anything is written.
"""
import dataclasses
import logging
import math
import time
from typing import Optional

import numpy as np

from .data import sample_windows, validation_windows
from .optim import AdamW, clip_grad_norm, lr_schedule
from .resume import resume, save_training_checkpoint, sha256_of_array
from .tensor import no_grad

logger = logging.getLogger(__name__)
IGNORE = -100    # a target that predicts nothing (cross_entropy's ignore_index): supervised fine-tuning's prompts


@dataclasses.dataclass
class PretrainConfig:
    max_steps: int = 2000                 # optimizer updates; the cosine schedule ends here
    max_seconds: Optional[float] = None   # optional time budget over all sessions: stop early, resumably
    batch_size: int = 16                  # windows per update, B (16 beat 32 per token seen, measured)
    block_size: Optional[int] = None      # tokens of context per window, T (None: the model's block_size)
    lr: float = 2e-3                      # peak learning rate, reached after warmup
    min_lr_ratio: float = 0.1             # the cosine decay ends at lr * min_lr_ratio
    warmup_steps: int = 50                # linear warmup from 0 to lr over this many updates
    weight_decay: float = 0.1             # AdamW decoupled decay on matrices and embeddings (never biases, gains)
    beta1: float = 0.9                    # AdamW first-moment decay
    beta2: float = 0.95                   # AdamW second-moment decay (0.95 as GPT-3 / nanoGPT: steadier at high lr)
    grad_clip: float = 1.0                # rescale gradients so their global L2 norm is at most this
    eval_interval: int = 250              # validation loss every this many updates, and after the last one
    eval_windows: Optional[int] = 512     # validation windows per evaluation, spread over the stream (None: all)
    checkpoint_interval: int = 250        # write the checkpoint every this many updates, and after the last one
    seed: int = 0                         # seeds the batch sampler: same seed, data and config -> same weights

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "eval_interval", "checkpoint_interval"):
            if not isinstance(getattr(self, name), (int, np.integer)) or getattr(self, name) < 1:
                raise ValueError(f"PretrainConfig.{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not 0 <= self.warmup_steps <= self.max_steps:
            raise ValueError(f"PretrainConfig.warmup_steps must lie in [0, max_steps={self.max_steps}], "
                             f"got {self.warmup_steps}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"PretrainConfig.lr must be a finite number > 0, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"PretrainConfig.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if self.max_seconds is not None and not (math.isfinite(self.max_seconds) and self.max_seconds > 0):
            raise ValueError(f"PretrainConfig.max_seconds must be a number > 0 or None, got {self.max_seconds}")
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"PretrainConfig.block_size must be >= 1 or None, got {self.block_size}")


# Fields that only say when to stop, evaluate or save: they may change between a run and its resumption.
BOOKKEEPING = ("max_seconds", "eval_interval", "eval_windows", "checkpoint_interval")


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite; the checkpoint on disk was left untouched."""


def train_step(model, optimizer, windows, lr, grad_clip, targets=None):
    """One AdamW update on windows (B, T+1) -> (loss, gradient norm before clipping), as nanoGPT's step: the
    micro-batches' losses and backwards, their gradients accumulated (`loss_and_gradients`), a clip, the step.
    targets: as in loss_and_gradients (supervised fine-tuning's completion-only targets, `minigpt_np.sft`).

    Raises TrainingDiverged, before the weights change, if the loss or the gradient norm is not finite.
    """
    loss = loss_and_gradients(model, windows, targets)
    if not math.isfinite(loss):
        raise TrainingDiverged(f"loss is {loss}")
    grad_norm = clip_grad_norm(model.parameters(), grad_clip)
    if not math.isfinite(grad_norm):
        raise TrainingDiverged(f"gradient norm is {grad_norm}")
    optimizer.step(lr)
    model.zero_grad()   # gradients are dead weight between updates
    return loss, grad_norm


def loss_and_gradients(model, windows, targets=None):
    """The mean next-token loss L over windows (B, T+1) -> float; every parameter's .grad is set to dL/dtheta.

    targets (B, T): the token each position predicts, IGNORE (-100) where it predicts none; default windows[:, 1:],
    every next token (pretraining). Micro-batch by micro-batch (`micro_batches`), each backward adding its share to
    the gradients. With n_i of the batch's n counted targets (!= -100) in micro-batch i,

        L = sum_i (n_i / n) L_i,      dL/dtheta = sum_i (n_i / n) dL_i/dtheta

    `kernels.use("fast")` replaces it with `minigpt_np.fast.pretrain.loss_and_gradients`, which runs the two
    micro-batches at once on two cores.
    """
    targets, n = counted_targets(windows, targets)
    model.zero_grad()
    loss = 0.0
    for part, part_targets in zip(micro_batches(windows), micro_batches(targets)):
        share = counted(part_targets) / n                              # n_i / n
        if share == 0:     # a part of prompts alone (fine-tuning) has nothing to learn, and its mean would be 0/0
            continue
        part_loss = model.loss(part[:, :-1], part_targets)             # L_i
        part_loss.backward(np.asarray(share, dtype=part_loss.dtype))  # .grad += (n_i / n) dL_i/dtheta
        loss += float(part_loss.data) * share
    return loss


def counted_targets(windows, targets):
    """A step's targets (B, T), windows[:, 1:] if None -> (targets, n): n of them are not IGNORE (ValueError if none)."""
    targets = windows[:, 1:] if targets is None else np.asarray(targets)
    if targets.shape != windows[:, 1:].shape:
        raise ValueError(f"targets must have the shape of windows[:, 1:], {windows[:, 1:].shape}; got {targets.shape}")
    n = counted(targets)
    if n == 0:
        raise ValueError(f"every target is {IGNORE}: the batch has nothing to learn; give each row at least one target")
    return targets, n


def counted(targets):
    """How many targets are predicted: those that are not IGNORE."""
    return int(np.count_nonzero(np.asarray(targets) != IGNORE))


def micro_batches(rows):
    """The micro-batches of a step's rows (its windows (B, T+1), or their targets (B, T)): the first ceil(B/2) rows and
    the rest (one if B = 1)."""
    half = first_half(len(rows))
    return [rows] if len(rows) == 1 else [rows[:half], rows[half:]]


def first_half(batch):
    """How many of a batch's windows go to the first micro-batch: ceil(batch / 2)."""
    return (batch + 1) // 2


def validation_loss(model, windows, batch_size=32):
    """Mean next-token cross-entropy (nats/token) over fixed windows (W, T+1), batch_size at a time, no graph."""
    was_training, model.training = model.training, False
    total, count = 0.0, 0
    try:
        with no_grad():
            for chunk in (windows[i:i + batch_size] for i in range(0, len(windows), batch_size)):
                total += float(model.loss(chunk[:, :-1], chunk[:, 1:]).data) * chunk[:, 1:].size
                count += chunk[:, 1:].size
    finally:
        model.training = was_training
    return total / count


def fingerprint(cfg, model, train_ids):
    """What a pretraining run is built from: every setting that changes an update, and the training stream."""
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in BOOKKEEPING}
    return {"pretrain": config, "model": dataclasses.asdict(model.cfg), "train_ids": sha256_of_array(train_ids)}


def pretrain(model, train_ids, val_ids, cfg, checkpoint_path=None, progress=True, log=None):
    """Train model (a GPT) on the int token stream train_ids; evaluate on fixed windows of val_ids.

    checkpoint_path: written every cfg.checkpoint_interval updates and at the end. If it exists, the run
    resumes from it (a finished run trains nothing and returns its stored metrics); a checkpoint built from
    other settings or data is refused (`resume.FingerprintMismatch`).
    progress: a tqdm bar with the loss and tokens/s. log: called with one dict per evaluation.

    Returns {step, tokens (seen in total), val_loss (nats/token), elapsed (s, all sessions), stop_reason
    ("max_steps" or "max_seconds"), finished, history (one dict per evaluation), tokens_per_s (this session,
    None if it trained nothing)}.
    """
    T = cfg.block_size or model.cfg.block_size
    train_ids, val_ids = _checked_streams(model, T, train_ids=train_ids, val_ids=val_ids)
    val_windows = validation_windows(val_ids, T, cfg.eval_windows)
    optimizer = AdamW(model.named_parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    rngs = {"batches": np.random.default_rng(cfg.seed), "dropout": model._rng}
    fp = fingerprint(cfg, model, train_ids)
    state, saved_step = _resumed_state(checkpoint_path, model, optimizer, fp, rngs, cfg)
    if state["stop_reason"] is not None:
        logger.info("%s is a finished run (step %d); nothing to train", checkpoint_path, state["step"])
        return {**state, "finished": True, "tokens_per_s": None}

    bar = _progress_bar(cfg.max_steps, state["step"], progress)
    start, session = time.perf_counter() - state["elapsed"], {"tokens": 0, "seconds": 0.0, "losses": []}
    was_training, model.training = model.training, True
    try:
        while state["stop_reason"] is None:
            t0 = time.perf_counter()
            lr = lr_schedule(state["step"], max_lr=cfg.lr, warmup_steps=cfg.warmup_steps, total_steps=cfg.max_steps,
                             min_lr=cfg.lr * cfg.min_lr_ratio)
            windows = sample_windows(train_ids, T, cfg.batch_size, rngs["batches"])          # (B, T+1)
            try:
                loss, grad_norm = train_step(model, optimizer, windows, lr, cfg.grad_clip)
            except TrainingDiverged as e:
                raise TrainingDiverged(_diverged_message(e, state["step"], checkpoint_path, saved_step, cfg)) from e
            state.update(step=state["step"] + 1, tokens=state["tokens"] + windows[:, 1:].size,
                         elapsed=time.perf_counter() - start)
            state["stop_reason"] = _stop_reason(cfg, state)
            _count(session, windows[:, 1:].size, time.perf_counter() - t0, loss, bar)
            if state["step"] % cfg.eval_interval == 0 or state["stop_reason"]:
                record = _evaluate(model, val_windows, cfg, state, session, lr, grad_norm)
                if log is not None:
                    log(record)
            if checkpoint_path is not None and (state["step"] % cfg.checkpoint_interval == 0 or state["stop_reason"]):
                saved_step = _save(checkpoint_path, model, optimizer, fp, state, rngs)
    finally:
        model.training = was_training
        if bar is not None:
            bar.close()
    return {**state, "finished": True, "tokens_per_s": session["tokens"] / session["seconds"]}


def _resumed_state(checkpoint_path, model, optimizer, fp, rngs, cfg):
    """The loop's state, resumed from the checkpoint if there is one -> (state, step of the checkpoint or None).

    The stop reason is worked out again: a budget raised since the last session may reopen a finished run.
    """
    state = resume(checkpoint_path, model, optimizer, fingerprint=fp, rngs=rngs) if checkpoint_path else None
    saved_step = None if state is None else state["step"]
    state = state or {"step": 0, "tokens": 0, "elapsed": 0.0, "val_loss": None, "history": [], "stop_reason": None}
    state["stop_reason"] = _stop_reason(cfg, state)
    return state, saved_step


def _save(checkpoint_path, model, optimizer, fp, state, rngs):
    """Write the training checkpoint after checking every weight is finite -> the step it holds."""
    _check_finite_weights(model, state["step"])
    save_training_checkpoint(checkpoint_path, model, optimizer, fingerprint=fp,
                             state={**state, "finished": state["stop_reason"] is not None}, rngs=rngs)
    return state["step"]


def _count(session, tokens, seconds, loss, bar):
    """This session's throughput and the losses since the last evaluation; the progress bar shows them."""
    session["tokens"] += tokens
    session["seconds"] += seconds
    session["losses"].append(loss)
    if bar is not None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{session['tokens'] / session['seconds']:,.0f}", refresh=False)


def _checked_streams(model, T, **streams):
    if T > model.cfg.block_size:
        raise ValueError(f"PretrainConfig.block_size {T} exceeds the model's block_size {model.cfg.block_size}")
    out = []
    for name, ids in streams.items():
        ids = np.ascontiguousarray(ids, dtype=np.int32)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError(f"{name} must be a non-empty 1-D token stream, got shape {ids.shape}")
        if ids.min() < 0 or ids.max() >= model.cfg.vocab_size:
            raise ValueError(f"{name} has ids outside [0, {model.cfg.vocab_size}) (min {ids.min()}, max "
                             f"{ids.max()}): the tokenizer and the model's vocab_size disagree")
        out.append(ids)
    return out


def _stop_reason(cfg, state):
    if state["step"] >= cfg.max_steps:
        return "max_steps"
    if cfg.max_seconds is not None and state["elapsed"] >= cfg.max_seconds:
        return "max_seconds"
    return None


def _evaluate(model, val_windows, cfg, state, session, lr, grad_norm):
    """Validation loss now; appended to state["history"] with the mean training loss since the last one."""
    state["val_loss"] = validation_loss(model, val_windows, cfg.batch_size)
    record = {"step": state["step"], "tokens": state["tokens"], "train_loss": float(np.mean(session["losses"])),
              "val_loss": state["val_loss"], "lr": lr, "grad_norm": grad_norm,
              "tokens_per_s": session["tokens"] / session["seconds"], "elapsed": state["elapsed"]}
    state["history"].append(record)
    session["losses"] = []
    logger.debug("step %d: train %.4f val %.4f nats/token", record["step"], record["train_loss"], record["val_loss"])
    return record


def _progress_bar(total, initial, enabled):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, desc="pretrain", unit="step", dynamic_ncols=True)


def _check_finite_weights(model, step):
    for name, p in model.named_parameters():
        if not np.isfinite(p.data).all():
            raise TrainingDiverged(f"parameter {name} holds NaN or inf after update {step}; not saving it")


def _diverged_message(error, step, path, saved_step, cfg):
    kept = (f"The checkpoint {path} still holds step {saved_step}, the last good state."
            if saved_step is not None else "No checkpoint was written yet.")
    return (f"{error} in update {step + 1}: training diverged. {kept} Lower the peak learning rate (now {cfg.lr:g}) "
            "and run again.")
