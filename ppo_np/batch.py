"""A batch of (query, response) pairs laid out for the model, and its log-probabilities in forward batches.

Every row is [left padding, query, response, right padding]: queries are left-padded to Q, the longest query
of the batch, and responses right-padded to R, its longest response. Response token t of every row sits at
column Q + t and is predicted by the logits (and valued by the value head) at column Q + t - 1. The widths are
fixed for the whole batch, so each row is computed the same way, up to float rounding in BLAS, whatever
forward batch or mini-batch it falls in. PPO, and every method beside it, lays its batches out here.
"""
import dataclasses

import numpy as np

import minigpt_np as mg

from . import core


def left_pad(queries, pad_token_id=0):
    """Stack queries of different lengths, padded on the left -> idx (B, Q), attention_mask (B, Q)."""
    Q = max(len(q) for q in queries)
    idx = np.full((len(queries), Q), pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((len(queries), Q), dtype=np.int64)
    for i, q in enumerate(queries):
        idx[i, Q - len(q):] = q
        attention_mask[i, Q - len(q):] = 1
    return idx, attention_mask


def right_pad(responses, pad_token_id=0):
    """Stack responses of different lengths, padded on the right -> idx (B, R), mask (B, R)."""
    R = max(len(r) for r in responses)
    idx = np.full((len(responses), R), pad_token_id, dtype=np.int64)
    mask = np.zeros((len(responses), R), dtype=np.int64)
    for i, r in enumerate(responses):
        idx[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return idx, mask


@dataclasses.dataclass
class Batch:
    """A batch laid out for the model: see the module docstring."""
    input_ids: np.ndarray        # (B, Q + R) ints
    attention_mask: np.ndarray   # (B, Q + R) 1 on query and response tokens
    mask: np.ndarray             # (B, R) float 1 on response tokens (right padded)
    Q: int                       # column of the first response token

    def rows(self, rows):
        """The same layout restricted to some rows (a mini-batch or a forward chunk): widths unchanged."""
        return Batch(self.input_ids[rows], self.attention_mask[rows], self.mask[rows], self.Q)

    @property
    def labels(self):
        """(B, R) the response tokens: what the logits at response_columns predict."""
        return self.input_ids[:, self.Q:]

    @property
    def response_columns(self):
        """Columns of the logits and values that predict / value the response tokens: Q - 1 .. Q + R - 2."""
        return slice(self.Q - 1, self.input_ids.shape[1] - 1)


def layout(queries, responses, pad_token_id=0):
    """Left-pad queries to Q, right-pad responses to R and stack them -> Batch."""
    query_ids, query_mask = left_pad(queries, pad_token_id)              # (B, Q)
    response_ids, response_mask = right_pad(responses, pad_token_id)     # (B, R)
    return Batch(np.concatenate([query_ids, response_ids], axis=1),
                 np.concatenate([query_mask, response_mask], axis=1),
                 response_mask.astype(np.float64), query_ids.shape[1])


def forward_chunks(batch, forward_batch_size):
    """The batch in consecutive chunks of forward_batch_size rows: what one no-graph forward pass takes."""
    return [batch.rows(slice(i, i + forward_batch_size)) for i in range(0, len(batch.input_ids), forward_batch_size)]


def response_logprobs(model, batch, forward_batch_size):
    """log pi(y_t) of every response token, no graph, forward_batch_size rows at a time.   -> (B, R) float64,
    0 on padding."""
    logprobs = []
    with mg.no_grad():
        for chunk in forward_chunks(batch, forward_batch_size):
            logits = model(chunk.input_ids, chunk.attention_mask).data[:, chunk.response_columns]
            logprobs.append(core.logprobs_from_logits(logits, chunk.labels))
    return np.concatenate(logprobs).astype(np.float64) * batch.mask


def response_logprobs_and_values(model, batch, forward_batch_size):
    """As `response_logprobs`, and the value head's V_t at the same columns -> (logprobs, values), (B, R) each."""
    logprobs, values = [], []
    with mg.no_grad():
        for chunk in forward_chunks(batch, forward_batch_size):
            logits, vpred = model.logits_and_values(chunk.input_ids, chunk.attention_mask)
            logprobs.append(core.logprobs_from_logits(logits.data[:, chunk.response_columns], chunk.labels))
            values.append(vpred.data[:, chunk.response_columns])
    return (np.concatenate(logprobs).astype(np.float64) * batch.mask,
            np.concatenate(values).astype(np.float64) * batch.mask)
