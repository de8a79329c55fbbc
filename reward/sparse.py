"""A compressed-sparse-row matrix in plain NumPy: just enough for a linear model on bag-of-words features.

Row i of a CSR matrix X (N, D) keeps its nonzero entries in ``data[indptr[i]:indptr[i+1]]`` at columns
``indices[indptr[i]:indptr[i+1]]``. The two products a linear model needs are scatter-adds, which
``np.bincount(..., weights=...)`` does in one vectorised call:

    (X w)_i   = sum_{k in row i} data_k w_{indices_k}       -> segment sums over rows (np.add.reduceat)
    (X^T v)_j = sum_{k : indices_k = j} data_k v_{row_k}    -> scatter-add over columns (np.bincount)

``np.add.reduceat`` sums each row's contiguous segment (twice as fast as bincount here), but for an empty
segment it returns the element at its start instead of 0, and empty rows are common here (the empty
string, text made only of unseen words): so it runs over the non-empty rows only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class CSR:
    """X (N, D) in compressed-sparse-row form; ``indptr`` (N+1,), ``indices`` and ``data`` (nnz,)."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    shape: tuple
    _row_ids: np.ndarray = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        self.indptr = np.asarray(self.indptr, dtype=np.int64)
        self.indices = np.asarray(self.indices, dtype=np.int64)
        self.data = np.asarray(self.data, dtype=np.float64)
        n_rows, n_cols = (int(s) for s in self.shape)
        self.shape = (n_rows, n_cols)
        if self.indptr.shape != (n_rows + 1,) or self.indptr[0] != 0 or np.any(np.diff(self.indptr) < 0):
            raise ValueError(f"CSR indptr must be a non-decreasing ({n_rows + 1},) array starting at 0")
        nnz = int(self.indptr[-1])
        if self.indices.shape != (nnz,) or self.data.shape != (nnz,):
            raise ValueError(f"CSR indices and data must have indptr[-1] = {nnz} entries, got "
                             f"{self.indices.shape} and {self.data.shape}")
        if nnz and (self.indices.min() < 0 or self.indices.max() >= n_cols):
            raise ValueError(f"CSR column indices must lie in [0, {n_cols})")

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    @property
    def row_ids(self) -> np.ndarray:
        """Row index of each stored entry, (nnz,): the run-length expansion of ``indptr``."""
        if self._row_ids is None:
            self._row_ids = np.repeat(np.arange(self.shape[0], dtype=np.int64), np.diff(self.indptr))
        return self._row_ids

    def matvec(self, w: np.ndarray) -> np.ndarray:
        """z = X w.  X (N, D), w (D,) -> z (N,)."""
        z = np.zeros(self.shape[0])
        nonempty = self.indptr[1:] > self.indptr[:-1]
        if self.nnz:
            z[nonempty] = np.add.reduceat(self.data * w[self.indices], self.indptr[:-1][nonempty])
        return z

    def rmatvec(self, v: np.ndarray) -> np.ndarray:
        """g = X^T v.  X (N, D), v (N,) -> g (D,)."""
        return np.bincount(self.indices, weights=self.data * v[self.row_ids], minlength=self.shape[1])

    def scale_columns(self, scale: np.ndarray) -> "CSR":
        """X diag(scale): column j multiplied by scale_j.  scale (D,)."""
        return CSR(self.indptr, self.indices, self.data * scale[self.indices], self.shape)

    def normalize_rows(self) -> "CSR":
        """Each row divided by its Euclidean norm (all-zero rows stay zero)."""
        sq = np.bincount(self.row_ids, weights=self.data ** 2, minlength=self.shape[0])
        norms = np.sqrt(sq)
        norms[norms == 0.0] = 1.0
        return CSR(self.indptr, self.indices, self.data / norms[self.row_ids], self.shape)

    def column_counts(self) -> np.ndarray:
        """Number of rows with a stored entry in each column, (D,) (the document frequency)."""
        return np.bincount(self.indices, minlength=self.shape[1])

    def take_rows(self, rows: np.ndarray) -> "CSR":
        """The sub-matrix X[rows] (rows an int array), still in CSR form."""
        rows = np.asarray(rows, dtype=np.int64)
        starts, stops = self.indptr[rows], self.indptr[rows + 1]
        lengths = stops - starts
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        # Position of every kept entry in the old arrays: start of its row plus its offset within the row.
        offsets = np.arange(indptr[-1]) - np.repeat(indptr[:-1], lengths)
        take = np.repeat(starts, lengths) + offsets
        return CSR(indptr, self.indices[take], self.data[take], (len(rows), self.shape[1]))

    def toarray(self) -> np.ndarray:
        """The dense (N, D) float64 array (for tests and small inputs)."""
        dense = np.zeros(self.shape)
        np.add.at(dense, (self.row_ids, self.indices), self.data)
        return dense


def hstack(blocks) -> CSR:
    """[X_1 X_2 ...]: CSR matrices with the same rows put side by side; columns of X_k come after X_{k-1}'s."""
    blocks = list(blocks)
    if len(blocks) == 1:
        return blocks[0]
    n_rows = blocks[0].shape[0]
    if any(b.shape[0] != n_rows for b in blocks):
        raise ValueError(f"hstack needs equal row counts, got {[b.shape for b in blocks]}")
    lengths = [np.diff(b.indptr) for b in blocks]
    indptr = np.concatenate([[0], np.cumsum(np.sum(lengths, axis=0))])
    indices = np.empty(indptr[-1], dtype=np.int64)
    data = np.empty(indptr[-1], dtype=np.float64)
    row_start = indptr[:-1].copy()  # where the next block's entries of each row go
    col_offset = 0
    for b, length in zip(blocks, lengths):
        # Entry k of b (in row i, at offset k - b.indptr[i] within it) lands at row_start[i] + that offset.
        dest = np.repeat(row_start - b.indptr[:-1], length) + np.arange(b.nnz)
        indices[dest] = b.indices + col_offset
        data[dest] = b.data
        row_start += length
        col_offset += b.shape[1]
    return CSR(indptr, indices, data, (n_rows, col_offset))
