"""The trainer skeleton and its registry: every entry builds its method's trainer under its own name, and mini-batches
whose gradients are added up before one AdamW step apply exactly the sum of their gradients."""
import dataclasses

import numpy as np

from policy_gradcheck import group_batch, make_models
from ppo_np import METHODS, Trainer
from ppo_np.reinforce import REINFORCE, REINFORCEConfig
from ppo_np.skeleton import whole_batch


def test_every_registry_entry_is_its_methods_parts_and_builds_its_trainer():
    for name, method in METHODS.items():
        assert method.name == name, f"METHODS[{name!r}] is named {method.name!r}: its stats would carry that prefix"
        policy, ref = make_models()
        if method.values:
            policy.add_value_head(seed=1)
        trainer = method.trainer(policy, ref)
        assert isinstance(trainer, Trainer) and trainer.method is method, name
        assert isinstance(trainer.config, method.config), name
        assert method.epochs is None or hasattr(trainer.config, method.epochs), \
            f"{name}: its config has no field {method.epochs!r}"


def record_optimizer_steps(trainer):
    """Replace AdamW's step by a copy of the gradients it would apply (the weights then never move) -> the list."""
    steps = []
    trainer.optimizer.step = lambda *a, **k: steps.append(
        {n: p.grad.copy() for n, p in trainer.model.named_parameters()})
    return steps


def test_accumulated_mini_batches_apply_the_sum_of_their_gradients_in_one_step():
    """REINFORCE's loss divides by batch_size whatever the stepping, so its record with a step per mini-batch and
    with whole_batch see the same mini-batch gradients."""
    cfg = REINFORCEConfig(lr=1e-2, batch_size=8, forward_batch_size=8, mini_batch_size=4, kl_coef=0.1)
    queries, responses, scores = group_batch(2, 4)
    one_each, together = [], []
    for per_update, steps in ((None, one_each), (whole_batch, together)):
        policy, ref = make_models()
        trainer = Trainer(dataclasses.replace(REINFORCE, minibatches_per_update=per_update), policy, ref, cfg)
        recorded = record_optimizer_steps(trainer)
        trainer.step(queries, responses, scores)
        steps.extend(recorded)
    assert len(one_each) == 2 and len(together) == 1, (len(one_each), len(together))
    # same shuffle, and the recorder never moves the weights: both mini-batches see the same policy either way
    worst = max(np.abs(together[0][n] - (one_each[0][n] + one_each[1][n])).max() / np.abs(together[0][n]).max()
                for n in together[0] if np.abs(together[0][n]).max() > 0)
    assert worst < 1e-12, f"accumulated gradient differs from the sum by {worst:.2g} (relative)"
    # negative control: the sum is not what either mini-batch gives alone
    for alone in one_each:
        assert max(np.abs(together[0][n] - alone[n]).max() for n in alone) > 1e-3
