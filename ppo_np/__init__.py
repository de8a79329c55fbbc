"""ppo_np: TRL 0.1's PPO for language models in NumPy, with per-token gradients written out by hand, and the
methods beside it on the same pieces, one module each: the k1/k2/k3 KL estimators, and every method METHODS lists.

Every method's trainer is the one skeleton (ppo_np/skeleton.py) given the method's parts. METHODS, a plain dict
from a method's name to its parts (a skeleton.Method: its config, prepare, loss forward/backward, stats and trainer;
how a loop drives it; its own options; how a report shows it), is the registry; a new method is one module and one
entry here (docs/methods.md, section 7). The application (minichatgpt) learns every method from this dict.
`import ppo_np.core` needs only NumPy.
"""
from . import core
from .core import AdaptiveKLController, FixedKLController
from .dpo import DPO, DPOConfig, DPOTrainer
from .grpo import GRPO, GRPOConfig, GRPOTrainer
from .ppo import PPO, PPOConfig, PPOTrainer
from .reinforce import REINFORCE
from .rloo import RLOO, RLOOConfig, RLOOTrainer
from .skeleton import Method, Option, Trainer, TrainerConfig

METHODS = {"ppo": PPO, "rloo": RLOO, "grpo": GRPO, "dpo": DPO, "reinforce": REINFORCE}

__all__ = ["AdaptiveKLController", "DPOConfig", "DPOTrainer", "FixedKLController", "GRPOConfig", "GRPOTrainer",
           "METHODS", "Method", "Option", "PPOConfig", "PPOTrainer", "RLOOConfig", "RLOOTrainer", "Trainer",
           "TrainerConfig", "core"]
