"""The trainer skeleton: one step for every method (PPO, RLOO, GRPO, DPO, REINFORCE), and the parts a method plugs
into it.

A method is a `Method`, declared in its own module beside its equations with keyword arguments: its config (a
`TrainerConfig`, which holds the fields every trainer has), its `prepare` and the forward/backward pair of its loss
over a mini-batch's token log-probabilities; and, as plain data for an application to read, how a loop drives it, its
own options (`Option` rows) and how a report shows it (docs/methods.md, section 7). `Trainer` does the rest, the same
way for every method (docs/methods.md, section 6):

    construction  the policy, the frozen reference, AdamW, the generator that shuffles; the two vocabularies must
                  match, a method with values needs the policy's value head; no dropout anywhere
    step          1. check the batch once (ppo_np.checks) and lay it out (ppo_np.batch)
                  2. no-graph forward passes, forward_batch_size units at a time, of what the method asks for:
                     logprobs (log pi_old), ref_logprobs, values (V_old), (B, R) each             -> Rollout
                  3. the method's prepare: one entry per unit for the mini-batches (advantages, returns, DPO's
                     reference sums, ...), and the step's stats about the rollout
                  4. epochs passes (one if the method has no such field), each a fresh shuffle of the units cut
                     into mini-batches of mini_batch_size:
                       forward with a graph                         -> logprobs (b, R) [and values (b, R)]
                       the method's loss, then its backward         -> dL/dlogprobs (b, R) [and dL/dvalues]
                       ppo_np.update: the log-softmax backward into the logits, the GPT's backward from the logits
                       [and the values] at once, added to the weights' .grad
                     and after every minibatches_per_update of them (1 unless the method says otherwise; `whole_batch`:
                     all of a pass's) an optional global-norm clip and one AdamW step
                  5. the mean of every mini-batch's stats under the method's prefix, and the timings

A unit is what a shuffle draws: a response (row u of the layout) for PPO, RLOO, GRPO and REINFORCE; for DPO a
preference pair, whose chosen response is row u and whose rejected response is row u + P.
The registry, a plain dict from each method's name to its Method, is `ppo_np.METHODS`.
"""
import dataclasses
import time
from typing import Callable, Optional

import numpy as np

from minigpt_np.optim import AdamW

from . import checks, core, update
from .batch import Batch, layout, response_logprobs, response_logprobs_and_values


@dataclasses.dataclass
class TrainerConfig:
    """The settings every method's trainer has, declared once; a method's config adds its own fields (and may give
    these other defaults: PPO's mini_batch_size 1, DPO's batch_size 64). Checked by checks.method_config."""
    lr: float = 1.41e-5                 # Adam learning rate (TRL 0.1's, so that methods differ by their equations)
    batch_size: int = 256               # rows per step (DPO: pairs)
    forward_batch_size: int = 16        # units per no-grad forward pass: bounds memory
    mini_batch_size: int = 16           # units per forward pass with a graph
    max_grad_norm: Optional[float] = None   # global gradient-norm clip; None = off, as in TRL 0.1
    weight_decay: float = 0.0           # AdamW decoupled decay; 0 = Adam, as in TRL 0.1
    seed: int = 0                       # seeds the mini-batch shuffling


@dataclasses.dataclass(frozen=True)
class Option:
    """One of a method's own options, as plain data: the application makes a command-line option of it, and a
    trainer config of the values given (`field` of the method's config). Its name in a record is the flag's words
    ("--rloo-kl-coef": rloo_kl_coef)."""
    flag: str                           # on the command line, "--<method>-..." (PPO's, the default's, need not say)
    field: str                          # the field of the method's config it sets
    default: object                     # the application's default, chosen on validation prompts (docs/methods.md)
    help: str
    at_least: Optional[float] = None    # numbers: the smallest value allowed
    above: Optional[float] = None       # numbers: the value must be greater than this
    choices: Optional[tuple] = None
    kind: Optional[type] = None         # the type of a value whose default (None) does not show it
    why: str = ""                       # what a refusal of the bounds adds


# The options of the application's loop that every method may take (its flags): the loop's length, the batch and how
# it is cut, the learning rate, the passes over a batch, the responses' length and end, the held-out prompts. A
# method that does not read one says so in its `uses`, and the application refuses it with that method.
SHARED = ("--ppo-steps", "--batch-size", "--forward-batch-size", "--mini-batch-size", "--ppo-epochs", "--lr",
          "--response-tokens", "--stop-at-eos", "--eval-prompts")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Method:
    """Everything about a method, declared in its module beside its equations, as keyword arguments: the parts the
    skeleton asks of it, how the application's loop drives it, its own options, and how a report shows it."""
    name: str                 # "ppo": the prefix of its stats ("ppo/loss/policy") and timings ("time/ppo/total")
    label: str                # how logs, tables and reports name it: "PPO"
    trainer: type             # its Trainer subclass: METHODS[name].trainer(model, ref_model, config)
    config: type              # its config dataclass (a TrainerConfig); a trainer given config=None uses config()

    # ---- the skeleton's parts (module docstring)
    prepare: Callable         # (trainer, rollout) -> (tuple of per-unit arrays, {stat: value} about the rollout)
    loss: Callable            # (config, batch, logprobs, values, *the units' arrays) -> (loss, terms)
    loss_backward: Callable   # terms -> dL/dlogprobs (b, R); with values {"logprobs": (b, R), "values": (b, R)}
    stats: Callable           # terms -> {stat: float} of one mini-batch
    epochs: Optional[str] = None    # the config field that counts the passes over the batch per step; None: one pass
    forward: tuple = ("logprobs", "ref_logprobs")   # what the no-graph passes compute; "values" needs a value head
                                                    # and gives the loss the values, the update dL/dvalues
    check: Optional[Callable] = None        # (config, queries, responses): checks beyond checks.rollout_batch
    rows_per_unit: int = 1                  # DPO's 2: a pair is a chosen row and a rejected row
    entropy: bool = True                    # policy/entropy in every mini-batch's stats (the methods that sample)
    prepare_timing: Optional[str] = "compute_rewards"   # prepare is timed as time/<name>/<this>; None: not timed
    stats_timing: Optional[str] = None                  # step 5 is timed as time/<name>/<this> (PPO: "calc_stats")
    finish: Optional[Callable] = None       # (trainer, stats) after the mini-batches (PPO: the KL controller)
    minibatches_per_update: Optional[Callable] = None   # (config) -> n: the gradients of n consecutive mini-batches
                                                        # add up before one AdamW step; None: 1, a step each;
                                                        # whole_batch: one step per pass over the batch. A method
                                                        # with n > 1 normalises each mini-batch's loss as its share
                                                        # of the n mini-batches' loss

    # ---- how the application's loop drives it (docs/methods.md, section 7)
    group: Optional[str] = None     # the config field: responses per prompt, consecutive in a step; None: one each
    pairs: bool = False             # no sampling in the loop: preference pairs of reference samples made up front,
                                    # and steps over them (DPO; its trainer's step takes (queries, chosen, rejected))
    clip: Optional[str] = None      # the config field set to the run's clip range (PPO's cliprange), if it clips
    configure: Optional[Callable] = None    # (config fields, response_tokens) -> fields: what else it derives from
                                            # the loop (GRPO's max_completion_length for "dr_grpo")
    uses: tuple = SHARED            # the shared options its trainer or its loop reads; the others are refused
    options: tuple = ()             # its own options, as Option rows

    # ---- how a report shows it
    curves: tuple = ()              # its panels of curves.png: ((stat keys...), title), after the loop's own panels
                                    # (the rollouts' scores, KL, collapse and length) for a method that samples
    credit: Optional[Callable] = None   # tokens.html's credit view: (config, scores (N,), logprobs, ref_logprobs,
                                        # values or None, mask (N, R)) -> what it pushes each token by (N, R)
    credit_text: str = ""           # what the view says of it; format fields: the config's, and group_others
    credit_from_log: tuple = ()     # ((config field, stat), ...): fields the view takes from the log's last step
                                    # (PPO's kl_coef, which its controller moves)

    @property
    def values(self):
        """A value head: the no-graph passes compute values, and the loss takes them (PPO)."""
        return "values" in self.forward


@dataclasses.dataclass
class Rollout:
    """What `prepare` reads: the laid-out batch, its scores and what the no-graph passes gave, (B, R) float64 arrays,
    0 on padding; None for what the method does not ask for (DPO has no scores, no logprobs, no values)."""
    batch: Batch
    scores: Optional[np.ndarray]          # (B,), checked finite
    logprobs: Optional[np.ndarray]        # log pi_old(y_t): the policy's before this step's updates
    ref_logprobs: Optional[np.ndarray]    # log pi_ref(y_t)
    values: Optional[np.ndarray]          # V_old(t): the value head's

    @property
    def mask(self):
        return self.batch.mask


class Trainer:
    """Construction and one step, the same for every method; `method` holds the method's parts (module docstring).

    A method's trainer is a subclass that passes its Method, plus what only it has: PPOTrainer its KL controller,
    DPOTrainer a step that takes preference pairs.
    """

    def __init__(self, method, model, ref_model, config=None, pad_token_id=0):
        self.method = method
        self.config = config = config if config is not None else method.config()
        who = type(self).__name__
        if method.values and not model.cfg.value_head:
            raise ValueError(f"{who}: the policy needs a value head; call model.add_value_head() first")
        if ref_model.cfg.vocab_size != model.cfg.vocab_size:
            raise ValueError(f"{who}: policy vocabulary ({model.cfg.vocab_size}) and reference vocabulary "
                             f"({ref_model.cfg.vocab_size}) differ; the method compares their log-probabilities "
                             "token by token")
        self.model, self.ref_model = model, ref_model
        # No dropout in rollouts, scoring or updates: TRL 0.1's models came from from_pretrained, in eval mode,
        # and dropout noise in logprobs would make the ratio differ from 1 before any update.
        model.training = ref_model.training = False
        self.pad_token_id = pad_token_id
        self.optimizer = AdamW(model.named_parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.rng = np.random.default_rng(config.seed)

    def step(self, queries, responses, scores):
        """One step. queries, responses: lists of B = batch_size 1-D int arrays (any lengths); scores (B,) -> stats."""
        queries, responses, scores = self.checked(checks.rollout_batch, queries, responses, scores)
        if self.method.check is not None:
            self.method.check(self.config, queries, responses)
        return self.run(layout(queries, responses, self.pad_token_id), scores)

    def checked(self, check, *rows):
        """The opening of every step: the rows, checked by check(*rows, batch_size, block_size, vocab_size)
        (ppo_np.checks: rollout_batch, preference_batch) -> them as check returns them."""
        return check(*rows, self.config.batch_size, self.model.cfg.block_size, self.model.cfg.vocab_size)

    def run(self, batch, scores=None):
        """Steps 2 to 5 of the module docstring, on a checked batch already laid out -> stats, then timings."""
        method = self.method
        timing, t0 = {}, time.perf_counter()

        t = time.perf_counter()
        logprobs, ref_logprobs, values = self.batched_forward_pass(batch)
        timing["forward_pass"] = time.perf_counter() - t

        t = time.perf_counter()
        arrays, stats = method.prepare(self, Rollout(batch, scores, logprobs, ref_logprobs, values))
        if method.prepare_timing:
            timing[method.prepare_timing] = time.perf_counter() - t

        t = time.perf_counter()
        minibatch_stats = self.train_epochs(batch, arrays)
        timing["optimize_step"] = time.perf_counter() - t

        t = time.perf_counter()
        stats.update(mean_stats(minibatch_stats, method.name))
        if method.finish is not None:
            method.finish(self, stats)
        if method.stats_timing:
            timing[method.stats_timing] = time.perf_counter() - t
        timing["total"] = time.perf_counter() - t0
        return {**stats, **{f"time/{method.name}/{key}": seconds for key, seconds in timing.items()}}

    def batched_forward_pass(self, batch):
        """(logprobs, ref_logprobs, values) (B, R) of the response tokens, no graph, forward_batch_size units at a
        time; None for what the method does not ask for."""
        forward, fbs = self.method.forward, self.config.forward_batch_size * self.method.rows_per_unit
        logprobs = ref_logprobs = values = None
        if "values" in forward:
            logprobs, values = response_logprobs_and_values(self.model, batch, fbs)
        elif "logprobs" in forward:
            logprobs = response_logprobs(self.model, batch, fbs)
        if "ref_logprobs" in forward:
            ref_logprobs = response_logprobs(self.ref_model, batch, fbs)
        return logprobs, ref_logprobs, values

    def train_epochs(self, batch, arrays):
        """epochs passes over the units, shuffled afresh for each, in mini-batches -> every mini-batch's stats.

        A mini-batch of units u takes rows u of the layout (and rows u + P, DPO's rejected responses: rows_per_unit),
        and entry u of every array prepare gave."""
        cfg, method = self.config, self.method
        units, epochs = cfg.batch_size, getattr(cfg, method.epochs) if method.epochs else 1
        per_update = method.minibatches_per_update(cfg) if method.minibatches_per_update else 1
        count = epochs * (units // cfg.mini_batch_size)
        all_stats = []
        for i, drawn in enumerate(minibatches(self.rng, units, cfg.mini_batch_size, epochs)):
            rows = np.concatenate([drawn + j * units for j in range(method.rows_per_unit)])
            all_stats.append(self.train_minibatch(batch.rows(rows), *(a[drawn] for a in arrays),
                                                  zero_grad=i % per_update == 0,
                                                  step=(i + 1) % per_update == 0 or i + 1 == count))
        return all_stats

    def train_minibatch(self, batch, *arrays, zero_grad=True, step=True):
        """One mini-batch: a Batch of its rows and its units' entries of prepare's arrays -> its stats.

        Forward with a graph, the method's loss and its backward; then (ppo_np.update) the gradients go into the
        weights' .grad, from zero if zero_grad, and AdamW takes its step if step. A non-finite loss or gradient
        raises FloatingPointError before any weight or .grad changes.
        """
        method, cfg = self.method, self.config
        if method.values:
            logits, vpred, response_logits, logprobs, values = update.policy_logprobs_and_values(self.model, batch)
        else:
            (logits, response_logits, logprobs), vpred, values = update.policy_logprobs(self.model, batch), None, None
        loss, terms = method.loss(cfg, batch, logprobs, values, *arrays)
        grads = method.loss_backward(terms)
        dlogprobs, dvalues = (grads["logprobs"], grads["values"]) if method.values else (grads, None)
        update.check_finite(method.name.upper(), loss, dlogprobs, dvalues)
        if zero_grad:
            self.model.zero_grad()
        update.backward(batch, logits, response_logits, dlogprobs, vpred, dvalues)
        if step:
            update.optimizer_step(self.model, self.optimizer, cfg.max_grad_norm)
        stats = method.stats(terms)
        if method.entropy:
            stats["policy/entropy"] = core.masked_mean(core.entropy_from_logits(response_logits), batch.mask)
        return stats


def whole_batch(config):
    """A Method's minibatches_per_update for one AdamW step per pass over the batch: all batch_size / mini_batch_size
    of a pass's mini-batches add up their gradients first (the mini-batches only bound the memory of a forward pass
    with a graph)."""
    return config.batch_size // config.mini_batch_size


def minibatches(rng, n, mini_batch_size, epochs):
    """epochs passes over n units, each a fresh shuffle cut into mini-batches of mini_batch_size unit indices."""
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, mini_batch_size):
            yield order[start:start + mini_batch_size]


def rollout_stats(logprobs, ref_logprobs, mask):
    """The objective/ stats PPO logs, from the rollout's logprobs and ref_logprobs (B, R), so methods compare:
    objective/kl = mean over responses of sum_t (logprobs - ref_logprobs) (k1, nats per response),
    objective/entropy = mean of sum_t -logprobs, objective/response_length = mean L_b."""
    return {
        "objective/kl": float(((logprobs - ref_logprobs) * mask).sum(axis=1).mean()),
        "objective/entropy": float((-logprobs * mask).sum(axis=1).mean()),
        "objective/response_length": float(mask.sum(axis=1).mean()),
    }


def mean_stats(minibatch_stats, prefix):
    """The mean of every mini-batch's stats (equal weight per mini-batch), keys prefixed: TRL 0.1's step stats."""
    return {f"{prefix}/{key}": float(np.mean([s[key] for s in minibatch_stats])) for key in minibatch_stats[0]}
