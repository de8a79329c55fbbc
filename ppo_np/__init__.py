"""ppo_np: TRL 0.1's PPO for language models in NumPy, with per-token gradients written out by hand, and the
methods beside it on the same pieces: RLOO, GRPO, DPO and the k1/k2/k3 KL estimators (one module each).

`import ppo_np.core` needs only NumPy.
"""
from . import core
from .core import AdaptiveKLController, FixedKLController
from .dpo import DPOConfig, DPOTrainer
from .grpo import GRPOConfig, GRPOTrainer
from .rloo import RLOOConfig, RLOOTrainer
from .trainer import PPOConfig, PPOTrainer

__all__ = ["AdaptiveKLController", "DPOConfig", "DPOTrainer", "FixedKLController", "GRPOConfig", "GRPOTrainer",
           "PPOConfig", "PPOTrainer", "RLOOConfig", "RLOOTrainer", "core"]
