"""GRPO, group relative policy optimisation (Shao et al. 2024, DeepSeekMath), as trl 1.16.0's GRPOTrainer runs it,
with the per-token gradient written out. Read beside docs/methods.md, section 3. Line numbers ":N" are in the
trl 1.16.0 wheel's trl/trainer/grpo_trainer.py.

Shape legend:
    B  responses in the batch (TRL's generation batch): B / G prompts with G consecutive responses each (row g*G + j
       is response j to prompt g, as TRL's RepeatSampler orders them)
    b  responses in one call of the loss: a mini-batch of the batch (TRL's micro-batch), or all of it
    T  response tokens (right padded); mask m (b,T) 1 on response tokens, every row 1...1 0...0 with at least one 1
    L_i = sum_t m_{i,t};  N_b = sum of m over the call's rows;  N = the same over the whole batch (num_items_in_batch)
    K  mini-batches whose gradients add up into one AdamW step (gradient_accumulation_steps)
    S  mini-batches in one pass over the batch (TRL's steps_per_generation; ours batch_size / mini_batch_size)

Symbols: logpi, logpi_old, logpi_ref (logprobs, old_logprobs, ref_logprobs), s (scores), A (advantages, one per
response), rho (the importance weight), e, e_high (epsilon, epsilon_high), beta, k3 (ppo_np.kl.k3).

    A_i      = (s_i - mean_group s) / (std_group s + 1e-4)    std unbiased; scale_rewards=False: no /   :2765-2787
    log rho  = logpi_{i,t} - logpi_old_{i,t}               (b,T)   importance_sampling_level "token"     :3083-3085
               1/L_i sum_t m_{i,t} (logpi - logpi_old)     (b,1)   "sequence" (GSPO): one per response   :3086-3088
    kl_{i,t} = k3_{i,t}, or rho k3_{i,t} with use_bias_correction_kl                                   :3098-3105
    l_{i,t}  = max(-A_i rho, -A_i clip(rho, 1 - e, 1 + e_high)) + beta kl_{i,t}              :3113-3120, :3150
    L        = sum_{i,t} w_{i,t} l_{i,t},   w = m / (b L_i K)      loss_type "grpo"                     :3153-3157
                                                m / (N_b K)        "bnpo"                               :3158-3162
                                                m / (b T_max K)    "dr_grpo"                            :3163-3167
                                                m / (N K / S)      "dapo" (trl 1.16.0's default)        :3168-3173
    T_max = max_completion_length, the rollout's cap on response length (a constant, not the batch's longest).

rho is not detached at either level (coef_1 = torch.exp(log_importance_weights), :3095): at the sequence level every
token of response i gets d rho_i / d logpi_{i,t} = rho_i m_{i,t} / L_i, and the whole response's loss rides on each
of its tokens (the (b,1) loss broadcasts against m). The bias-corrected KL takes a gradient through rho too:
d(rho k3)/d logpi = rho (logpi - logpi_ref) at the token level, k2's gradient times rho (docs/methods.md, section 1).
Without the correction the KL's gradient is k3's, 1 - pi_ref/pi.

One AdamW step per pass over the batch is the default (K = S), as in trl 1.16.0, whose steps_per_generation
defaults to gradient_accumulation_steps (grpo_config.py:1099): the mini-batches' w then add up to m / (B L_i),
m / (B T_max) and m / N, so the step's gradient is the gradient of the whole batch's loss, whatever the shuffle.
"bnpo" is the exception, in TRL too: its step is the mean of each mini-batch's own token mean. With
num_iterations 1 such a step sees samples of the weights it starts from, and TRL then computes no logpi_old: it
uses per_token_logps.detach() (:2642-2644, :3066), so rho = 1 exactly on every token and the clip never acts.
grpo_minibatch_loss does the same. K = 1 (a step per mini-batch, gradient_accumulation_steps=1) splits groups
across steps, and every step after a batch's first sees rho != 1.

At rho = 1 the surrogate part of a whole batch's "grpo" loss is -1/B sum_i A_i = 0 (each group's advantages sum
to 0, up to rounding), while its gradient, -A_i / (B L_i) per token, is not: a logged loss of 0 says nothing about
whether the policy learns. "dapo" and "bnpo" give -1/N sum_i L_i A_i instead, 0 only when each group's responses
have equal lengths; a mini-batch that splits groups gives -1/b sum_{i in b} A_i. The KL part is 0 only while
pi = pi_ref, at the first step of training.

The KL is inside the loss, not in the reward as in PPO and RLOO (ppo_np.kl: k3's gradient is in expectation the
reverse KL(pi_ref || pi)'s, per token). What each Dr. GRPO option removes (Liu et al. 2025, "Understanding
R1-Zero-Like Training"):
- "grpo" divides each response's token sum by its own length L_i, so a token of a short response weighs more
  than a token of a long one: with A > 0 short responses are pushed up harder, with A < 0 long responses are
  pushed down more gently. That is a length bias; "dr_grpo" divides by the constant B T_max instead, "dapo" by the
  batch's token count N.
- scale_rewards=True divides by the group's std, so a prompt whose responses score nearly alike (too easy or too
  hard) gets advantages as large as one with a real spread: a question-level difficulty bias;
  scale_rewards=False keeps A_i = s_i - mean_group s.
"""
import dataclasses
from typing import Optional

import numpy as np

from . import checks, core, kl
from .skeleton import Method, Option, Trainer, TrainerConfig, rollout_stats, whole_batch

__all__ = ["grpo_advantages", "group_reward_std", "grpo_loss", "GRPOTerms", "grpo_loss_backward", "grpo_stats",
           "GRPOConfig", "grpo_accumulation", "GRPOTrainer", "GRPO"]

STD_EPS = 1e-4      # TRL's `std_grouped_rewards + 1e-4`
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


def group_reward_std(scores, group_size):
    """std_group s: the unbiased standard deviation (torch.std) of each group's scores. (B,) -> (B / G,)."""
    return np.asarray(scores, dtype=np.float64).reshape(-1, group_size).std(axis=1, ddof=1)


def grpo_advantages(scores, group_size, scale_rewards=True):
    """A_i = (s_i - mean_group s) / (std_group s + 1e-4), or s_i - mean_group s if not scale_rewards.

    scores (B,), B a multiple of G = group_size, G consecutive responses per prompt -> advantages (B,).
    A group whose scores are all equal gets A = 0 up to rounding: s - mean is ~1e-16 |s| (the mean of equal floats
    is not always exact), and the 1e-4 keeps that residue near 1e-12 where dividing by the std alone (itself
    ~1e-16) would turn it into a number of order 1. G = 1 is refused: the unbiased std of one number is undefined
    (TRL 0.19.1's GRPOConfig refuses num_generations < 2 too, as 1.16.0's does in grpo_config.py:1137).
    """
    assert np.ndim(scores) == 1 and len(scores) % group_size == 0, "scores (B,), B a multiple of group_size"
    s = np.asarray(scores, dtype=np.float64).reshape(-1, group_size)      # (B/G, G): one row per prompt
    advantages = s - s.mean(axis=1, keepdims=True)
    if scale_rewards:
        advantages = advantages / (s.std(axis=1, ddof=1, keepdims=True) + STD_EPS)
    return advantages.reshape(-1)


@dataclasses.dataclass
class GRPOTerms:
    """What one `grpo_loss` call computed, per token (b,T) and 0 on padding unless marked: what the backward and the
    stats read. "(b,T) or (b,1)": per token at the "token" level, per response at the "sequence" level."""
    mask: np.ndarray          # 0/1 floats
    weights: np.ndarray       # w, the loss_type's normalisation
    logprobs: np.ndarray      # logpi (0 on padding)
    ref_logprobs: np.ndarray  # logpi_ref (0 on padding)
    logratio: np.ndarray      # logpi - logpi_old
    ratio: np.ndarray         # rho, (b,T) or (b,1)
    advantages: np.ndarray    # A (b,1)
    pg_losses: np.ndarray     # -A rho, (b,T) or (b,1)
    pg_losses2: np.ndarray    # -A clip(rho, 1 - e, 1 + e_high), (b,T) or (b,1)
    kl: np.ndarray            # the KL term: k3, or rho k3 with the bias correction
    beta: float
    epsilon: float
    epsilon_high: float
    sequence: bool            # importance_sampling_level == "sequence"
    bias_correction: bool     # use_bias_correction_kl
    accumulation: int         # K: this call's loss is its share of K mini-batches' loss
    pg_loss: float            # sum w max(pg_losses, pg_losses2)
    kl_loss: float            # sum w kl (without beta)


def _loss_weights(mask, loss_type, max_completion_length, num_items_in_batch, K, S):
    """w_{i,t} of the module docstring: how loss_type averages the per-token losses.  mask (b,T) -> (b,T)."""
    b = mask.shape[0]
    if loss_type == "grpo":
        return mask / (b * mask.sum(axis=1, keepdims=True) * K)  # mean over each response's tokens, then responses
    if loss_type == "bnpo":
        return mask / (mask.sum() * K)                           # mean over the call's tokens
    if loss_type == "dr_grpo":
        return mask / (b * max_completion_length * K)            # one constant for every token
    N = mask.sum() if num_items_in_batch is None else num_items_in_batch
    return mask / (N * K / S)                                    # dapo: over the whole batch's tokens


def grpo_loss(logprobs, old_logprobs, ref_logprobs, advantages, mask=None, *, beta, epsilon, epsilon_high=None,
              loss_type="grpo", max_completion_length=None, importance_sampling_level="token",
              use_bias_correction_kl=False, num_items_in_batch=None, gradient_accumulation_steps=1,
              steps_per_generation=1):
    """L = sum_{i,t} w_{i,t} [max(-A_i rho, -A_i clip(rho, 1 - e, 1 + e_high)) + beta kl_{i,t}] -> (L, terms).

    logprobs, old_logprobs, ref_logprobs (b,T), advantages (b,), mask (b,T) or None; epsilon e, epsilon_high e_high
    (None: e), beta, loss_type, max_completion_length (T_max, needed by "dr_grpo"), importance_sampling_level
    ("token" or "sequence") and use_bias_correction_kl as in the module docstring. The normalisation context, at its
    defaults for a call that is a whole optimizer step: num_items_in_batch N (None: this call's N_b),
    gradient_accumulation_steps K and steps_per_generation S. trl 1.16.0 writes `-torch.min(coef_1 * A, coef_2 * A)`
    (:3118-3120), which is our max of the negated branches (core.clipped_surrogate).
    """
    assert np.shape(old_logprobs) == np.shape(ref_logprobs) == np.shape(logprobs) == (len(advantages), len(logprobs[0]))
    m = np.ones(np.shape(logprobs), dtype=bool) if mask is None else np.asarray(mask).astype(bool)
    # padding may hold anything (even nan): replace it by 0 first, so every padded term and gradient is exactly 0
    logprobs, old_logprobs, ref_logprobs = (np.where(m, a, 0.0).astype(np.float64)
                                            for a in (logprobs, old_logprobs, ref_logprobs))
    mask = m.astype(np.float64)
    weights = _loss_weights(mask, loss_type, max_completion_length, num_items_in_batch, gradient_accumulation_steps,
                            steps_per_generation)

    sequence = importance_sampling_level == "sequence"
    logratio = logprobs - old_logprobs
    log_rho = logratio.sum(axis=1, keepdims=True) / mask.sum(axis=1, keepdims=True) if sequence else logratio
    ratio = np.exp(log_rho)
    advantages = np.asarray(advantages, dtype=np.float64)[:, None]
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    pg_losses, pg_losses2 = core.clipped_surrogate(ratio, advantages, epsilon, epsilon_high)
    k3 = kl.k3(logprobs, ref_logprobs)
    per_token_kl = ratio * k3 if use_bias_correction_kl else k3
    pg_loss = float((weights * np.maximum(pg_losses, pg_losses2)).sum())   # a (b,1) loss rides on every token
    kl_loss = float((weights * per_token_kl).sum())
    terms = GRPOTerms(mask, weights, logprobs, ref_logprobs, logratio, ratio, advantages, pg_losses, pg_losses2,
                      per_token_kl, beta, epsilon, epsilon_high, sequence, bool(use_bias_correction_kl),
                      gradient_accumulation_steps, pg_loss, kl_loss)
    return pg_loss + beta * kl_loss, terms


def grpo_loss_backward(terms):
    """dL/dlogprobs (b,T), backwards through the forward: to log rho first, then from log rho to the tokens, then the
    KL's own path through logpi. W[x] sums x over the tokens that share one rho: W[x] = x at the "token" level,
    sum_t x_t (b,1) at the "sequence" level.

        dL/dlog rho = W[w] [0 where the clipped branch wins, else -A rho]       (core.clipped_surrogate_backward)
                      + beta W[w kl]            with the bias correction, since d(rho k3)/dlog rho = rho k3 = kl
        dL/dlogpi_t = dL/dlog rho_t                         "token":    d log rho_t / dlogpi_t = 1
                      dL/dlog rho_i m_t / L_i               "sequence": d log rho_i / dlogpi_t = m_t / L_i
                      + beta w_t c (1 - pi_ref/pi)_t        (ppo_np.kl.k3_backward), c = rho with the correction, else 1
    0 on padding.
    """
    t = terms
    W = (lambda x: x.sum(axis=1, keepdims=True)) if t.sequence else (lambda x: x)
    dlog_rho = W(t.weights) * core.clipped_surrogate_backward(t.ratio, t.advantages, t.pg_losses, t.pg_losses2)
    if t.bias_correction:
        dlog_rho = dlog_rho + t.beta * W(t.weights * t.kl)
    dlogprobs = dlog_rho * t.mask / t.mask.sum(axis=1, keepdims=True) if t.sequence else dlog_rho
    dkl = t.beta * t.weights * (t.ratio if t.bias_correction else 1.0)
    return dlogprobs + kl.k3_backward(t.logprobs, t.ref_logprobs, dkl)


def grpo_stats(terms):
    """Per-mini-batch stats -> {name: float}, as trl 1.16.0 logs them (:3259-3280):
    policy/kl_k3 is its `kl` (the KL term, k3 or rho k3, averaged over the valid tokens, whatever the loss_type);
    policy/clipfrac_low, policy/clipfrac_high and policy/clipfrac its `clip_ratio/low_mean` (rho < 1 - e and A < 0),
    `clip_ratio/high_mean` (rho > 1 + e_high and A > 0) and `clip_ratio/region_mean` (either: exactly the tokens whose
    surrogate gradient is 0), over valid tokens, or over responses at the "sequence" level.
    The loss/ stats are the loss of this mini-batch's AdamW step: K times the mini-batch's share of it, so that their
    mean over a step's mini-batches is the mean loss of its AdamW steps."""
    t = terms
    m = t.mask.astype(bool)
    over = (lambda x: float(np.mean(x))) if t.sequence else (lambda x: float(np.mean(x[m])))
    low = (t.ratio < 1 - t.epsilon) & (t.advantages < 0)
    high = (t.ratio > 1 + t.epsilon_high) & (t.advantages > 0)
    K = t.accumulation
    return {
        "loss/total": K * (t.pg_loss + t.beta * t.kl_loss),
        "loss/policy": K * t.pg_loss,
        "loss/kl": K * t.kl_loss,
        "policy/kl_k3": float(t.kl[m].mean()),
        "policy/approxkl": float(0.5 * np.mean(t.logratio[m] ** 2)),
        "policy/clipfrac": over(low | high),
        "policy/clipfrac_low": over(low),
        "policy/clipfrac_high": over(high),
    }


# ----------------------------------------------------------------------------------------------------------
# the trainer: GRPO's parts for the skeleton (ppo_np/skeleton.py)


@dataclasses.dataclass
class GRPOConfig(TrainerConfig):
    """TrainerConfig's settings (batch_size: responses per step, batch_size / group_size prompts, TRL's generation
    batch; mini_batch_size: rows per forward pass with a graph, TRL's per_device_train_batch_size) and GRPO's own."""
    gradient_accumulation_steps: Optional[int] = None   # K, mini-batches per AdamW step. None: all of a pass's, one
                                        # step per pass over the batch, whole groups (trl 1.16.0's default); 1: a step
                                        # per mini-batch, each after the first on weights already moved
    num_iterations: int = 1             # mu: passes over the batch per step (trl 0.19.1's and 1.16.0's default)
    group_size: int = 8                 # G, responses per prompt (TRL's num_generations, default 8)
    beta: float = 0.04                  # weight of the KL in the loss (trl 0.14.0's; 0.19.1's and 1.16.0's is 0.0)
    epsilon: float = 0.2                # e, the clip's lower range (TRL's default)
    epsilon_high: Optional[float] = None   # e_high, the clip's upper range; None: e (TRL's default). DAPO: 0.28
    loss_type: str = "grpo"             # "grpo" (trl 0.14.0's only one), "bnpo" (0.19.1's default), "dr_grpo" or
                                        # "dapo" (1.16.0's default)
    importance_sampling_level: str = "token"    # "token" (TRL's default) or "sequence" (GSPO)
    use_bias_correction_kl: bool = False        # multiply k3 by rho (trl 1.16.0's default: True)
    scale_rewards: bool = True          # divide advantages by the group std (+1e-4); False: Dr. GRPO
    max_completion_length: Optional[int] = None   # T_max of "dr_grpo": the rollout's max_new_tokens

    def __post_init__(self):
        checks.method_config("GRPOConfig", self, "num_iterations", coefficients=("beta",))
        checks.whole_groups("GRPOConfig", self, "group_size")
        checks.number("GRPOConfig.epsilon", self.epsilon)
        checks.number("GRPOConfig.epsilon_high", self.epsilon_high, none_means="epsilon_high = epsilon")
        checks.choice("GRPOConfig.loss_type", self.loss_type, LOSS_TYPES)
        if self.loss_type == "dr_grpo":
            checks.integer("GRPOConfig.max_completion_length", self.max_completion_length,
                           why=": loss_type 'dr_grpo' divides by B * max_completion_length, a constant")
        checks.choice("GRPOConfig.importance_sampling_level", self.importance_sampling_level, ("token", "sequence"))
        checks.flag("GRPOConfig.use_bias_correction_kl", self.use_bias_correction_kl)
        steps, per_step = self.batch_size // self.mini_batch_size, self.gradient_accumulation_steps
        if per_step is None:            # all of a pass's mini-batches: one AdamW step per pass over the batch
            return
        checks.integer("GRPOConfig.gradient_accumulation_steps", per_step,
                       why=" (or None: all of the batch's mini-batches, one AdamW step per pass)")
        if steps % per_step:
            raise ValueError(f"GRPOConfig.gradient_accumulation_steps ({per_step}) must divide the {steps} "
                             "mini-batches of a pass (batch_size / mini_batch_size), so that every AdamW step adds up "
                             "as many; use None for one step per pass over the batch, or 1 for a step per mini-batch")


def grpo_accumulation(cfg):
    """K: how many mini-batches add up their gradients into one AdamW step (the skeleton's minibatches_per_update)."""
    return whole_batch(cfg) if cfg.gradient_accumulation_steps is None else cfg.gradient_accumulation_steps


def grpo_prepare(trainer, rollout):
    """The group-relative advantages, from the scores alone (the KL is in the loss, not in the reward), and N, the
    batch's response tokens, which every mini-batch's "dapo" loss divides by (TRL hands num_items_in_batch to every
    micro-batch, :2498) -> ((old_logprobs, ref_logprobs, advantages, N per unit), the rollout's stats)."""
    cfg, scores = trainer.config, rollout.scores
    advantages = grpo_advantages(scores, cfg.group_size, cfg.scale_rewards)
    std = group_reward_std(scores, cfg.group_size)
    num_items_in_batch = np.full(len(scores), int(rollout.mask.sum()))
    stats = {**rollout_stats(rollout.logprobs, rollout.ref_logprobs, rollout.mask), "objective/beta": cfg.beta,
             "grpo/mean_scores": float(scores.mean()),
             "grpo/reward_std": float(std.mean()),   # the groups' spread; trl 1.16.0's reward_std is the batch's
             "grpo/frac_reward_zero_std": float(np.mean(np.isclose(std, 0.0)))}       # TRL's, isclose
    return (rollout.logprobs, rollout.ref_logprobs, advantages, num_items_in_batch), stats


def grpo_minibatch_loss(cfg, batch, logprobs, values, old_logprobs, ref_logprobs, advantages, num_items_in_batch):
    """grpo_loss on one mini-batch, normalised as its share of its AdamW step's loss (no value head: values is None).

    When each AdamW step covers the whole batch once (K = S, num_iterations 1), its samples come from the weights it
    starts from, and logpi_old is this forward's logpi, held constant: TRL's per_token_logps.detach(), which it uses
    whenever gradient_accumulation_steps % (steps_per_generation * num_iterations) == 0 (:2642-2644, :3066). Then
    rho = 1 exactly. Otherwise logpi_old is the rollout's, computed before the step's first update."""
    K, S = grpo_accumulation(cfg), whole_batch(cfg)
    if K == S and cfg.num_iterations == 1:
        old_logprobs = logprobs
    return grpo_loss(logprobs, old_logprobs, ref_logprobs, advantages, batch.mask, beta=cfg.beta, epsilon=cfg.epsilon,
                     epsilon_high=cfg.epsilon_high, loss_type=cfg.loss_type,
                     max_completion_length=cfg.max_completion_length,
                     importance_sampling_level=cfg.importance_sampling_level,
                     use_bias_correction_kl=cfg.use_bias_correction_kl, num_items_in_batch=num_items_in_batch[0],
                     gradient_accumulation_steps=K, steps_per_generation=S)


def grpo_check(cfg, queries, responses):
    """Whole groups of group_size consecutive rows, and with "dr_grpo" no response longer than its constant T_max."""
    checks.groups(queries, cfg.group_size)
    longest = max(len(r) for r in responses)
    if cfg.max_completion_length is not None and longest > cfg.max_completion_length:
        raise ValueError(f"responses have up to {longest} tokens but max_completion_length = "
                         f"{cfg.max_completion_length}; it must be the longest response the rollout can produce")


class GRPOTrainer(Trainer):
    """One GRPO step on a batch of group_size consecutive responses per prompt. No value head: the baseline of a
    response is its group's mean score.

        1. forward pass, no graph, in chunks of forward_batch_size: old_logprobs, ref_logprobs (B, R)
        2. group-relative advantages from the scores alone (grpo_prepare)
        3. num_iterations passes over shuffled mini-batches: forward with graph, grpo_loss and its per-token
           gradient, carried to the logits and through the GPT (ppo_np.update), added up over
           gradient_accumulation_steps mini-batches (by default all of a pass's), then AdamW
    """

    def __init__(self, model, ref_model, config=None, pad_token_id=0):
        super().__init__(GRPO, model, ref_model, config, pad_token_id)


def grpo_configure(fields, response_tokens):
    """The Method's configure: "dr_grpo" divides by T_max, the rollout's cap on response length (response_tokens);
    the other loss types take none."""
    return {**fields, "max_completion_length": response_tokens if fields.get("loss_type") == "dr_grpo" else None}


def grpo_credit(cfg, scores, logprobs, ref_logprobs, values, mask):
    """tokens.html's credit: each response's group-relative advantage on every one of its tokens, (N, R)."""
    return grpo_advantages(scores, cfg.group_size, cfg.scale_rewards)[:, None] * mask


GRPO = Method(
    name="grpo", label="GRPO", trainer=GRPOTrainer, config=GRPOConfig, epochs="num_iterations",
    prepare=grpo_prepare, loss=grpo_minibatch_loss, loss_backward=grpo_loss_backward, stats=grpo_stats,
    check=grpo_check, prepare_timing="compute_advantages", minibatches_per_update=grpo_accumulation,
    group="group_size", clip="epsilon", configure=grpo_configure,
    # The application's defaults (RLOO's note on how they were chosen). The loss, clip and KL options default to
    # what those measurements ran with: loss "grpo", no clip-higher, a ratio per token and plain k3 (trl 1.16.0's
    # defaults are "dapo" and the bias-corrected k3 with beta 0; docs/methods.md, section 3).
    options=(
        Option(flag="--grpo-group-size", field="group_size", default=4, at_least=2,
               why="the baseline is the other responses to a prompt", help="GRPO: responses per prompt"),
        # TRL 0.14.0's 0.04 let the run reach 35.6 nats with "smart" in 76% of the answers (measured); 0.2 put one
        # word in 51% of them, 0.1 ran to 20 nats
        Option(flag="--grpo-beta", field="beta", default=0.25, at_least=0,
               help="GRPO: weight of the k3 KL in the loss"),
        Option(flag="--grpo-loss-type", field="loss_type", default="grpo", choices=LOSS_TYPES,
               help="GRPO: the loss's normalisation (dapo: trl 1.16.0's default)"),
        Option(flag="--grpo-epsilon-high", field="epsilon_high", default=None, above=0, kind=float,
               help="GRPO: the clip's upper range (DAPO: 0.28); none: the lower range"),
        Option(flag="--grpo-importance-sampling", field="importance_sampling_level", default="token",
               choices=("token", "sequence"), help="GRPO: the ratio per token, or per response (sequence: GSPO)"),
        Option(flag="--grpo-bias-correction-kl", field="use_bias_correction_kl", default=False,
               help="GRPO: multiply the k3 KL by the ratio (trl 1.16.0's default)"),
    ),
    curves=((("grpo/loss/kl",), "k3 KL term of the loss"), (("grpo/policy/entropy",), "policy entropy (nats / token)"),
            (("grpo/loss/policy",), "policy loss"), (("grpo/policy/clipfrac",), "policy clipfrac")),
    credit=grpo_credit,
    credit_text="the response's group-relative advantage, on every token: its score against those of "
                "{group_others} more responses to its prompt, sampled with it",
)
