"""ppo_np: TRL 0.1's PPO for language models in NumPy, with per-token gradients written out by hand."""
from . import core
from .core import AdaptiveKLController, FixedKLController
from .trainer import PPOConfig, PPOTrainer

__all__ = ["AdaptiveKLController", "FixedKLController", "PPOConfig", "PPOTrainer", "core"]
