"""minigpt_np: a GPT-2 style transformer on a hand-written reverse-mode autograd over NumPy arrays."""
from . import functional, ops
from .checkpoint import load_checkpoint, save_checkpoint
from .generate import KVCache, generate
from .model import GPT, GPTConfig
from .optim import AdamW, clip_grad_norm, lr_schedule
from .tensor import Tensor, no_grad
from .tokenizer import EOS, load_tokenizer, train_tokenizer

__all__ = ["EOS", "GPT", "AdamW", "GPTConfig", "KVCache", "Tensor", "clip_grad_norm", "functional", "generate",
           "load_checkpoint", "load_tokenizer", "lr_schedule", "no_grad", "ops", "save_checkpoint",
           "train_tokenizer"]
