"""reward: the sentiment reward model. Corpus loaders (reward.corpus), text features (reward.features), NumPy
logistic regression (reward.logreg) and the scorer that PPO calls (reward.scorer), trained by reward.train."""
from reward import corpus
from reward.scorer import Scorer, load_scorer
from reward.train import train_reward_model, train_scorer

__all__ = ["corpus", "Scorer", "load_scorer", "train_scorer", "train_reward_model"]
