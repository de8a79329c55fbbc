"""Supervised fine-tuning claims (`minigpt_np.sft`): the completion-only loss and its gradient equal torch autograd's
cross-entropy with ignore_index=-100 on the prompt, a prompt position's dlogits is exactly zero, the fast kernels
compute the reference's step (also when one micro-batch holds prompts alone), a killed run resumes to the same
weights bit for bit, pretraining's step is the one it was, and bad input is refused with a message."""
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import minigpt_np as mg
from minigpt_np import fast, kernels, pretrain, sft
from minigpt_np.resume import FingerprintMismatch, training_state
from minigpt_np.tensor import Tensor
from test_gpt_parity_torch import random_state_dict, torch_gpt
from test_kernels import DTYPES, TOLERANCE, assert_agree, training_step

CFG = mg.GPTConfig(vocab_size=23, block_size=10, n_layer=2, n_head=2, n_embd=16)
EOS = 0
PARITY = 1e-12


def demos(n, seed, cfg=CFG):
    """n random demonstrations: prompts of 1 to 5 tokens, completions of 0 to 7 (some cut at block_size + 1)."""
    rng = np.random.default_rng(seed)
    return [sft.demonstration(rng.integers(1, cfg.vocab_size, rng.integers(1, 6)).tolist(),
                              rng.integers(1, cfg.vocab_size, rng.integers(0, 8)).tolist(), EOS, cfg.block_size)
            for _ in range(n)]


def unmasked(batch):
    """The same demonstrations with their prompts counted too (prompt_len 1: only the first token is never a
    target): the loss without the mask."""
    return [(ids, 1) for ids, _ in batch]


def float64_model(seed=0):
    model = mg.GPT(CFG, dtype=np.float64, seed=seed)
    model.load_state_dict(random_state_dict(model, seed + 1))
    return model


def norm_error(a, b):
    """||a - b|| / ||b|| (Frobenius)."""
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


def prompts_only(part):
    """The test batch with one micro-batch's targets all -100 (part 0: the first ceil(B/2) rows, 1: the rest): a
    micro-batch of prompts alone, whose share of the loss is 0."""
    windows, targets = sft.sft_batch(demos(5, seed=1), EOS)
    half = pretrain.first_half(len(targets))
    targets[slice(0, half) if part == 0 else slice(half, None)] = pretrain.IGNORE
    return windows, targets


BATCHES = {"mixed": lambda: sft.sft_batch(demos(5, seed=1), EOS),
           "first micro-batch prompts only": lambda: prompts_only(0),
           "second micro-batch prompts only": lambda: prompts_only(1)}


# ------------------------------------------------------------------------------------------ parity with torch
def errors_against_torch(windows, targets, torch_targets):
    """Our step's loss and gradients (`pretrain.loss_and_gradients`, two micro-batches) against torch autograd's
    cross_entropy(logits, torch_targets, ignore_index=-100) on one batch -> {tensor: relative error}."""
    model = float64_model()
    loss = pretrain.loss_and_gradients(model, windows, targets)
    P = {name: torch.tensor(a, requires_grad=True) for name, a in model.state_dict().items()}
    t_logits, _ = torch_gpt(P, CFG, torch.tensor(windows[:, :-1]))
    t_loss = TF.cross_entropy(t_logits.reshape(-1, CFG.vocab_size), torch.tensor(torch_targets).reshape(-1),
                              ignore_index=-100)
    t_loss.backward()
    errors = {"loss": abs(loss - t_loss.item()) / abs(t_loss.item())}
    errors.update({f"d {name}": norm_error(p.grad, P[name].grad.numpy()) for name, p in model.named_parameters()})
    return errors


@pytest.mark.parametrize("batch", BATCHES)
def test_sft_masked_loss_and_every_gradient_match_torch_autograd_at_float64(batch):
    windows, targets = BATCHES[batch]()
    errors = errors_against_torch(windows, targets, targets)
    worst = max(errors, key=errors.get)
    print(f"\n{batch}: worst {worst} {errors[worst]:.3e} over {len(errors)} tensors")
    assert len(errors) == 1 + len(mg.model.parameter_shapes(CFG))
    assert errors[worst] <= PARITY, f"worst tensor {worst}: relative error {errors[worst]:.3e} > {PARITY:g}"


def test_the_parity_check_fails_against_the_torch_loss_without_the_mask():
    """Negative control: torch's loss with the prompt's labels kept (not -100) is another loss, and the check sees it."""
    windows, targets = sft.sft_batch(demos(5, seed=1), EOS)
    _, all_targets = sft.sft_batch(unmasked(demos(5, seed=1)), EOS)
    errors = errors_against_torch(windows, targets, all_targets)
    print(f"\nagainst the unmasked loss: loss {errors['loss']:.3e}, smallest gradient error {min(errors.values()):.3e}")
    assert errors["loss"] > 1e-3 and min(errors.values()) > 1e6 * PARITY


# ------------------------------------------------------------------------------------------ the mask
def dlogits(targets_of):
    """dL/dlogits of the mean cross-entropy over one SFT batch, at the model's logits -> (dlogits (B, T, V),
    targets (B, T)); targets_of: demonstrations -> the batch they make."""
    batch = demos(6, seed=2)
    windows, targets = sft.sft_batch(targets_of(batch), EOS)
    logits = Tensor(mg.GPT(CFG, dtype=np.float64, seed=0)(windows[:, :-1]).data, requires_grad=True)
    mg.functional.cross_entropy(logits, targets).backward()
    return logits.grad, targets


def test_a_prompt_tokens_gradient_is_zero_and_a_completion_tokens_is_not():
    grad, targets = dlogits(lambda batch: batch)
    ignored, learned = targets == pretrain.IGNORE, targets != pretrain.IGNORE
    largest_ignored = float(np.abs(grad[ignored]).max())
    smallest_learned = float(np.abs(grad[learned]).max(axis=-1).min())
    print(f"\n{ignored.sum()} ignored positions, largest |dlogits| {largest_ignored}; {learned.sum()} learned, "
          f"smallest row max |dlogits| {smallest_learned:.3e}")
    assert ignored.sum() > 0 and learned.sum() > 0
    assert largest_ignored == 0.0, f"a position whose target is -100 has |dlogits| up to {largest_ignored}"
    assert smallest_learned > 0, "a position whose target is learned has dlogits 0"


def test_without_the_mask_the_prompt_positions_get_gradients():
    """Negative control: the same prompts with their labels kept: those positions' dlogits are no longer zero."""
    _, masked_targets = dlogits(lambda batch: batch)
    grad, targets = dlogits(unmasked)
    prompt = (masked_targets == pretrain.IGNORE) & (targets != pretrain.IGNORE)
    assert prompt.sum() > 0 and float(np.abs(grad[prompt]).max(axis=-1).min()) > 0


# ------------------------------------------------------------------------------------------ fast = reference
# One SFT update on each kernels (test_kernels.training_step given the targets: two micro-batches, the clip, AdamW).
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("batch", BATCHES)
def test_an_sft_step_on_the_fast_kernels_equals_the_reference(batch, dtype):
    windows, targets = BATCHES[batch]()
    assert_agree(training_step("fast", dtype, windows, targets=targets),
                 training_step("reference", dtype, windows, targets=targets), TOLERANCE[dtype][1],
                 f"SFT step, {batch}, {np.dtype(dtype).name}")


def test_the_sft_step_comparison_fails_when_one_fast_backward_is_off():
    """Negative control: the fast GELU backward off by 1e-2; the comparison fails, naming a tensor."""
    windows, targets = BATCHES["first micro-batch prompts only"]()
    with pytest.raises(AssertionError, match="the kernels disagree; worst tensor"):
        assert_agree(training_step("fast", np.float64, windows, (fast.ops, "gelu_backward"), targets),
                     training_step("reference", np.float64, windows, targets=targets), TOLERANCE[np.float64][1],
                     "SFT step")


# ------------------------------------------------------------------------------------------ resume
RUN = sft.SFTConfig(lr=1e-2, epochs=2, batch_size=4, warmup_ratio=0.2, eval_interval=3, checkpoint_interval=3)
DROPOUT_CFG = dataclasses.replace(CFG, dropout=0.1)     # so that the dropout generator's state must resume too


class Killed(Exception):
    """Stands in for a kill -9: the process stops between two checkpoints, losing the updates since the last."""


def finetune(path, cfg=RUN, train=None, kill_at=None, seed=0):
    """A fresh process's run: a new GPT from its seed, fine-tuned on 20 demonstrations -> (model, metrics, updates
    this session). kill_at: raise Killed as this update (1-based, this session) begins."""
    model = mg.GPT(DROPOUT_CFG, seed=seed)
    updates, real_step = [0], pretrain.train_step

    def step(*args):
        updates[0] += 1
        if updates[0] == kill_at:
            raise Killed
        return real_step(*args)
    pretrain.train_step = step
    try:
        metrics = sft.finetune(model, train or demos(20, seed=3, cfg=DROPOUT_CFG), demos(4, seed=4, cfg=DROPOUT_CFG),
                               cfg, EOS, checkpoint_path=path, progress=False)
    finally:
        pretrain.train_step = real_step
    return model, metrics, updates[0]


def weights(model):
    return {name: p.data.copy() for name, p in model.named_parameters()}


def differing(a, b):
    return [name for name in a if not np.array_equal(a[name], b[name])]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    model, metrics, updates = finetune(tmp_path_factory.mktemp("sft") / "whole.npz")
    return weights(model), metrics, updates


def test_a_killed_finetune_resumes_to_the_same_weights_bit_for_bit(tmp_path, uninterrupted):
    path = tmp_path / "sft.npz"
    with pytest.raises(Killed):
        finetune(path, kill_at=5)                         # update 4 done, lost: the checkpoint holds step 3
    assert training_state(path)["step"] == 3 and not training_state(path)["finished"]
    model, metrics, updates = finetune(path)
    whole, whole_metrics, whole_updates = uninterrupted
    print(f"\n{whole_updates} updates uninterrupted; resumed at step 3 for {updates}; "
          f"{len(differing(weights(model), whole))} of {len(whole)} tensors differ")
    assert updates == whole_updates - 3 and metrics["step"] == whole_updates
    assert not differing(weights(model), whole)
    assert [h["val_loss"] for h in metrics["history"]] == [h["val_loss"] for h in whole_metrics["history"]]


def test_a_resume_that_loses_the_optimizer_moments_is_caught(tmp_path, uninterrupted, monkeypatch):
    """Negative control: the same kill and resume, but the resumed AdamW starts from zero moments: the weights
    differ from the uninterrupted run's, and the comparison says so."""
    path = tmp_path / "sft.npz"
    with pytest.raises(Killed):
        finetune(path, kill_at=5)
    real_resume = sft.resume

    def forgetful(path, model, optimizer, **kwargs):
        state = real_resume(path, model, optimizer, **kwargs)
        for m, v in zip(optimizer.m, optimizer.v):
            m[...], v[...] = 0, 0
        return state
    monkeypatch.setattr(sft, "resume", forgetful)
    model, _, _ = finetune(path)
    assert differing(weights(model), uninterrupted[0])


def test_a_checkpoint_from_other_settings_or_data_is_refused_and_left_as_it_was(tmp_path):
    path = tmp_path / "sft.npz"
    finetune(path)
    before = path.read_bytes()
    for cfg, train, changed in ((dataclasses.replace(RUN, lr=2e-2), None, "sft.lr"),
                                (RUN, demos(20, seed=5, cfg=DROPOUT_CFG), "demos")):
        with pytest.raises(FingerprintMismatch, match=changed):
            finetune(path, cfg=cfg, train=train)
        assert path.read_bytes() == before
    _, metrics, updates = finetune(path, cfg=dataclasses.replace(RUN, eval_interval=5))   # bookkeeping: accepted
    assert updates == 0 and metrics["finished"]


# ------------------------------------------------------------------------------------------ pretraining unchanged
def pretraining_step_without_targets(name):
    """The pretraining step on `name` kernels written out with no notion of targets: every next token counted,
    each micro-batch weighted by its share of the windows' target tokens (the fast kernels: the second one on a
    replica, its gradients added after) -> the function (model, windows) -> loss."""
    def step(model, windows):
        model.zero_grad()
        parts, n, loss = pretrain.micro_batches(windows), windows[:, 1:].size, 0.0
        models = [model, fast.pretrain.replica(model)] if name == "fast" else [model, model]
        for part, part_model in zip(parts, models):
            part_loss = part_model.loss(part[:, :-1], part[:, 1:])
            part_loss.backward(np.asarray(part[:, 1:].size / n, dtype=part_loss.dtype))
            loss += float(part_loss.data) * (part[:, 1:].size / n)
        for p, q in zip(model.params.values(), models[1].params.values()):
            if q is not p:
                p.grad += q.grad
        return loss
    return step


def loss_and_grads(step, windows, *targets):
    model = mg.GPT(CFG, seed=0)
    loss = step(model, windows, *targets)
    return loss, {name: p.grad.copy() for name, p in model.named_parameters()}


@pytest.mark.parametrize("name", kernels.CHOICES)
def test_pretraining_without_targets_is_bit_identical_to_every_next_token_as_targets(name):
    windows = np.random.default_rng(6).integers(0, CFG.vocab_size, (5, CFG.block_size + 1))
    with kernels.using(name):
        default = loss_and_grads(pretrain.loss_and_gradients, windows)
        explicit = loss_and_grads(pretrain.loss_and_gradients, windows, windows[:, 1:])
        control = loss_and_grads(pretrain.loss_and_gradients, windows,
                                 np.where(np.arange(CFG.block_size) == 0, pretrain.IGNORE, windows[:, 1:]))
        as_written = loss_and_grads(pretraining_step_without_targets(name), windows)
    for other in (explicit, as_written):
        assert default[0] == other[0] and not differing(default[1], other[1])
    # negative control: one target per row left out changes the loss and every gradient it reaches
    assert default[0] != control[0] and differing(default[1], control[1])


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("prompt", [list(range(1, CFG.block_size + 2)), []], ids=["longer than block_size", "empty"])
def test_a_prompt_that_leaves_no_room_is_refused(prompt):
    with pytest.raises(ValueError, match=r"a prompt must hold 1 to block_size = 10 tokens.*shorten the prompt"):
        sft.demonstration(prompt, [1, 2], EOS, CFG.block_size)


def test_a_prompt_of_block_size_tokens_still_learns_the_eos():
    ids, prompt_len = sft.demonstration(list(range(1, CFG.block_size + 1)), [1, 2], EOS, CFG.block_size)
    _, targets = sft.sft_batch([(ids, prompt_len)], EOS)
    assert len(ids) == CFG.block_size + 1 and pretrain.counted(targets) == 1 and targets[0, -1] == ids[-1]


@pytest.mark.parametrize("which", ["demos", "val_demos"])
def test_empty_demonstrations_are_refused_and_nothing_is_written(which, tmp_path):
    model, path = mg.GPT(CFG, seed=0), tmp_path / "sft.npz"
    given = {"demos": demos(4, seed=0), "val_demos": demos(2, seed=1), which: []}
    with pytest.raises(ValueError, match=f"{which} is empty: fine-tuning needs demonstrations"):
        sft.finetune(model, given["demos"], given["val_demos"], RUN, EOS, checkpoint_path=path, progress=False)
    assert not path.exists()


def test_a_hand_made_demonstration_without_a_completion_is_refused():
    ids = np.array([3, 4, 5])
    with pytest.raises(ValueError, match=r"demos\[1\] has 3 tokens and a prompt of 3: make it with demonstration"):
        sft.finetune(mg.GPT(CFG, seed=0), [*demos(1, seed=0), (ids, 3)], demos(1, seed=1), RUN, EOS, progress=False)


@pytest.mark.parametrize("field, value", [("lr", 0.0), ("lr", float("nan")), ("epochs", 0), ("batch_size", 2.5),
                                          ("warmup_ratio", 1.5), ("beta2", 1.0), ("grad_clip", 0.0),
                                          ("weight_decay", -0.1), ("checkpoint_interval", 0)])
def test_bad_sft_settings_are_refused_with_the_field_named(field, value):
    with pytest.raises(ValueError, match=rf"SFTConfig\.{field} must"):
        sft.SFTConfig(**{field: value})


def test_a_batch_with_nothing_to_learn_is_refused():
    windows, targets = sft.sft_batch(demos(2, seed=0), EOS)
    with pytest.raises(ValueError, match="every target is -100: the batch has nothing to learn"):
        pretrain.loss_and_gradients(mg.GPT(CFG, seed=0), windows, np.full_like(targets, pretrain.IGNORE))
    with pytest.raises(ValueError, match=r"targets must have the shape of windows\[:, 1:\]"):
        pretrain.loss_and_gradients(mg.GPT(CFG, seed=0), windows, targets[:, 1:])
