"""PPOTrainer: one PPO step on a batch of (query, response, score) triples, as TRL 0.1's `PPOTrainer.step`.

    1. forward pass, no graph, in chunks of forward_batch_size:  logprobs, ref_logprobs, values   (B, R)
    2. rewards   r_t = -kl_coef (logprobs_t - ref_logprobs_t)  (+ score on each row's last token)
    3. GAE advantages and returns; advantages whitened over the batch's response tokens
    4. ppo_epochs passes over shuffled mini-batches: forward with graph, ppo_loss and its per-token gradients
       dloss/dlogprobs and dloss/dvalues, carried to the logits by the log-softmax backward, model backward, AdamW
    5. adaptive KL update with n_steps = batch_size

The batch layout (left-padded queries, right-padded responses) is `ppo_np.batch`.
"""
import dataclasses
import time
from typing import Optional

import numpy as np

import minigpt_np as mg
from minigpt_np.optim import AdamW, clip_grad_norm

from . import checks, core
from .batch import layout, response_logprobs, response_logprobs_and_values


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
    score_clip: Optional[float] = None   # clip each score to [-score_clip, score_clip] before the rewards (TRL 0.7.11's
                                         # score_clip); None = off, as in TRL 0.1
    max_grad_norm: Optional[float] = None   # global gradient-norm clip; None = off, as in TRL 0.1
    weight_decay: float = 0.0           # AdamW decoupled decay; 0 = Adam, as in TRL 0.1
    seed: int = 0                       # seeds the mini-batch shuffling

    def __post_init__(self):
        checks.ppo_config(self)


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

    def batched_forward_pass(self, batch):
        """logprobs, ref_logprobs and values (B, R) of the response tokens, no graph, forward_batch_size rows at a time."""
        fbs = self.config.forward_batch_size
        logprobs, values = response_logprobs_and_values(self.model, batch, fbs)
        return logprobs, response_logprobs(self.ref_model, batch, fbs), values

    def step(self, queries, responses, scores):
        """One PPO step. queries, responses: lists of B 1-D int arrays (any lengths); scores (B,) -> stats (TRL keys)."""
        cfg = self.config
        queries, responses, scores = checks.rollout_batch(queries, responses, scores, cfg.batch_size,
                                                          self.model.cfg.block_size, self.model.cfg.vocab_size)
        with checks.trusted():     # the batch is checked; everything below works on arrays made from it
            return self._step(layout(queries, responses, self.pad_token_id), scores)

    def _step(self, batch, scores):
        cfg, mask = self.config, batch.mask
        timing, t0 = {}, time.perf_counter()

        t = time.perf_counter()
        logprobs, ref_logprobs, values = self.batched_forward_pass(batch)
        timing["time/ppo/forward_pass"] = time.perf_counter() - t

        t = time.perf_counter()
        kl_coef = self.kl_ctl.value
        if cfg.score_clip is not None:      # a bounded score stops paying for ever more of what already scores well
            scores = np.clip(scores, -cfg.score_clip, cfg.score_clip)
        rewards, non_score_rewards = core.compute_rewards(scores, logprobs, ref_logprobs, kl_coef, mask)
        advantages, returns = core.compute_advantages(values, rewards, cfg.gamma, cfg.lam, mask)
        # Whitened once over all response tokens of the batch. TRL 0.1 whitened inside each mini-batch (of one row),
        # which normalises every response on its own; over the batch keeps the relative size of advantages between
        # responses, as TRL does from v0.5.0 on.
        advantages = core.whiten(advantages, mask)
        timing["time/ppo/compute_rewards"] = time.perf_counter() - t

        t = time.perf_counter()
        all_stats = []
        for _ in range(cfg.ppo_epochs):
            order = self.rng.permutation(cfg.batch_size)
            for start in range(0, cfg.batch_size, cfg.mini_batch_size):
                rows = order[start:start + cfg.mini_batch_size]
                all_stats.append(self.train_minibatch(batch.rows(rows), logprobs[rows], values[rows],
                                                      advantages[rows], returns[rows]))
        timing["time/ppo/optimize_step"] = time.perf_counter() - t

        t = time.perf_counter()
        stats = step_stats(all_stats, logprobs, ref_logprobs, non_score_rewards, scores, kl_coef, mask)
        timing["time/ppo/calc_stats"] = time.perf_counter() - t
        self.kl_ctl.update(stats["objective/kl"], cfg.batch_size)
        timing["time/ppo/total"] = time.perf_counter() - t0
        return {**stats, **timing}

    def train_minibatch(self, batch, old_logprobs, old_values, advantages, returns):
        """One gradient update on a mini-batch (a Batch of a few rows and their per-token arrays) -> its stats.

        Forward with a graph, the PPO loss and its per-token gradients, the log-softmax backward into the
        logits, the model's backward from logits and values at once, then the optimizer step.
        """
        cfg, cols, labels = self.config, batch.response_columns, batch.labels
        logits, vpred = self.model.logits_and_values(batch.input_ids, batch.attention_mask)  # (b, Q+R, V), (b, Q+R)
        response_logits = logits.data[:, cols]                                                 # (b, R, V)
        logprobs = core.logprobs_from_logits(response_logits, labels)
        loss, terms = core.ppo_loss(logprobs, old_logprobs, vpred.data[:, cols].astype(np.float64), old_values,
                                    advantages, returns, cliprange=cfg.cliprange,
                                    cliprange_value=cfg.cliprange_value, vf_coef=cfg.vf_coef, mask=batch.mask)
        grads = core.ppo_loss_backward(terms)
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
        stats = core.ppo_stats(terms)
        stats["policy/entropy"] = core.masked_mean(core.entropy_from_logits(response_logits), batch.mask)
        return stats


def step_stats(minibatch_stats, logprobs, ref_logprobs, non_score_rewards, scores, kl_coef, mask):
    """TRL's step stats: the objective over the rollouts, and the mean of every mini-batch's `ppo_stats` under
    "ppo/" (equal weight per mini-batch). logprobs, ref_logprobs, non_score_rewards, mask (B, R); scores (B,)."""
    kl = ((logprobs - ref_logprobs) * mask).sum(axis=1)                          # (B,) nats per response
    stats = {
        "objective/kl": float(kl.mean()),
        "objective/kl_coef": float(kl_coef),
        "objective/entropy": float((-logprobs * mask).sum(axis=1).mean()),     # sampled-token estimate
        "objective/response_length": float(mask.sum(axis=1).mean()),
        "ppo/mean_non_score_reward": float(non_score_rewards.sum(axis=1).mean()),
        "ppo/mean_scores": float(scores.mean()),
        **{f"ppo/{key}": float(np.mean([s[key] for s in minibatch_stats])) for key in minibatch_stats[0]},
    }
    stats["ppo/val/var_explained"] = 1.0 - stats["ppo/val/error"] / stats["ppo/returns/var"]
    return stats
