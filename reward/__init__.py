"""reward: the sentiment reward models and judges. Text features (reward.features), NumPy logistic regression
(reward.logreg) and the scorer that PPO calls (reward.scorer), fitted by reward.train; the GPT reward model
(reward.gpt_reward, trained by reward.gpt_reward_train on reward.losses); the VADER lexicon judge (reward.lexicon)."""
from reward.gpt_reward import GPTRewardModel, load_gpt_reward
from reward.gpt_reward_train import GPTRewardConfig, train_gpt_reward
from reward.lexicon import VaderJudge, load_vader
from reward.scorer import Scorer, load_scorer
from reward.train import train_scorer

__all__ = ["GPTRewardConfig", "GPTRewardModel", "Scorer", "VaderJudge", "load_gpt_reward", "load_scorer",
           "load_vader", "train_gpt_reward", "train_scorer"]
