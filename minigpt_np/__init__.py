"""minigpt_np: a GPT-2 style transformer on a hand-written reverse-mode autograd over NumPy arrays.

Everything here needs only NumPy, except the tokenizer, which imports Hugging Face `tokenizers` when it is
first used.
"""
from . import functional, ops
from .generate import KVCache, generate
from .model import GPT, GPTConfig, load_checkpoint
from .optim import AdamW, clip_grad_norm, lr_schedule
from .tensor import Tensor, no_grad
from .tokenizer import EOS, load_tokenizer, train_tokenizer

__all__ = ["EOS", "GPT", "AdamW", "GPTConfig", "KVCache", "Tensor", "clip_grad_norm", "functional", "generate",
           "load_checkpoint", "load_tokenizer", "lr_schedule", "no_grad", "ops", "train_tokenizer"]
