"""PPO's parts for the trainer skeleton (ppo_np/skeleton.py): one step of TRL 0.1's `PPOTrainer.step` on a batch
of (query, response, score) triples. The equations are ppo_np/core.py's; read beside docs/ppo.md.

    1. forward pass, no graph, in chunks of forward_batch_size: logprobs, ref_logprobs, values (B, R)   [skeleton]
    2. rewards   r_t = -kl_coef (logprobs_t - ref_logprobs_t)  (+ score on each row's last token)     [ppo_prepare]
    3. GAE advantages and returns; advantages whitened over the batch's response tokens                [ppo_prepare]
    4. ppo_epochs passes over shuffled mini-batches: forward with graph, ppo_loss [ppo_minibatch_loss] and its
       per-token gradients dloss/dlogprobs and dloss/dvalues, carried to the logits by the log-softmax backward,
       model backward, AdamW                                                                           [skeleton]
    5. the stats; adaptive KL update with n_steps = batch_size                                          [ppo_finish]

The batch layout (left-padded queries, right-padded responses) is `ppo_np.batch`. PPO is the application's default
method: its own options are the run's PPO settings (minichatgpt's RunConfig.ppo).
"""
import dataclasses
from typing import Optional

import numpy as np

from . import checks, core
from .skeleton import Method, Option, Trainer, TrainerConfig, rollout_stats


@dataclasses.dataclass
class PPOConfig(TrainerConfig):
    """TrainerConfig's lr (1.41e-5), batch_size (256 triples per step), forward_batch_size, max_grad_norm (None) and
    weight_decay (0) are TRL 0.1's defaults; seed seeds the mini-batch shuffling."""
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

    def __post_init__(self):
        checks.method_config("PPOConfig", self, "ppo_epochs", coefficients=("init_kl_coef",))
        for name in ("cliprange", "cliprange_value", "vf_coef", "horizon", "target"):
            checks.number(f"PPOConfig.{name}", getattr(self, name))
        checks.interval("PPOConfig.gamma", self.gamma, 1.0)
        checks.interval("PPOConfig.lam", self.lam, 1.0)
        checks.number("PPOConfig.score_clip", self.score_clip, none_means="scores unclipped")


def ppo_check(cfg, queries, responses):
    """The batch's response tokens are whitened together (section 4): their unbiased variance needs at least 2."""
    if sum(len(r) for r in responses) < 2:
        raise ValueError("the batch holds 1 response token; PPO whitens the advantages over the batch's response "
                         "tokens, and the unbiased variance of one number is undefined: use batch_size >= 2 or a "
                         "longer response")


def ppo_prepare(trainer, rollout):
    """Sections 2 to 4: the rewards with the KL penalty at the controller's current kl_coef, GAE, and the advantages
    whitened once over every response token of the batch -> ((old_logprobs, old_values, advantages, returns), the
    rollout's stats)."""
    cfg, mask = trainer.config, rollout.mask
    kl_coef, scores = trainer.kl_ctl.value, rollout.scores
    if cfg.score_clip is not None:      # a bounded score stops paying for ever more of what already scores well
        scores = np.clip(scores, -cfg.score_clip, cfg.score_clip)
    rewards, non_score_rewards = core.compute_rewards(scores, rollout.logprobs, rollout.ref_logprobs, kl_coef, mask)
    advantages, returns = core.compute_advantages(rollout.values, rewards, cfg.gamma, cfg.lam, mask)
    # Whitened once over all response tokens of the batch. TRL 0.1 whitened inside each mini-batch (of one row),
    # which normalises every response on its own; over the batch keeps the relative size of advantages between
    # responses, as TRL does from v0.5.0 on.
    advantages = core.whiten(advantages, mask)
    objective = rollout_stats(rollout.logprobs, rollout.ref_logprobs, mask)
    stats = {"objective/kl": objective.pop("objective/kl"), "objective/kl_coef": float(kl_coef), **objective,
             "ppo/mean_non_score_reward": float(non_score_rewards.sum(axis=1).mean()),
             "ppo/mean_scores": float(scores.mean())}
    return (rollout.logprobs, rollout.values, advantages, returns), stats


def ppo_minibatch_loss(cfg, batch, logprobs, values, old_logprobs, old_values, advantages, returns):
    """Sections 5 and 6 on one mini-batch: core.ppo_loss of the value head's values now against the rollout's."""
    return core.ppo_loss(logprobs, old_logprobs, values, old_values, advantages, returns, cliprange=cfg.cliprange,
                         cliprange_value=cfg.cliprange_value, vf_coef=cfg.vf_coef, mask=batch.mask)


def ppo_finish(trainer, stats):
    """The explained variance of the averaged stats; then the KL controller moves, n_steps = batch_size (section
    10), after this step's rewards used its value, as TRL 0.1 updates it after recording the stats."""
    stats["ppo/val/var_explained"] = 1.0 - stats["ppo/val/error"] / stats["ppo/returns/var"]
    trainer.kl_ctl.update(stats["objective/kl"], trainer.config.batch_size)


class PPOTrainer(Trainer):
    """One PPO step on B (query, response, score) rows (module docstring); `kl_ctl` is TRL 0.1's KL controller."""

    def __init__(self, model, ref_model, config=None, pad_token_id=0):
        super().__init__(PPO, model, ref_model, config, pad_token_id)
        self.kl_ctl = (core.AdaptiveKLController(self.config.init_kl_coef, self.config.target, self.config.horizon)
                       if self.config.adap_kl_ctrl else core.FixedKLController(self.config.init_kl_coef))


def gae_credit(cfg, scores, logprobs, ref_logprobs, values, mask):
    """tokens.html's credit: the GAE advantage A_t (sections 2 and 3, not whitened) of each token, (N, R)."""
    rewards, _ = core.compute_rewards(scores, logprobs, ref_logprobs, cfg.init_kl_coef, mask)
    return core.compute_advantages(values, rewards, cfg.gamma, cfg.lam, mask)[0]


PPO = Method(
    name="ppo", label="PPO", trainer=PPOTrainer, config=PPOConfig, epochs="ppo_epochs",
    prepare=ppo_prepare, loss=ppo_minibatch_loss, loss_backward=core.ppo_loss_backward, stats=core.ppo_stats,
    forward=("logprobs", "ref_logprobs", "values"), check=ppo_check, stats_timing="calc_stats", finish=ppo_finish,
    clip="cliprange",
    # The application's run fixes the KL coefficient: over its 90 steps the adaptive controller with TRL's horizon
    # 10000 cannot move (0.128% per step at most), and a horizon short enough to move it lowered beta while the KL
    # was still small and let the KL run away later (measured: 14 to 17 nats against a target of 10).
    options=(
        Option(flag="--init-kl-coef", field="init_kl_coef", default=0.2, at_least=0,
               help="beta of the per-token KL penalty (its start with --adaptive-kl)"),
        Option(flag="--target-kl", field="target", default=6.0, above=0,
               help="KL (nats/response) the adaptive controller aims at"),
        Option(flag="--horizon", field="horizon", default=10000, above=0,
               help="adaptive KL controller horizon, in samples"),
        Option(flag="--adaptive-kl", field="adap_kl_ctrl", default=False,
               help="adapt the KL coefficient towards --target-kl (--no-adaptive-kl keeps it fixed at --init-kl-coef)"),
    ),
    curves=((("objective/kl_coef",), "kl_coef"), (("ppo/policy/entropy",), "policy entropy (nats / token)"),
            (("ppo/loss/value",), "value loss"), (("ppo/policy/clipfrac",), "policy clipfrac")),
    credit=gae_credit,
    credit_text="the token's GAE advantage from the per-token rewards (KL penalty with &beta;&nbsp;=&nbsp;"
                "{init_kl_coef:.3f} on every token, the reward model's score on the last) and the policy's value head",
    credit_from_log=(("init_kl_coef", "objective/kl_coef"),),
)
