"""How the loop drives each method: the one place the main job (`minichatgpt --method`) and minichatgpt-compare
both take it from.

    ppo, reinforce  one sampled response per prompt: batch_size prompts a step
    rloo            k consecutive responses per prompt (rloo_k): batch_size / k prompts a step
    grpo            G consecutive responses per prompt (grpo_group_size): batch_size / G prompts a step
    dpo             no sampling in the loop: two reference samples for each of steps * batch_size / 2 prompts, made
                    up front and scored by the proxy, which chooses each pair's winner; then batch_size / 2 of those
                    fixed pairs a step, one pass over them

So every method has the proxy score batch_size generated responses per step (DPO before its first step). What a
method computes from them is its own (ppo_np.METHODS); how many optimizer steps it takes is too: PPO and RLOO one per
mini-batch, GRPO and REINFORCE one per pass over the batch, DPO one per mini-batch of pairs.

`DRIVING` maps a method's name to how the loop drives it and which of the options the methods share it uses
(`SHARED`): the main job refuses the others with that method rather than record an option that changes nothing
(REINFORCE takes one step per batch, so --ppo-epochs does nothing there). `trainer_config` makes its trainer's config
from those shared settings and the method's own options (a MethodOptions, or a CompareConfig, whose fields have the
same names); `train` runs (or resumes) it.
"""
import dataclasses
import time
from typing import Callable, Optional

import numpy as np

import ppo_np
from ppo_np.dpo import DPOConfig, make_pairs
from ppo_np.grpo import GRPOConfig
from ppo_np.reinforce import REINFORCEConfig
from ppo_np.rloo import RLOOConfig

from .rlhf import PromptStream, fingerprint, rollout_step, train_loop, train_ppo
from .sampling import sample_n, score, texts_of

PAIRS_SEED_OFFSET = 2   # DPO's reference samples: rlhf.seed + 2 (the loop draws from seed and seed + 1)


# The main job's options every method may take (config.OPTIONS of stage "rl"): the loop's length, the batch and how it
# is cut, the learning rate, the passes over a batch, the responses' length and end, the held-out prompts.
SHARED = ("--ppo-steps", "--batch-size", "--forward-batch-size", "--mini-batch-size", "--ppo-epochs", "--lr",
          "--response-tokens", "--stop-at-eos", "--eval-prompts")


@dataclasses.dataclass(frozen=True)
class Driving:
    label: str                          # how logs, tables and reports name the method
    group: Optional[Callable]           # options -> responses per prompt in a step; None: DPO's fixed pairs
    value_head: bool = False            # the policy starts with the run's value head (PPO)
    uses: tuple = SHARED                # the shared options its trainer or its loop reads


DRIVING = {
    "ppo": Driving("PPO", lambda o: 1, value_head=True),
    "rloo": Driving("RLOO", lambda o: o.rloo_k),
    "grpo": Driving("GRPO", lambda o: o.grpo_group_size),
    "dpo": Driving("DPO", None),
    "reinforce": Driving("REINFORCE", lambda o: 1, uses=tuple(f for f in SHARED if f != "--ppo-epochs")),
}
assert set(DRIVING) == set(ppo_np.METHODS), "every method of ppo_np.METHODS needs its driving here"


def trainer_config(name, ppo, options, *, lr, batch_size, epochs, response_tokens):
    """The config of method `name`'s trainer: lr, batch_size responses a step and `epochs` passes over them (for the
    methods that make several), PPO's forward and mini-batch sizes, clip range and seed (ppo: a PPOConfig), and the
    method's own coefficients from `options` -> its config dataclass. DPO takes batch_size / 2 pairs a step, and
    half of PPO's chunk and mini-batch, since a pair is two rows."""
    shared = dict(lr=lr, batch_size=batch_size, forward_batch_size=ppo.forward_batch_size,
                  mini_batch_size=ppo.mini_batch_size, seed=ppo.seed)
    o = options
    if name == "ppo":
        return dataclasses.replace(ppo, ppo_epochs=epochs, **shared)
    if name == "rloo":
        return RLOOConfig(ppo_epochs=epochs, rloo_k=o.rloo_k, kl_coef=o.rloo_kl_coef, cliprange=ppo.cliprange, **shared)
    if name == "grpo":
        return GRPOConfig(num_iterations=epochs, group_size=o.grpo_group_size, beta=o.grpo_beta, epsilon=ppo.cliprange,
                          epsilon_high=o.grpo_epsilon_high, loss_type=o.grpo_loss_type,
                          importance_sampling_level=o.grpo_importance_sampling,
                          use_bias_correction_kl=o.grpo_bias_correction_kl,
                          max_completion_length=response_tokens if o.grpo_loss_type == "dr_grpo" else None, **shared)
    if name == "dpo":
        return DPOConfig(lr=lr, beta=o.dpo_beta, batch_size=batch_size // 2,
                         forward_batch_size=max(1, ppo.forward_batch_size // 2),
                         mini_batch_size=max(1, ppo.mini_batch_size // 2), epochs=epochs, seed=ppo.seed)
    if name == "reinforce":   # on-policy: one AdamW step per batch, no epochs
        return REINFORCEConfig(kl_coef=o.reinforce_kl_coef, **shared)
    raise ValueError(f"unknown method {name!r}; the methods are {', '.join(DRIVING)}")


def run_trainer_config(config):
    """The trainer config of the main job's method, from a RunConfig (its --lr, --batch-size, --ppo-epochs)."""
    return trainer_config(config.method, config.ppo, config.methods, lr=config.ppo.lr,
                          batch_size=config.ppo.batch_size, epochs=config.ppo.ppo_epochs,
                          response_tokens=config.sampling.response_tokens)


def sample_pairs(task, n_pairs, seed, progress=False):
    """DPO's data: two reference samples for each of the first n_pairs training prompts of the loop's prompt stream
    (seeded with `seed`), scored by the proxy (task.scorer), the higher score chosen (ppo_np.dpo.make_pairs)
    -> (prompts, responses (2 per prompt, consecutive), texts, proxy scores (n_pairs, 2), chosen (n_pairs,))."""
    prompts = PromptStream(task.queries, np.random.default_rng(seed)).next_batch(n_pairs)
    rng = np.random.default_rng(seed + PAIRS_SEED_OFFSET)
    queries, responses = sample_n(task.ref_model, task.tokenizer, prompts, 2, task.sampling, rng, progress)
    texts = texts_of(task.tokenizer, queries, responses)
    proxy = score(task.scorer, texts, task.sampling).reshape(-1, 2)
    return prompts, responses, texts, proxy, make_pairs(proxy, rng)


def pair_items(prompts, responses, chosen):
    """The fixed items DPO's loop steps over: (query, chosen response, rejected response) int arrays, one per pair."""
    return [tuple(np.asarray(a, dtype=np.int64) for a in (prompts[p], responses[2 * p + c], responses[2 * p + 1 - c]))
            for p, c in enumerate(int(c) for c in chosen)]


def dpo_step(trainer, pairs):
    """One DPO step on the next batch_size fixed pairs of the stream -> stats (with time/step, as rollout_step's)."""
    t0 = time.perf_counter()
    queries, chosen, rejected = (list(column) for column in zip(*pairs.next_batch(trainer.config.batch_size)))
    stats = trainer.step(queries, chosen, rejected)
    stats["time/step"] = time.perf_counter() - t0
    return stats


def train(name, policy, task, trainer_config, options, loop, checkpoint, log, *, pairs=None, progress=True,
          evaluate=None, evaluate_every=0, measure=None):
    """Run (or resume) method `name` from `policy` on `task` -> the per-step stats (also in `log`).

    trainer_config: from `trainer_config`; options: the method's own options (for its group size); loop: the
    RLHFConfig; pairs: DPO's fixed (query, chosen, rejected) items (`pair_items`). measure(step) -> step wraps each
    step (compare's `measured`). The rest as in rlhf.train_ppo, whose loop every method shares."""
    if name == "ppo":
        return train_ppo(policy, task, trainer_config, loop, checkpoint, log, progress=progress, evaluate=evaluate,
                         evaluate_every=evaluate_every, measure=measure)
    trainer = ppo_np.METHODS[name].trainer(policy, task.ref_model, trainer_config,
                                           pad_token_id=task.tokenizer.eos_token_id)
    if name == "dpo":
        items = pairs

        def step(stream, rng):
            return dpo_step(trainer, stream)
        fp = fingerprint(trainer_config, loop, task, key=name, items=[np.concatenate(item) for item in items])
    else:
        items, group_size = task.queries, DRIVING[name].group(options)

        def step(stream, rng):
            return rollout_step(trainer, task, stream, rng, group_size=group_size)
        fp = fingerprint(trainer_config, loop, task, key=name)
    return train_loop(trainer, measure(step) if measure else step, items, loop, checkpoint, log, fp,
                      name=DRIVING[name].label, progress=progress, evaluate=evaluate, evaluate_every=evaluate_every)


def train_run(config, policy, task, checkpoint, log, progress=True):
    """Run (or resume) a RunConfig's method (config.method, its options and the loop's settings) from `policy` on
    `task` -> the per-step stats. DPO first samples its pairs from the reference (`sample_pairs`): the same ones
    again on a resume, from the same seed."""
    pairs = None
    if DRIVING[config.method].group is None:
        prompts, responses, _, _, chosen = sample_pairs(task, config.rlhf.steps * config.ppo.batch_size // 2,
                                                        config.rlhf.seed, progress)
        pairs = pair_items(prompts, responses, chosen)
    return train(config.method, policy, task, run_trainer_config(config), config.methods, config.rlhf, checkpoint,
                 log, pairs=pairs, progress=progress)
