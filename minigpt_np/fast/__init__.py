"""The fast kernels: the reference engine's functions tuned for a CPU, apart from the equations they compute.

    import minigpt_np as mg
    mg.kernels.use("fast")        # what the command line and the benchmark do

- `ops`: every forward/backward pair of `minigpt_np.ops`, same arguments and returns, in cache-sized row blocks
  (`blocks`), with in-place passes, einsum row sums and key-major attention scores;
- `functional`: attention and the fused lm_head + cross-entropy, writing into arrays they own;
- `optim`: AdamW's update as in-place passes over one scratch array;
- `pretrain`: a pretraining step's two micro-batches at once on two cores (`cores`, BLAS threads through
  threadpoolctl);
- `memory`: glibc's malloc told to keep the memory a step frees (the program's choice, not the switch's).

Tests prove them equal to the reference (tests/engine/test_kernels.py): per tensor, to 1e-12 at float64 and within a
stated tolerance at float32. docs/gpt.md, "The fast kernels", has what each gains.
"""
from . import functional, ops, optim, pretrain

__all__ = ["functional", "ops", "optim", "pretrain"]
