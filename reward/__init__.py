"""reward: the sentiment reward model. Text features (reward.features), NumPy logistic regression
(reward.logreg) and the scorer that PPO calls (reward.scorer), fitted by reward.train."""
from reward.scorer import Scorer, load_scorer
from reward.train import train_scorer

__all__ = ["Scorer", "load_scorer", "train_scorer"]
