"""Supervised fine-tuning (SFT): the GPT learns to continue a prompt as the demonstrations do, resumably.

A demonstration is a prompt and the completion that follows it. They are laid end to end and the GPT predicts each
next token, as in pretraining, but only the completion's tokens are learned; the prompt is context, never a target:

    ids        = prompt + completion + [eos]                      (cut to block_size + 1 tokens)
    input_t    = ids[t],   target_t = ids[t + 1]                  (t = 0 .. len(ids) - 2)
    target_t   = -100   for t + 1 < len(prompt)                   (the prompt's labels)
    L          = -(1/N) sum_{b,t : target_bt != -100} log softmax(logits_bt)[target_bt],   N = #{target != -100}

so dL/dlogits is exactly zero at every position whose target is -100 (`sft_batch` masks them, one line). This is
TRL 1.16.0's completion-only loss (`labels[completion_mask == 0] = -100` on the unshifted labels). A batch is
right-padded with eos, whose targets are -100 too. One update is pretraining's (`pretrain.train_step`: the two
micro-batches weighted by their counted targets, a clip, AdamW), at lr(s) warmed up linearly over warmup_ratio of the
updates, then cosine-decayed to 0.

Each epoch's order is drawn from default_rng((seed, epoch)): the demonstrations shuffled, taken in pools of
POOL * batch_size, each pool sorted by length and cut into batches, the batches shuffled, so that the rows of a batch
have similar lengths and little compute goes to padding. `finetune` checkpoints through `minigpt_np.resume`, as
pretraining does: a run killed at any moment and started again ends with the same weights, bit for bit.
"""
import dataclasses
import math
import time

import numpy as np

from . import pretrain
from .optim import AdamW, lr_schedule
from .pretrain import IGNORE, TrainingDiverged, counted
from .resume import resume, save_training_checkpoint, sha256_of_array
from .tensor import no_grad

POOL = 16   # batches per length-sorted pool


@dataclasses.dataclass
class SFTConfig:
    lr: float = 3e-4                     # peak AdamW learning rate (pretraining's is 2e-3)
    epochs: int = 1                      # passes over the demonstrations
    batch_size: int = 32                 # demonstrations per update
    warmup_ratio: float = 0.05           # linear warmup over this share of the updates, then cosine decay to 0
    weight_decay: float = 0.0            # AdamW decoupled decay on matrices and embeddings
    beta1: float = 0.9
    beta2: float = 0.95                  # as pretraining
    grad_clip: float = 1.0               # rescale gradients so their global L2 norm is at most this
    eval_interval: int = 50              # completion loss on the validation demonstrations every this many updates
    checkpoint_interval: int = 50        # updates between checkpoints (and after the last)
    seed: int = 0                        # the epochs' orders

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_interval", "checkpoint_interval"):
            if not isinstance(getattr(self, name), (int, np.integer)) or getattr(self, name) < 1:
                raise ValueError(f"SFTConfig.{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not 0 < self.lr < math.inf:
            raise ValueError(f"SFTConfig.lr must be a finite number > 0, got {self.lr!r}")
        if not 0 < self.grad_clip < math.inf:
            raise ValueError(f"SFTConfig.grad_clip must be a finite number > 0, got {self.grad_clip!r}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"SFTConfig.{name} must lie in [0, 1), got {getattr(self, name)!r}")
        if not 0 <= self.warmup_ratio <= 1:
            raise ValueError(f"SFTConfig.warmup_ratio must lie in [0, 1], got {self.warmup_ratio!r}")
        if not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"SFTConfig.weight_decay must be a finite number >= 0, got {self.weight_decay!r}")


# Fields that only say when to evaluate or save: they may change between a run and its resumption.
BOOKKEEPING = ("eval_interval", "checkpoint_interval")


def demonstration(prompt, completion, eos_token_id, block_size):
    """One demonstration -> (ids int64 (<= block_size + 1,), prompt_len): prompt + completion + eos, cut to
    block_size + 1 tokens (a long completion loses its end and its eos). The prompt holds 1 to block_size tokens, so
    that its last position predicts the completion's first token (or the eos), and one target at least is learned."""
    if not 1 <= len(prompt) <= block_size:
        raise ValueError(f"a prompt must hold 1 to block_size = {block_size} tokens, so that a completion token fits "
                         f"in the context; got {len(prompt)}: shorten the prompt")
    ids = np.asarray([*prompt, *completion, eos_token_id], dtype=np.int64)[:block_size + 1]
    return ids, len(prompt)


def sft_batch(demos, pad_token_id):
    """Demonstrations [(ids, prompt_len)] -> (windows (B, T+1), targets (B, T)), right-padded to the longest with
    pad_token_id: targets = windows[:, 1:], -100 on the prompt and on the padding."""
    T = max(len(ids) for ids, _ in demos) - 1
    windows = np.full((len(demos), T + 1), pad_token_id, dtype=np.int64)
    targets = np.full((len(demos), T), IGNORE, dtype=np.int64)
    for b, (ids, prompt_len) in enumerate(demos):
        windows[b, :len(ids)] = ids
        targets[b, :len(ids) - 1] = ids[1:]
        targets[b, :prompt_len - 1] = IGNORE      # the prompt's labels are -100: the loss counts the completion only
    return windows, targets


def length_batches(lengths, batch_size, rng, pool=POOL):
    """One epoch's batches of indices (module docstring): shuffled, pool-sorted by length, cut, the batches shuffled."""
    order = rng.permutation(len(lengths))
    lengths, batches = np.asarray(lengths), []
    for i in range(0, len(order), pool * batch_size):
        chunk = order[i:i + pool * batch_size]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def schedule(demos, cfg):
    """Every update's batch of demonstration indices, epoch after epoch -> list of int arrays."""
    lengths = [len(ids) for ids, _ in demos]
    return [b for epoch in range(cfg.epochs)
            for b in length_batches(lengths, cfg.batch_size, np.random.default_rng((cfg.seed, epoch)))]


def completion_loss(model, demos, pad_token_id, batch_size=64):
    """The mean loss over the completions' tokens of fixed demonstrations (nats/token), no graph:
    sum of the token losses / N."""
    was_training, model.training = model.training, False
    total, n = 0.0, 0
    try:
        with no_grad():
            for i in range(0, len(demos), batch_size):
                windows, targets = sft_batch(demos[i:i + batch_size], pad_token_id)
                total += float(model.loss(windows[:, :-1], targets).data) * counted(targets)
                n += counted(targets)
    finally:
        model.training = was_training
    return total / n


def fingerprint(cfg, model, demos, val_demos, pad_token_id):
    """What a fine-tuning run is built from: the settings that change an update, the model's shape and the data."""
    def of(ds):
        return sha256_of_array(np.concatenate([np.array([len(ids), p], dtype=np.int64) for ids, p in ds]
                                              + [ids for ids, _ in ds]))
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in BOOKKEEPING}
    return {"sft": config, "model": dataclasses.asdict(model.cfg), "demos": of(demos), "val_demos": of(val_demos),
            "pad_token_id": int(pad_token_id)}


def finetune(model, demos, val_demos, cfg, pad_token_id, checkpoint_path=None, progress=True):
    """Fine-tune `model` (a GPT) in place on demonstrations [(ids, prompt_len)], measuring the completion loss on
    val_demos -> metrics {step, val_loss, history (one record per evaluation, step 0 first), elapsed, finished}.

    checkpoint_path: written every cfg.checkpoint_interval updates and after the last; if it exists the run resumes
    from it (a finished one trains nothing), and one built from other settings or data is refused
    (`resume.FingerprintMismatch`). A non-finite loss or gradient raises TrainingDiverged before anything is written.
    """
    _check_demos(demos, "demos", model.cfg.block_size)
    _check_demos(val_demos, "val_demos", model.cfg.block_size)
    batches = schedule(demos, cfg)
    warmup = int(round(cfg.warmup_ratio * len(batches)))
    optimizer = AdamW(model.named_parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    rngs = {"dropout": model._rng}
    fp = fingerprint(cfg, model, demos, val_demos, pad_token_id)
    state = resume(checkpoint_path, model, optimizer, fingerprint=fp, rngs=rngs) if checkpoint_path else None
    if state is None:     # losses: the training losses since the last evaluation
        state = {"step": 0, "elapsed": 0.0, "losses": [],
                 "history": [{"step": 0, "val_loss": completion_loss(model, val_demos, pad_token_id)}]}
    start = time.perf_counter() - state["elapsed"]
    bar = _progress_bar(len(batches), state["step"], progress)
    was_training, model.training = model.training, True
    try:
        while state["step"] < len(batches):
            lr = lr_schedule(state["step"], max_lr=cfg.lr, warmup_steps=warmup, total_steps=len(batches))
            windows, targets = sft_batch([demos[i] for i in batches[state["step"]]], pad_token_id)
            try:
                loss, _ = pretrain.train_step(model, optimizer, windows, lr, cfg.grad_clip, targets)
            except TrainingDiverged as e:
                raise TrainingDiverged(f"{e} in fine-tuning update {state['step'] + 1}; lower the learning rate "
                                       f"(now {cfg.lr:g}) and run again") from e
            state["losses"].append(loss)
            state.update(step=state["step"] + 1, elapsed=time.perf_counter() - start)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            done = state["step"] == len(batches)
            if state["step"] % cfg.eval_interval == 0 or done:
                state["history"].append({"step": state["step"], "train_loss": float(np.mean(state["losses"])),
                                         "val_loss": completion_loss(model, val_demos, pad_token_id), "lr": lr,
                                         "elapsed": state["elapsed"]})
                state["losses"] = []
            if checkpoint_path is not None and (state["step"] % cfg.checkpoint_interval == 0 or done):
                save_training_checkpoint(checkpoint_path, model, optimizer, fingerprint=fp,
                                         state={**state, "finished": done}, rngs=rngs)
    finally:
        model.training = was_training
        if bar is not None:
            bar.close()
    return {"step": state["step"], "val_loss": state["history"][-1]["val_loss"], "history": state["history"],
            "elapsed": state["elapsed"], "finished": True}


def _check_demos(demos, name, block_size):
    """Demonstrations [(ids, prompt_len)] as `demonstration` makes them: 1 <= prompt_len < len(ids) <= block_size + 1."""
    if len(demos) == 0:
        raise ValueError(f"{name} is empty: fine-tuning needs demonstrations to train on and to validate on")
    for i, (ids, prompt_len) in enumerate(demos):
        if not 1 <= prompt_len < len(ids) <= block_size + 1:
            raise ValueError(f"{name}[{i}] has {len(ids)} tokens and a prompt of {prompt_len}: make it with "
                             f"demonstration(), which keeps 1 <= prompt_len < len(ids) <= block_size + 1 = "
                             f"{block_size + 1}")


def _progress_bar(total, initial, enabled):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, desc="sft", unit="step", dynamic_ncols=True)
