"""PPOTrainer: one PPO step on a batch of (query, response, score) triples, as TRL 0.1's `PPOTrainer.step`.

    1. forward pass, no graph, in chunks of forward_batch_size:  logprobs, ref_logprobs, values   (B, R)
    2. rewards   r_t = -kl_coef (logprobs_t - ref_logprobs_t)  (+ score on each row's last token)
    3. GAE advantages and returns; advantages whitened over the batch's response tokens
    4. ppo_epochs passes over shuffled mini-batches: forward with graph, ppo_loss and its per-token gradients
       dloss/dlogprobs and dloss/dvalues, carried to the logits by the log-softmax backward, model backward, AdamW
    5. adaptive KL update with n_steps = batch_size

Layout of a batch: every row is [left padding, query, response, right padding] with the query ending at column Q - 1
and the response starting at column Q, Q = the longest query of the whole batch. Response token t of every row sits
at column Q + t and is predicted by the logits (and valued by the value head) at column Q + t - 1. Widths are fixed
for the whole batch, so each row is computed the same way, up to float rounding in BLAS, whatever
forward_batch_size or mini-batch it falls in.
"""
import dataclasses
import time
from typing import Optional

import numpy as np

import minigpt_np as mg
from minigpt_np.optim import AdamW, clip_grad_norm

from . import core
from .rollout import left_pad, right_pad


@dataclasses.dataclass
class PPOConfig:
    lr: float = 1.41e-5                 # Adam learning rate (TRL 0.1 default)
    batch_size: int = 256               # (query, response, score) triples per PPO step
    forward_batch_size: int = 16        # rows per no-grad forward pass (and per generation/scoring chunk): bounds memory
    mini_batch_size: int = 1            # rows per gradient step; TRL 0.1 hard-coded 1
    ppo_epochs: int = 4                 # passes over the batch per step
    adap_kl_ctrl: bool = True           # adapt kl_coef towards `target` (Ziegler et al. 2019) or keep it fixed
    init_kl_coef: float = 0.2           # initial beta of the per-token KL penalty
    target: float = 6.0                 # target KL (nats per response) of the adaptive controller
    horizon: float = 10000              # controller horizon, in samples
    gamma: float = 1.0                  # discount
    lam: float = 0.95                   # GAE lambda
    cliprange: float = 0.2              # epsilon of the clipped policy ratio
    cliprange_value: float = 0.2        # epsilon of the clipped value prediction
    vf_coef: float = 0.1                # weight of the value loss
    max_grad_norm: Optional[float] = None   # global gradient-norm clip; None = off, as in TRL 0.1
    weight_decay: float = 0.0           # AdamW decoupled decay; 0 = Adam, as in TRL 0.1
    seed: int = 0                       # seeds the mini-batch shuffling

    def __post_init__(self):
        for name in ("batch_size", "forward_batch_size", "mini_batch_size", "ppo_epochs"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"PPOConfig.{name} must be a positive integer, got {value!r}")
        if self.batch_size % self.forward_batch_size:
            raise ValueError(
                f"PPOConfig.batch_size ({self.batch_size}) must be a multiple of forward_batch_size "
                f"({self.forward_batch_size}): forward passes run in chunks of forward_batch_size. Use e.g. "
                f"forward_batch_size={_largest_divisor_at_most(self.batch_size, self.forward_batch_size)} or "
                f"batch_size={self.batch_size + self.forward_batch_size - self.batch_size % self.forward_batch_size}.")
        if self.batch_size % self.mini_batch_size:
            raise ValueError(
                f"PPOConfig.batch_size ({self.batch_size}) must be a multiple of mini_batch_size "
                f"({self.mini_batch_size}) so that no tail batch is dropped; use e.g. mini_batch_size="
                f"{_largest_divisor_at_most(self.batch_size, self.mini_batch_size)}.")
        for name in ("lr", "cliprange", "cliprange_value", "vf_coef", "horizon", "target"):
            if not getattr(self, name) > 0:
                raise ValueError(f"PPOConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if self.init_kl_coef < 0 or not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise ValueError("PPOConfig: need init_kl_coef >= 0, 0 <= gamma <= 1 and 0 <= lam <= 1, got "
                             f"{self.init_kl_coef}, {self.gamma}, {self.lam}")


def _largest_divisor_at_most(n, k):
    return max(d for d in range(1, min(n, k) + 1) if n % d == 0)


@dataclasses.dataclass
class Batch:
    """A batch laid out for the model: see the module docstring."""
    input_ids: np.ndarray        # (B, Q + R) ints
    attention_mask: np.ndarray   # (B, Q + R) 1 on query and response tokens
    mask: np.ndarray             # (B, R) 1 on response tokens (right padded)
    Q: int                       # column of the first response token


def layout(queries, responses, pad_token_id=0):
    """Left-pad queries to Q, right-pad responses to R and stack: -> Batch."""
    query_ids, query_mask = left_pad(queries, pad_token_id)              # (B, Q)
    response_ids, response_mask = right_pad(responses, pad_token_id)     # (B, R)
    return Batch(np.concatenate([query_ids, response_ids], axis=1),
                 np.concatenate([query_mask, response_mask], axis=1),
                 response_mask.astype(np.float64), query_ids.shape[1])


def response_slice(batch):
    """Columns of the logits and values that predict / value the response tokens."""
    return slice(batch.Q - 1, batch.input_ids.shape[1] - 1)


def response_logprobs(model, batch, forward_batch_size, with_values=False):
    """log pi(y_t) of every response token (and the values V_t), no graph, forward_batch_size rows at a time.

    -> logprobs (B, R) float64, 0 on padding; with_values: (logprobs, values (B, R)).
    """
    cols, labels = response_slice(batch), batch.input_ids[:, batch.Q:]
    logprobs, values = [], []
    with mg.no_grad():
        for i in range(0, len(batch.input_ids), forward_batch_size):
            rows = slice(i, i + forward_batch_size)
            out = model(batch.input_ids[rows], batch.attention_mask[rows], return_values=with_values)
            logits = out[0] if with_values else out
            logprobs.append(core.logprobs_from_logits(logits.data[:, cols], labels[rows]).astype(np.float64))
            if with_values:
                values.append(out[1].data[:, cols].astype(np.float64))
    logprobs = np.concatenate(logprobs) * batch.mask
    return (logprobs, np.concatenate(values) * batch.mask) if with_values else logprobs


class PPOTrainer:
    def __init__(self, model, ref_model, config=None, pad_token_id=0):
        self.config = config = config if config is not None else PPOConfig()
        if not model.cfg.value_head:
            raise ValueError("PPOTrainer: the policy needs a value head; call model.add_value_head() first")
        if ref_model.cfg.vocab_size != model.cfg.vocab_size:
            raise ValueError(f"PPOTrainer: policy vocabulary ({model.cfg.vocab_size}) and reference vocabulary "
                             f"({ref_model.cfg.vocab_size}) differ; the KL penalty needs the same tokens")
        self.model, self.ref_model = model, ref_model
        # No dropout in rollouts, scoring or updates: TRL 0.1's models came from from_pretrained, in eval mode,
        # and dropout noise in logprobs would make the ratio differ from 1 before any update.
        model.training = ref_model.training = False
        self.pad_token_id = pad_token_id
        self.optimizer = AdamW(model.named_parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.kl_ctl = (core.AdaptiveKLController(config.init_kl_coef, config.target, config.horizon)
                       if config.adap_kl_ctrl else core.FixedKLController(config.init_kl_coef))
        self.rng = np.random.default_rng(config.seed)

    # ------------------------------------------------------------------------------------------ checks
    def _check_inputs(self, queries, responses, scores):
        B = self.config.batch_size
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if not len(queries) == len(responses) == len(scores) == B:
            raise ValueError(f"PPOTrainer.step: got {len(queries)} queries, {len(responses)} responses and "
                             f"{len(scores)} scores; each must equal batch_size = {B}")
        if not np.all(np.isfinite(scores)):
            raise ValueError(f"PPOTrainer.step: scores must be finite; rows {np.nonzero(~np.isfinite(scores))[0][:10].tolist()} "
                             "are NaN or inf. Check the reward model on those texts.")
        queries = [np.asarray(q, dtype=np.int64).reshape(-1) for q in queries]
        responses = [np.asarray(r, dtype=np.int64).reshape(-1) for r in responses]
        for i, (q, r) in enumerate(zip(queries, responses)):
            if len(q) == 0 or len(r) == 0:
                raise ValueError(f"PPOTrainer.step: row {i} has an empty {'query' if len(q) == 0 else 'response'}; "
                                 "every query and response needs at least one token")
        longest = max(len(q) for q in queries) + max(len(r) for r in responses)
        if longest > self.model.cfg.block_size:
            raise ValueError(f"PPOTrainer.step: longest query + longest response = {longest} tokens exceeds "
                             f"block_size {self.model.cfg.block_size}; use shorter prompts or responses")
        return queries, responses, scores

    # ------------------------------------------------------------------------------------------ forward
    def batched_forward_pass(self, batch):
        """logprobs, ref_logprobs and values (B, R) of the response tokens, no graph, forward_batch_size rows at a time."""
        fbs = self.config.forward_batch_size
        logprobs, values = response_logprobs(self.model, batch, fbs, with_values=True)
        return logprobs, response_logprobs(self.ref_model, batch, fbs), values

    # ------------------------------------------------------------------------------------------ step
    def step(self, queries, responses, scores):
        """One PPO step. queries, responses: lists of B int arrays (any lengths); scores (B,) -> stats dict (TRL keys)."""
        cfg = self.config
        queries, responses, scores = self._check_inputs(queries, responses, scores)
        timing, t0 = {}, time.perf_counter()
        batch = layout(queries, responses, self.pad_token_id)
        mask = batch.mask

        t = time.perf_counter()
        logprobs, ref_logprobs, values = self.batched_forward_pass(batch)
        timing["time/ppo/forward_pass"] = time.perf_counter() - t

        t = time.perf_counter()
        kl_coef = self.kl_ctl.value
        rewards, non_score_rewards = core.compute_rewards(scores, logprobs, ref_logprobs, kl_coef, mask)
        advantages, returns = core.compute_advantages(values, rewards, cfg.gamma, cfg.lam, mask)
        # Whitened once over all response tokens of the batch. TRL 0.1 whitened inside each mini-batch (of one row),
        # which at mini_batch_size 1 normalises every response on its own; over the batch keeps the relative size
        # of advantages between responses, as later TRL versions do.
        advantages = core.whiten(advantages, mask) * mask
        timing["time/ppo/compute_rewards"] = time.perf_counter() - t

        t = time.perf_counter()
        all_stats = []
        for _ in range(cfg.ppo_epochs):
            order = self.rng.permutation(cfg.batch_size)
            for start in range(0, cfg.batch_size, cfg.mini_batch_size):
                rows = order[start:start + cfg.mini_batch_size]
                all_stats.append(self.train_minibatch(batch, rows, logprobs, values, advantages, returns))
        timing["time/ppo/optimize_step"] = time.perf_counter() - t

        t = time.perf_counter()
        stats = {key: float(np.mean([s[key] for s in all_stats])) for key in all_stats[0]}
        kl = ((logprobs - ref_logprobs) * mask).sum(axis=1)                          # (B,) nats per response
        stats = {
            "objective/kl": float(kl.mean()),
            "objective/kl_coef": float(kl_coef),
            "objective/entropy": float((-logprobs * mask).sum(axis=1).mean()),     # sampled-token estimate
            "objective/response_length": float(mask.sum(axis=1).mean()),
            "ppo/mean_non_score_reward": float(non_score_rewards.sum(axis=1).mean()),
            "ppo/mean_scores": float(scores.mean()),
            **{f"ppo/{key}": value for key, value in stats.items()},
        }
        stats["ppo/val/var_explained"] = 1.0 - stats["ppo/val/error"] / stats["ppo/returns/var"]
        timing["time/ppo/calc_stats"] = time.perf_counter() - t
        self.kl_ctl.update(stats["objective/kl"], cfg.batch_size)
        timing["time/ppo/total"] = time.perf_counter() - t0
        stats.update(timing)
        return stats

    def train_minibatch(self, batch, rows, old_logprobs, old_values, advantages, returns):
        """Forward with graph, per-token gradients from ppo_loss, model backward, optimizer step -> stats."""
        cfg, cols = self.config, response_slice(batch)
        ids, att, mask = batch.input_ids[rows], batch.attention_mask[rows], batch.mask[rows]
        labels = ids[:, batch.Q:]
        logits, vpred = self.model(ids, att, return_values=True)             # (b, Q+R, V), (b, Q+R)
        response_logits = logits.data[:, cols]                                 # (b, R, V)
        logprobs = core.logprobs_from_logits(response_logits, labels)
        loss, grads, stats = core.ppo_loss(
            logprobs, old_logprobs[rows], vpred.data[:, cols].astype(np.float64), old_values[rows],
            advantages[rows], returns[rows], cliprange=cfg.cliprange, cliprange_value=cfg.cliprange_value,
            vf_coef=cfg.vf_coef, mask=mask)
        if not (np.isfinite(loss) and np.all(np.isfinite(grads["logprobs"])) and np.all(np.isfinite(grads["values"]))):
            raise FloatingPointError("PPO loss or its gradient is NaN/inf; the step was not applied. Lower lr or "
                                     "check the scores; the last checkpoint is intact.")
        dlogits = np.zeros_like(logits.data)
        dlogits[:, cols] = core.logprobs_from_logits_backward(response_logits, labels, grads["logprobs"])
        dvalues = np.zeros_like(vpred.data)
        dvalues[:, cols] = grads["values"]
        self.model.zero_grad()
        mg.tensor.backward([logits, vpred], [dlogits, dvalues])
        if cfg.max_grad_norm is not None:
            clip_grad_norm(self.model.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        stats["policy/entropy"] = float(core.masked_mean(core.entropy_from_logits(response_logits), mask))
        return stats

    # ------------------------------------------------------------------------------------------ resume
    def state_dict(self):
        """Optimizer moments, KL coefficient and shuffling-rng state: with the model weights, enough to resume exactly."""
        arrays = {f"trainer/{k}": v for k, v in self.optimizer.state_dict().items()}
        meta = {"kl_coef": float(self.kl_ctl.value), "rng_state": self.rng.bit_generator.state}
        return arrays, meta

    def load_state_dict(self, arrays, meta):
        self.optimizer.load_state_dict({k[len("trainer/"):]: v for k, v in arrays.items() if k.startswith("trainer/")})
        self.kl_ctl.value = meta["kl_coef"]
        self.rng.bit_generator.state = meta["rng_state"]
