"""minigpt_np: a GPT-2 style transformer on a hand-written reverse-mode autograd over NumPy arrays.

The engine runs its reference kernels, the equations in plain NumPy, unless `kernels.use("fast")` switches it to
`minigpt_np.fast`, the same functions tuned for a CPU. Everything here needs only NumPy, except the tokenizer, which
imports Hugging Face `tokenizers` when it is first used, and the fast kernels, which import threadpoolctl.
"""
from . import functional, kernels, ops, sft
from .generate import KVCache, generate
from .model import GPT, GPTConfig, load_checkpoint
from .optim import AdamW, clip_grad_norm, lr_schedule
from .tensor import Tensor, no_grad
from .tokenizer import EOS, load_tokenizer, train_tokenizer

__all__ = ["EOS", "GPT", "AdamW", "GPTConfig", "KVCache", "Tensor", "clip_grad_norm", "functional", "generate",
           "kernels", "load_checkpoint", "load_tokenizer", "lr_schedule", "no_grad", "ops", "sft", "train_tokenizer"]
