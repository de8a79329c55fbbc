"""DPO, direct preference optimisation (Rafailov et al. 2023), as the authors' `preference_loss` computes it, with
the per-sequence gradient carried to every token's log-probability by hand. Read beside docs/methods.md, section 4.

Shape legend: P preference pairs; per sequence (P,); per token (P,T) with a right-padded mask.
Symbols: a response's log-probability is the sum over its tokens, logpi(y) = sum_t m_t logpi(y_t);
pi_c = logpi(y_w), pi_r = logpi(y_l) (chosen y_w, rejected y_l), ref_c, ref_r the same under pi_ref; beta; eps
(label_smoothing).

    h    = (pi_c - ref_c) - (pi_r - ref_r)                              the implicit reward margin, over beta
    loss = 1/P sum_p [ -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h) ]     eps = 0: DPO

No reward model and no sampling during training: the pairs are fixed, the reference's log-probabilities are
computed once, and each step only moves pi_c up and pi_r down relative to the reference. eps > 0 is the authors'
"conservative DPO" (labels assumed flipped with probability eps), kept because it is one extra term.
"""
import dataclasses

import numpy as np

from . import checks
from .batch import layout
from .skeleton import Method, Option, Trainer, TrainerConfig

__all__ = ["dpo_loss", "DPOTerms", "dpo_loss_backward", "dpo_stats", "make_pairs", "DPOConfig",
           "DPOTrainer", "DPO"]


def _log_sigmoid(x):
    """log sigmoid(x) = -log(1 + e^-x), with no overflow for large |x|."""
    return -np.logaddexp(0.0, -x)


def _sigmoid(x):
    return np.exp(_log_sigmoid(x))


@dataclasses.dataclass
class DPOTerms:
    """What one `dpo_loss` call computed, per pair (P,): what the backward and the stats read."""
    policy_chosen_logps: np.ndarray     # pi_c
    policy_rejected_logps: np.ndarray   # pi_r
    chosen_rewards: np.ndarray          # beta (pi_c - ref_c)
    rejected_rewards: np.ndarray        # beta (pi_r - ref_r)
    logits: np.ndarray                  # h (the authors' name for it)
    losses: np.ndarray                  # per-pair loss
    beta: float
    label_smoothing: float


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,
             label_smoothing=0.0):
    """loss = mean_p [-(1 - eps) log sigmoid(beta h_p) - eps log sigmoid(-beta h_p)],
    h = (pi_c - ref_c) - (pi_r - ref_r).   Four (P,) arrays of sequence log-probabilities -> (loss, DPOTerms).

    The authors' `preference_loss` returns the per-pair losses and their trainer takes `losses.mean()`.
    """
    pc, pr, rc, rr = (np.asarray(a, dtype=np.float64) for a in (policy_chosen_logps, policy_rejected_logps,
                                                                ref_chosen_logps, ref_rejected_logps))
    assert pc.ndim == 1 and pc.shape == pr.shape == rc.shape == rr.shape, "four (P,) sequence log-probabilities"
    logits = (pc - pr) - (rc - rr)
    losses = -(1.0 - label_smoothing) * _log_sigmoid(beta * logits) - label_smoothing * _log_sigmoid(-beta * logits)
    terms = DPOTerms(pc, pr, beta * (pc - rc), beta * (pr - rr), logits, losses, beta, label_smoothing)
    return float(losses.mean()), terms


def dpo_loss_backward(terms):
    """dL/dpi_c and dL/dpi_r per pair -> {"chosen": (P,), "rejected": (P,)}:

        dL/dh  = -beta [(1 - eps) sigmoid(-beta h) - eps sigmoid(beta h)] / P,   dL/dpi_c = dL/dh,   dL/dpi_r = -dL/dh
    (d/dx -log sigmoid(x) = -sigmoid(-x)). With eps = 0 a pair the policy already ranks far apart (beta h >> 0)
    gets almost no gradient; a pair ranked the wrong way round gets up to beta / P.
    To the tokens: pi_c = sum_t m_t logpi(y_t), so dL/dlogpi(y_t) = m_t dL/dpi_c (the trainer does this).
    """
    t = terms
    bh = t.beta * t.logits
    dlogits = -t.beta * ((1.0 - t.label_smoothing) * _sigmoid(-bh) - t.label_smoothing * _sigmoid(bh)) / len(bh)
    return {"chosen": dlogits, "rejected": -dlogits}


def dpo_stats(terms):
    """The DPO authors' training metrics (their `get_batch_metrics`, train split), averaged over the pairs:
    rewards are beta (logpi - logpi_ref) of each response; accuracies = mean(chosen reward > rejected reward)."""
    t = terms
    return {
        "rewards_train/chosen": float(t.chosen_rewards.mean()),
        "rewards_train/rejected": float(t.rejected_rewards.mean()),
        "rewards_train/accuracies": float(np.mean(t.chosen_rewards > t.rejected_rewards)),
        "rewards_train/margins": float(np.mean(t.chosen_rewards - t.rejected_rewards)),
        "logps_train/chosen": float(t.policy_chosen_logps.mean()),
        "logps_train/rejected": float(t.policy_rejected_logps.mean()),
        "loss/train": float(t.losses.mean()),
    }


def make_pairs(scores, rng, bradley_terry=False):
    """Which response of each pair is chosen -> chosen (P,) ints in {0, 1}; the other one is rejected.

    scores (P, 2): the proxy scores s_a, s_b of two responses to each prompt (e.g. two reference samples).
    Default: the higher score is chosen. bradley_terry=True: response a is chosen with the Bradley-Terry
    probability sigmoid(s_a - s_b), which is how a human (or a noisy labeller) with those scores as rewards would
    label. Ties, and always two identical responses, get a fair coin (sigmoid(0) = 1/2 in both modes), so neither
    position is favoured. Such a pair is harmless but useless in DPO: identical responses have h = 0 whatever
    the weights, so their loss is log 2 and their gradient exactly 0; they only dilute the batch mean. Drop them
    before training if they are common (DPOTrainer reports their share as dpo/identical_pairs).
    """
    scores = np.asarray(scores, dtype=np.float64)     # where the proxy's scores enter DPO: checked here
    if scores.ndim != 2 or scores.shape[1] != 2 or len(scores) == 0:
        raise ValueError(f"scores must be (P, 2): the proxy scores of the two responses to each prompt, got shape "
                         f"{scores.shape}")
    checks.finite_scores(scores, len(scores), "pairs")
    p_first = _sigmoid(scores[:, 0] - scores[:, 1]) if bradley_terry else np.where(
        scores[:, 0] > scores[:, 1], 1.0, np.where(scores[:, 0] < scores[:, 1], 0.0, 0.5))
    return np.where(rng.random(len(scores)) < p_first, 0, 1)


# ----------------------------------------------------------------------------------------------------------
# the trainer: DPO's parts for the skeleton (ppo_np/skeleton.py)


@dataclasses.dataclass
class DPOConfig(TrainerConfig):
    """TrainerConfig's settings, counted in preference pairs (a forward pass of forward_batch_size pairs is 2 rows
    each), and DPO's own."""
    beta: float = 0.1                   # TRL 0.13.0's DPOConfig default (the authors: "typically 0.1 to 0.5")
    label_smoothing: float = 0.0        # eps of conservative DPO; 0 = DPO
    batch_size: int = 64                # preference pairs per step
    epochs: int = 1                     # passes over the pairs per step

    def __post_init__(self):
        checks.method_config("DPOConfig", self, "epochs")
        checks.number("DPOConfig.beta", self.beta)
        checks.interval("DPOConfig.label_smoothing", self.label_smoothing, 0.5, high_open=True,
                        why=" (it is the probability that a label is flipped; at 0.5 the labels carry no information)")


def dpo_prepare(trainer, rollout):
    """The reference's sequence log-probabilities, computed once per step -> ((ref_c, ref_r), no stats): (P,) each,
    ref_logprobs summed over each row's tokens (0 on padding), the chosen rows 0..P-1, the rejected P..2P-1."""
    ref_logps = rollout.ref_logprobs.sum(axis=1)
    P = len(ref_logps) // 2
    return (ref_logps[:P], ref_logps[P:]), {}


@dataclasses.dataclass
class DPOTokenTerms:
    """What `dpo_token_loss` computed: the pairs' DPOTerms, and the (2p, T) mask of their rows."""
    pairs: DPOTerms
    mask: np.ndarray


def dpo_token_loss(cfg, batch, logprobs, values, ref_chosen_logps, ref_rejected_logps):
    """dpo_loss of p pairs from the token log-probabilities (2p, T) of their rows, the p chosen then their p
    rejected: pi_c, pi_r = logpi(y) = sum_t m_t logpi(y_t) of each half -> (loss, DPOTokenTerms). No value head."""
    p = len(ref_chosen_logps)
    logps = (logprobs * batch.mask).sum(axis=1)
    loss, terms = dpo_loss(logps[:p], logps[p:], ref_chosen_logps, ref_rejected_logps, cfg.beta, cfg.label_smoothing)
    return loss, DPOTokenTerms(terms, batch.mask)


def dpo_token_loss_backward(terms):
    """dL/dlogpi(y_t) = m_t dL/dlogpi(y) (2p, T): d logpi(y) / d logpi(y_t) = m_t, so every token of a response gets
    its response's gradient, dL/dpi_c for the chosen rows and dL/dpi_r for the rejected ones."""
    grads = dpo_loss_backward(terms.pairs)
    return np.concatenate([grads["chosen"], grads["rejected"]])[:, None] * terms.mask


def dpo_token_stats(terms):
    """dpo_stats of the mini-batch's pairs."""
    return dpo_stats(terms.pairs)


class DPOTrainer(Trainer):
    """Gradient steps on a batch of fixed preference pairs. No value head, no reward model, no sampling.

    The batch is laid out as 2P rows, the P chosen responses then the P rejected ones, each after its query; the
    skeleton shuffles pairs, and a mini-batch of pairs takes its rows from both halves, so one forward pass gives
    both pi_c and pi_r.
        1. forward pass of the reference, no graph: ref_c, ref_r (P,) (dpo_prepare)
        2. epochs passes over shuffled mini-batches of pairs: forward with graph, token logprobs summed per response,
           dpo_loss and its per-pair gradient, spread over each response's tokens (dpo_token_loss and its
           backward), through the GPT, AdamW
    """

    def __init__(self, model, ref_model, config=None, pad_token_id=0):
        super().__init__(DPO, model, ref_model, config, pad_token_id)

    def step(self, queries, chosen, rejected):
        """queries, chosen, rejected: lists of P 1-D int arrays (P = batch_size) -> stats."""
        queries, chosen, rejected = self.checked(checks.preference_batch, queries, chosen, rejected)
        identical = np.array([np.array_equal(c, r) for c, r in zip(chosen, rejected)])
        stats = self.run(layout(queries + queries, chosen + rejected, self.pad_token_id))
        stats["dpo/identical_pairs"] = float(identical.mean())
        return stats


def dpo_credit(cfg, scores, logprobs, ref_logprobs, values, mask):
    """tokens.html's credit: each token's implicit reward beta (logpi(y_t) - logpi_ref(y_t)), (N, R)."""
    return cfg.beta * (logprobs - ref_logprobs) * mask


DPO = Method(
    name="dpo", label="DPO", trainer=DPOTrainer, config=DPOConfig, epochs="epochs",
    prepare=dpo_prepare, loss=dpo_token_loss, loss_backward=dpo_token_loss_backward, stats=dpo_token_stats,
    forward=("ref_logprobs",), rows_per_unit=2, entropy=False, prepare_timing=None, pairs=True,
    options=(
        # the application's default (RLOO's note on how it was chosen). TRL's 0.1 drifted to 23.8 nats and raised
        # the reference's NLL of the answers from 5.15 to 6.61 (measured); 0.25 and 1.0 kept the KL within 12 nats
        # too, with fewer answers the lexicon calls positive
        Option(flag="--dpo-beta", field="beta", default=0.5, above=0, help="DPO: beta"),
    ),
    curves=((("dpo/rewards_train/chosen", "dpo/rewards_train/rejected"), "implicit rewards beta log(pi / pi_ref)"),
            (("dpo/rewards_train/margins",), "implicit reward margin"), (("dpo/rewards_train/accuracies",), "accuracy"),
            (("dpo/logps_train/chosen", "dpo/logps_train/rejected"), "log pi of the responses"),
            (("dpo/loss/train",), "DPO loss"), (("dpo/identical_pairs",), "identical pairs")),
    credit=dpo_credit,
    credit_text="the token's implicit reward &beta;&nbsp;log(&pi;/&pi;<sub>ref</sub>), &beta;&nbsp;=&nbsp;{beta:.3f}",
)
