"""Which kernels the engine runs: "reference", the equations as plain NumPy (the default), or "fast", the same
functions tuned for a CPU (`minigpt_np.fast`), equal up to rounding (tests/engine/test_kernels.py).

    import minigpt_np as mg
    mg.kernels.use("fast")                      # for the rest of the process
    with mg.kernels.using("reference"): ...     # for a block, then back to what was in use

The reference modules reach their kernels through five names, and the switch rebinds those five: `functional.ops`
(every forward/backward pair), `functional.causal_self_attention` and `functional.lm_head_cross_entropy` (the fast
ones write into arrays they own), `optim.adamw_update` and `pretrain.loss_and_gradients` (two micro-batches on two
cores). Everything built on them follows: the GPT, generation, pretraining, the PPO trainers, the GPT reward model.
Code that needs a kernel reaches it through its module (`functional.gelu`, not a name imported before the switch).

`import minigpt_np` and the reference need only NumPy; the fast kernels are imported on their first use, and
threadpoolctl with them.
"""
import contextlib

from . import functional, ops, optim, pretrain

CHOICES = ("reference", "fast")
# (module, name) -> the reference's own value, taken before any switch
REFERENCE = {(module, name): getattr(module, name) for module, name in (
    (functional, "ops"), (functional, "causal_self_attention"), (functional, "lm_head_cross_entropy"),
    (optim, "adamw_update"), (pretrain, "loss_and_gradients"))}
_in_use = {"name": "reference"}


def fast_kernels():
    """(module, name) -> the fast kernel that replaces the reference's value there."""
    from . import fast
    return {(functional, "ops"): fast.ops,
            (functional, "causal_self_attention"): fast.functional.causal_self_attention,
            (functional, "lm_head_cross_entropy"): fast.functional.lm_head_cross_entropy,
            (optim, "adamw_update"): fast.optim.adamw_update,
            (pretrain, "loss_and_gradients"): fast.pretrain.loss_and_gradients}


def use(name):
    """Run the engine on the kernels `name` ("reference" or "fast") from now on; ValueError for another name."""
    if name not in CHOICES:
        raise ValueError(f"unknown kernels {name!r}; choose {' or '.join(CHOICES)}")
    chosen = REFERENCE if name == "reference" else fast_kernels()
    for (module, attribute), kernel in chosen.items():
        setattr(module, attribute, kernel)
    _in_use["name"] = name


def in_use():
    """The name of the kernels the engine runs now."""
    return _in_use["name"]


@contextlib.contextmanager
def using(name):
    """use(name) inside the block, then the kernels in use before it."""
    previous = in_use()
    use(name)
    try:
        yield
    finally:
        use(previous)
