"""A method written outside the package, as a reader would add one (docs/methods.md, section 7): REINFORCE whose
advantage is the sign of the score, A_i = scale sign(s_i), L = -1/B sum_i A_i logpi(y_i). No baseline, no KL: a
toy, to show that a module and a registry entry are all the application needs. Its loss, backward and stats are
REINFORCE's (ppo_np/reinforce.py), given other advantages.
"""
import dataclasses

import numpy as np

from ppo_np import Method, Option, Trainer, TrainerConfig, checks
from ppo_np.reinforce import reinforce_loss, reinforce_loss_backward, reinforce_stats
from ppo_np.skeleton import SHARED, rollout_stats, whole_batch


@dataclasses.dataclass
class SignConfig(TrainerConfig):
    scale: float = 1.0                  # A_i = scale sign(s_i)

    def __post_init__(self):
        checks.method_config("SignConfig", self)
        checks.number("SignConfig.scale", self.scale)


def sign_prepare(trainer, rollout):
    """A_i = scale sign(s_i) -> ((advantages,), the rollout's stats)."""
    advantages = trainer.config.scale * np.sign(rollout.scores)
    return (advantages,), {**rollout_stats(rollout.logprobs, rollout.ref_logprobs, rollout.mask),
                           "sign/mean_scores": float(rollout.scores.mean())}


def sign_loss(cfg, batch, logprobs, values, advantages):
    return reinforce_loss(logprobs, advantages, batch.mask, cfg.batch_size)


def sign_credit(cfg, scores, logprobs, ref_logprobs, values, mask):
    return cfg.scale * np.sign(scores)[:, None] * mask


class SignTrainer(Trainer):
    def __init__(self, model, ref_model, config=None, pad_token_id=0):
        super().__init__(SIGN, model, ref_model, config, pad_token_id)


SIGN = Method(
    name="sign", label="SIGN", trainer=SignTrainer, config=SignConfig,
    prepare=sign_prepare, loss=sign_loss, loss_backward=reinforce_loss_backward, stats=reinforce_stats,
    minibatches_per_update=whole_batch,
    uses=tuple(flag for flag in SHARED if flag != "--ppo-epochs"),      # one pass: no epochs field
    options=(Option(flag="--sign-scale", field="scale", default=1.0, above=0, help="SIGN: the advantages' size"),),
    curves=((("sign/loss/policy",), "policy loss"), (("sign/mean_scores",), "mean score")),
    credit=sign_credit, credit_text="the sign of the response's score, times {scale:.1f}, on every token",
)
