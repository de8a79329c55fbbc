"""How the loop drives each method: the one place the main job (`minichatgpt --method`) and minichatgpt-compare
both take it from. Every method is an entry of ppo_np.METHODS, whose Method says how (its group, its pairs):

    one response per prompt       batch_size prompts a step (PPO, REINFORCE)
    group = "k"                   k consecutive responses per prompt: batch_size / k prompts a step (RLOO's rloo_k,
                                  GRPO's group_size)
    pairs                         no sampling in the loop: two reference samples for each of steps * batch_size / 2
                                  prompts, made up front and scored by the proxy, which chooses each pair's winner;
                                  then batch_size / 2 of those fixed pairs a step, one pass over them (DPO)

So every method has the proxy score batch_size generated responses per step (DPO before its first step). What a
method computes from them is its own (ppo_np.METHODS); how many optimizer steps it takes is too: PPO and RLOO one per
mini-batch, GRPO and REINFORCE one per pass over the batch, DPO one per mini-batch of pairs.

`trainer_config` makes a method's trainer config from the settings every method shares and the method's own options
(RunConfig.methods, or CompareConfig.methods); `rlhf.train` runs (or resumes) it. This module imports nothing of the
application: the config and the loop both read it.
"""
import dataclasses

import ppo_np

DEFAULT = "ppo"      # the method a run trains unless --method says otherwise; its config is the run's PPO settings


def option_name(row):
    """How the application names a method's own option (a ppo_np Option row): its flag's words, "rloo_kl_coef"."""
    return row.flag[2:].replace("-", "_")


def trainer_config(name, ppo, options, *, lr, batch_size, epochs, response_tokens):
    """The config of method `name`'s trainer -> its config dataclass: lr, batch_size responses a step (pairs: half as
    many, and half of PPO's chunk and mini-batch, since a pair is two rows) and `epochs` passes over them (for the
    methods that make several), PPO's forward and mini-batch sizes, clip range and seed (ppo: a PPOConfig, which is
    also the default method's own config), the method's own options from `options` ({name: value}), and what it
    derives from the responses' length."""
    method = ppo_np.METHODS[name]
    units = method.rows_per_unit
    fields = dict(lr=lr, batch_size=batch_size // units, forward_batch_size=max(1, ppo.forward_batch_size // units),
                  mini_batch_size=max(1, ppo.mini_batch_size // units), seed=ppo.seed)
    if method.epochs:
        fields[method.epochs] = epochs
    if method.clip:
        fields[method.clip] = ppo.cliprange
    if name == DEFAULT:
        return dataclasses.replace(ppo, **fields)
    fields.update({row.field: options[option_name(row)] for row in method.options})
    return method.config(**(method.configure(fields, response_tokens) if method.configure else fields))


def run_trainer_config(config):
    """The trainer config of the main job's method, from a RunConfig (its --lr, --batch-size, --ppo-epochs)."""
    return trainer_config(config.method, config.ppo, config.methods, lr=config.ppo.lr,
                          batch_size=config.ppo.batch_size, epochs=config.ppo.ppo_epochs,
                          response_tokens=config.sampling.response_tokens)


def group_size(name, trainer_config):
    """Responses per prompt in a step of method `name` (1 unless its Method names a group)."""
    method = ppo_np.METHODS[name]
    return getattr(trainer_config, method.group) if method.group else 1
