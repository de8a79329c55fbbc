"""A GPT reward model: the pretrained GPT's trunk and a scalar head read at the last real token, laid out as
Hugging Face's `GPT2ForSequenceClassification` with num_labels = 1, so that a converted model loads unchanged.

    h      = trunk(idx)                                   (B, T, C)  ln_f output, `GPT.hidden_states`
    last_b = max {t : idx[b, t] != pad_token_id}          (B,)       0 when a row is all padding
    r_b    = h[b, last_b] . w                             (B,)       w = score.weight[0]; score.weight (1, C), no bias

Checked against transformers 5.23.0, transformers/models/gpt2/modeling_gpt2.py:
- line 861: `self.score = nn.Linear(config.n_embd, self.num_labels, bias=False)`, so score.weight has shape
  (num_labels, n_embd) = (1, C) and there is no bias; the trunk is `self.transformer` (line 860), hence the
  `transformer.*` names our GPT already uses. score.weight starts as N(0, initializer_range = 0.02)
  (modeling_utils.py:2311-2313; configuration_gpt2.py:89).
- lines 905 and 912-928: the head is applied at every position and read at
  `last_non_pad_token = (arange(T) * (input_ids != pad_token_id)).argmax(-1)`, the rightmost token that is not
  the pad token, for left and right padding alike. Padding is found from the token ids, not from the
  attention mask. A row of only pad tokens has argmax 0 and is read at position 0. With pad_token_id None a
  batch of one is read at position -1 and a larger batch is refused (lines 912-915). We read the one position
  before applying the head: the same number up to rounding.
- lines 569-572: without position_ids the trunk uses positions 0..T-1 whatever the attention mask.

The pad token is `<|endoftext|>`, the only special token of our tokenizer. TRL's `RewardTrainer` does the same
when a tokenizer has no pad token (trl 1.16.0, reward_trainer.py:563 and 571-572). It also appends eos to each
text (lines 684-693), and with pad = eos that token is then skipped like padding, so the reward is read at the
text's last real token, as here. A response that stops at eos is read at its last word.

We pad on the right, as TRL's collator does (reward_trainer.py:214-225). The causal mask then keeps the pads
out of every real token, and positions 0..T-1 are the same as our masked positions clip(cumsum(mask) - 1, 0)
on real tokens. So this model gives Hugging Face's number for a batch passed without position_ids. A
left-padded batch must come with its attention_mask. Our trunk then uses the masked positions, as Hugging
Face generation does; Hugging Face's forward agrees only when those position_ids are passed to it.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

import minigpt_np as mg
from minigpt_np.checkpoint import load_npz, save_npz
from minigpt_np.model import GPTConfig
from minigpt_np.tensor import Tensor, make, no_grad
from minigpt_np.tokenizer import Tokenizer

from reward.logreg import log_loss

FORMAT = "reward GPT"   # the "format" entry of a GPT reward model file's metadata
SCORE = "score.weight"  # Hugging Face's name of the head


def last_non_pad_token(idx, pad_token_id):
    """last_b = argmax_t (t * 1[idx[b, t] != pad_token_id]), Hugging Face's pooling index.   idx (B, T) -> (B,).

    Right or left padding alike; an all-padding row gives 0. pad_token_id None: -1 (read the last
    position), allowed only for a batch of one, as in Hugging Face.
    """
    idx = np.asarray(idx)
    if pad_token_id is None:
        if idx.shape[0] != 1:
            raise ValueError("a batch of more than one text needs a pad_token_id to find each text's last token")
        return np.array([idx.shape[1] - 1])
    t = np.arange(idx.shape[1])
    return np.argmax(t * (idx != pad_token_id), axis=-1)


# ------------------------------------------------------------------------------------ the head, forward/backward
def score_head_forward(h, w, last):
    """r_b = h[b, last_b] . w[0].   h (B, T, C), w (1, C), last int (B,) -> r (B,)."""
    return h[np.arange(h.shape[0]), last] @ w[0]


def score_head_backward(dr, h, w, last):
    """dh[b, last_b] = dr_b w[0] (zero elsewhere);  dw[0] = sum_b dr_b h[b, last_b].   dr (B,) -> (dh, dw)."""
    rows = np.arange(h.shape[0])
    dh = np.zeros_like(h)
    dh[rows, last] = dr[:, None] * w[0]
    return dh, (dr @ h[rows, last])[None, :]


def score_head(h, w, last):
    """The head as a graph op: Tensor h (B, T, C), Tensor w (1, C), last (B,) -> Tensor r (B,)."""
    return make(score_head_forward(h.data, w.data, last), (h, w),
                lambda dr: score_head_backward(dr, h.data, w.data, last))


class GPTRewardModel:
    """A trunk (`minigpt_np.GPT`, its lm_head unused), score.weight (1, C) and the pad token id.

    The tokenizer is needed only by score(texts) and save(); the id-level rewards(idx) works without it.
    """

    def __init__(self, gpt, score_weight, pad_token_id, tokenizer: Optional[Tokenizer] = None,
                 info: Optional[dict] = None):
        if gpt.cfg.value_head:
            raise ValueError("the reward model's trunk must not have a value head; use the pretrained GPT")
        C = gpt.cfg.n_embd
        w = np.asarray(score_weight, dtype=gpt.dtype)
        if w.shape != (1, C):
            raise ValueError(f"{SCORE} must have shape (1, n_embd) = (1, {C}), got {w.shape}")
        self.gpt = gpt
        self.score_weight = Tensor(w, requires_grad=True)
        self.pad_token_id = None if pad_token_id is None else int(pad_token_id)
        self.tokenizer = tokenizer
        self.info = dict(info or {})

    @classmethod
    def from_pretrained(cls, gpt, tokenizer: Tokenizer, *, dtype=None, seed: int = 0):
        """A copy of the pretrained GPT's trunk, a fresh head N(0, 0.02) and pad = eos. seed: the head and the
        trunk's dropout generator."""
        trunk = mg.GPT(gpt.cfg, dtype=gpt.dtype if dtype is None else dtype, seed=seed)
        trunk.load_state_dict(gpt.state_dict())
        w = np.random.default_rng([seed, 1]).standard_normal((1, gpt.cfg.n_embd)) * 0.02
        return cls(trunk, w, tokenizer.eos_token_id, tokenizer)

    # ------------------------------------------------------------------------------------------ parameters
    def named_parameters(self):
        """(Hugging Face name, Tensor) pairs: the trunk's transformer.* and score.weight."""
        return self.gpt.named_parameters() + [(SCORE, self.score_weight)]

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def state_dict(self):
        """{Hugging Face GPT2ForSequenceClassification name: ndarray copy}."""
        return {**self.gpt.state_dict(), SCORE: self.score_weight.data.copy()}

    def load_state_dict(self, state_dict):
        """Copy in a state dict with the names above (a converted Hugging Face one loads: its buffers are ignored)."""
        if SCORE not in state_dict:
            raise ValueError(f"load_state_dict: missing key {SCORE!r}; a reward model's state dict has the "
                             "trunk's transformer.* keys and the head score.weight (1, n_embd)")
        w = np.asarray(state_dict[SCORE])
        if w.shape != (1, self.gpt.cfg.n_embd):
            raise ValueError(f"load_state_dict: {SCORE} has shape {w.shape}, expected (1, {self.gpt.cfg.n_embd})")
        self.gpt.load_state_dict({k: v for k, v in state_dict.items() if k != SCORE})
        self.score_weight.data = np.array(w, dtype=self.gpt.dtype)

    @property
    def training(self):
        return self.gpt.training

    @training.setter
    def training(self, value):
        self.gpt.training = bool(value)

    # ------------------------------------------------------------------------------------------ forward
    def rewards(self, idx, attention_mask=None):
        """idx int (B, T) -> Tensor r (B,), the head read at each row's last non-pad token.

        attention_mask (B, T) only for left padding (see the module docstring); right padding needs none.
        """
        idx = np.asarray(idx)
        h = self.gpt.hidden_states(idx, attention_mask)                                # (B, T, C)
        return score_head(h, self.score_weight, last_non_pad_token(idx, self.pad_token_id))

    def encode(self, texts: Sequence[str]):
        """texts -> list of token-id lists, each cut to its last block_size tokens.

        The end is kept because the head reads the last token: cutting the start keeps that token and its
        nearest context (1.4 % of the default corpus's training snippets exceed 64 tokens).
        """
        if self.tokenizer is None:
            raise ValueError("this reward model has no tokenizer; pass one to GPTRewardModel(...) to score text")
        T = self.gpt.cfg.block_size
        return [ids[-T:] for ids in self.tokenizer.encode_batch(list(texts))]

    def score_ids(self, ids: Sequence[Sequence[int]], forward_batch_size: int = 64) -> np.ndarray:
        """Rewards of token-id lists -> (N,) float64, without a graph and with dropout off.

        The texts are sorted by length and right-padded in chunks of forward_batch_size, so little compute
        goes to padding. A text's reward does not depend on its batch beyond float rounding (the pads are
        invisible to its tokens, tested). An empty text is a row of pads, read at position 0, as in Hugging Face.
        """
        if forward_batch_size < 1:
            raise ValueError(f"forward_batch_size must be >= 1, got {forward_batch_size}")
        lengths = np.array([len(x) for x in ids], dtype=np.int64)
        order = np.argsort(lengths, kind="stable")
        out = np.empty(len(ids), dtype=np.float64)
        was_training, self.training = self.training, False
        try:
            with no_grad():
                for start in range(0, len(ids), forward_batch_size):
                    chunk = order[start:start + forward_batch_size]
                    out[chunk] = self.rewards(right_pad([ids[i] for i in chunk], self.pad_token_id)).data
        finally:
            self.training = was_training
        return out

    def score(self, texts: Sequence[str], forward_batch_size: int = 64) -> np.ndarray:
        """r(text_i), a log-odds-like reward per text.   texts (N,) -> (N,) float64."""
        if isinstance(texts, str):
            raise TypeError("score expects a list of strings, got one string; wrap it in a list: [text]")
        return self.score_ids(self.encode(texts), forward_batch_size)

    def metrics(self, texts: Sequence[str], labels: Sequence[int], forward_batch_size: int = 64) -> dict:
        """{"accuracy": mean 1[(r > 0) = y], "log_loss": BCE of sigmoid(r) (nats), "auc", "n": N}."""
        return classification_metrics(self.score(texts, forward_batch_size), labels)

    # ------------------------------------------------------------------------------------------ files
    def save(self, path) -> Path:
        """Write the reward model to one .npz: the Hugging Face state dict and the tokenizer.json text as arrays;
        the trunk's config, dtype, pad_token_id and training info as metadata."""
        if self.tokenizer is None:
            raise ValueError("save needs the tokenizer (it is stored with the weights); pass one to the model")
        arrays = {**self.state_dict(), "tokenizer_json": np.array(self.tokenizer.hf.to_str())}
        meta = {"format": FORMAT, "config": dataclasses.asdict(self.gpt.cfg), "dtype": self.gpt.dtype.name,
                "pad_token_id": self.pad_token_id, "info": self.info}
        save_npz(path, arrays, meta)
        return Path(path)


def right_pad(ids: Sequence[Sequence[int]], pad_token_id) -> np.ndarray:
    """Token-id lists -> (N, T) int64, each row followed by pad_token_id up to the longest (T >= 1)."""
    T = max([1] + [len(x) for x in ids])
    out = np.full((len(ids), T), pad_token_id, dtype=np.int64)
    for i, x in enumerate(ids):
        out[i, :len(x)] = x
    return out


def classification_metrics(rewards, labels) -> dict:
    """Accuracy at r > 0, log-loss of sigmoid(r), and the AUC: P(r_pos > r_neg) + 1/2 P(tie), threshold-free.

    The AUC matters for a pairwise-trained model: its loss sees only differences, so its zero is arbitrary
    unless the centring term pins it.
    """
    r = np.asarray(rewards, dtype=np.float64)
    y = np.asarray(labels)
    if y.shape != r.shape or r.size == 0:
        raise ValueError(f"{r.size} rewards but labels have shape {y.shape} (need the same, at least one)")
    return {"accuracy": float(np.mean((r > 0) == (y == 1))), "log_loss": log_loss(r, y), "auc": auc(r, y),
            "n": int(r.size)}


def auc(scores, labels) -> float:
    """The share of (positive, negative) pairs ordered right, ties counted half (Mann-Whitney U / (n_pos n_neg))."""
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(labels) == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    mid_rank = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]        # 1-based ranks, ties share the mean
    return float((mid_rank[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def load_gpt_reward(path, dtype=None) -> GPTRewardModel:
    """Read a file written by GPTRewardModel.save.
    Missing -> FileNotFoundError; not a GPT reward model -> ValueError."""
    arrays, meta = load_npz(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a GPT reward model (its format is {meta.get('format')!r}, expected "
                         f"{FORMAT!r}); pass a file written by GPTRewardModel.save")
    from tokenizers import Tokenizer as HFTokenizer
    try:
        gpt = mg.GPT(GPTConfig(**meta["config"]), dtype=meta["dtype"] if dtype is None else dtype)
        tokenizer = Tokenizer(HFTokenizer.from_str(str(arrays.pop("tokenizer_json"))))
        model = GPTRewardModel(gpt, arrays[SCORE], meta["pad_token_id"], tokenizer, meta["info"])
        model.load_state_dict(arrays)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: the GPT reward model file is incomplete or inconsistent ({type(e).__name__}: "
                         f"{e}); re-create it") from e
    model.training = False
    return model


__all__ = ["FORMAT", "GPTRewardModel", "auc", "classification_metrics", "last_non_pad_token", "load_gpt_reward",
           "right_pad", "score_head"]
