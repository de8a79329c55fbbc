"""minigpt_np: a GPT-2 style transformer on a hand-written reverse-mode autograd over NumPy arrays."""
from . import functional, ops
from .generate import KVCache, generate
from .model import GPT, GPTConfig
from .tensor import Tensor, no_grad

__all__ = ["GPT", "GPTConfig", "KVCache", "Tensor", "functional", "generate", "no_grad", "ops"]
