"""Features read in row blocks: how the heads and the gate train from a feature store larger
than memory.

At paper scale the features do not fit in RAM as float64 (60k rated items x 4096 is 2 GB per
copy, and the in-memory path makes several: raw, standardised, per attribute), nor the
preference pairs' prompt features as float32 (600k x 4096 is 10 GB). A *row source* is
anything that returns a float array for a row selection and has a ``shape``: a
:class:`~distrm.features.store.StoredFeatures` view (``extract(..., stream=True)``), which
maps the store's shards only for the duration of a read, or an ``np.memmap``. The code here
reads such sources in blocks of rows and accumulates what the solvers need (column means
and spreads, Gram matrices), so memory grows with d x d and the block, not with n; the
results equal the in-memory path's up to float rounding (sums taken in a different order).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import torch

from distrm.heads.objective import safe_scale

DEFAULT_BLOCK_ROWS = 8192


def is_row_source(X: Any) -> bool:
    """Whether ``X`` is read in blocks by default: an ``np.memmap`` or a store view."""
    return isinstance(X, np.memmap) or (not isinstance(X, (torch.Tensor, np.ndarray)) and hasattr(X, "blocks")
                                        and hasattr(X, "shape"))


def take_rows(X: Any, idx: Any, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Rows ``idx`` of ``X`` (any order, repeats allowed) as a CPU tensor of ``dtype``; a row
    source is read once per distinct row, in ascending order."""
    if isinstance(X, torch.Tensor):
        return X[torch.as_tensor(idx, device=X.device)].to(device="cpu", dtype=dtype)
    idx = idx.cpu().numpy() if isinstance(idx, torch.Tensor) else np.asarray(idx)
    uniq, inv = np.unique(idx, return_inverse=True)
    rows = torch.from_numpy(np.ascontiguousarray(X[uniq])).to(dtype)
    return rows[torch.from_numpy(inv.reshape(-1))]


def row_blocks(X: Any, block_rows: int, rows: Any = None, dtype: torch.dtype = torch.float64
               ) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, block)`` over ``X``'s rows (or the rows ``rows``, in that order) in blocks
    of at most ``block_rows``; ``block`` is a new CPU tensor of ``dtype`` (never a view of X)."""
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    n = X.shape[0] if rows is None else len(rows)
    for s in range(0, n, block_rows):
        if rows is None:
            b = X[s : s + block_rows]
            # always a copy (np.array copies; copy=True for a tensor): callers may work in place
            yield s, (b.to(device="cpu", dtype=dtype, copy=True) if isinstance(b, torch.Tensor)
                      else torch.from_numpy(np.array(b)).to(dtype))
        else:
            yield s, take_rows(X, rows[s : s + block_rows], dtype)


def select_rows(X: Any, rows: Any) -> Any:
    """Rows ``rows`` of ``X``: indexed as usual for a tensor or array (a copy), a
    :class:`RowSubset` (nothing read) for a row source."""
    return RowSubset(X, rows) if is_row_source(X) else X[rows]


def map_row_blocks(fn: Callable[..., Any], *sources: Any, block_rows: int = DEFAULT_BLOCK_ROWS,
                   dtype: torch.dtype = torch.float32) -> Any:
    """``fn(rows, *blocks)`` over the rows of ``sources`` (all with the same rows; ``None`` is
    passed as ``None``), the results (a tensor, or a tuple of tensors) concatenated along the
    rows. ``rows`` is the slice of the rows a call gets, for per-row side data (texts). With a
    row source among ``sources`` the calls go block by block, each block a ``dtype`` tensor, so
    row-wise work (head predictions, gate weights, scores) over a streamed store keeps memory at
    one block; without one ``fn`` gets the inputs as given, in one call (the in-memory path)."""
    n = next(len(s) for s in sources if s is not None)
    if not any(is_row_source(s) for s in sources if s is not None):
        return fn(slice(0, n), *sources)
    outs = []
    for s in range(0, n, block_rows):
        rows = slice(s, min(s + block_rows, n))
        blocks = [None if X is None else take_rows(X, np.arange(rows.start, rows.stop), dtype) for X in sources]
        outs.append(fn(rows, *blocks))
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outs))
    return torch.cat(outs)


class RowSubset:
    """Rows ``rows`` of a row source, itself a row source: ``S[sel]`` reads rows ``rows[sel]``
    of the source, nothing before. What the training and validation pairs of a streamed store
    are handed on as (indexing the store view itself would read them all at once)."""

    def __init__(self, X: Any, rows: Any) -> None:
        self.X = X
        self.rows = np.asarray(rows.cpu().numpy() if isinstance(rows, torch.Tensor) else rows, dtype=np.int64)
        self.shape = (len(self.rows), int(X.shape[1]))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        return self.X[self.rows[key]]

    def blocks(self, block_rows: int = DEFAULT_BLOCK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, rows)`` over consecutive blocks of at most ``block_rows`` rows."""
        for s, b in row_blocks(self, block_rows, dtype=torch.float32):
            yield s, b.numpy()


def block_standardizer(X: Any, block_rows: int, rows: Any = None, dtype: torch.dtype = torch.float64
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~distrm.heads.objective.standardizer` of ``X``'s rows (or of ``rows``) from two
    passes over blocks, accumulated in float64 and returned in ``dtype``. Raises
    ``ValueError`` naming the first block with a NaN or inf."""
    n = X.shape[0] if rows is None else len(rows)
    if n == 0:
        raise ValueError("no feature rows")
    total = torch.zeros(X.shape[1], dtype=torch.float64)
    for s, b in row_blocks(X, block_rows, rows):
        if not bool(torch.isfinite(b).all()):
            raise ValueError(f"features contain NaN or inf (rows {s}..{s + len(b) - 1})")
        total += b.sum(0)
    mean = total / n
    sq = torch.zeros_like(total)
    for _, b in row_blocks(X, block_rows, rows):
        sq += b.sub_(mean).pow_(2).sum(0)  # blocks are fresh copies: in place
    return mean.to(dtype), safe_scale((sq / n).sqrt()).to(dtype)


class StandardizedRows:
    """A row source seen through ``(x - mean) / scale`` (raw rows when ``mean`` is None):
    ``Z[idx]`` reads just those rows, as float64. What the quantile solvers take in place of
    the standardised matrix when the features are read in blocks."""

    device = torch.device("cpu")

    def __init__(self, X: Any, block_rows: int, mean: torch.Tensor | None = None, scale: torch.Tensor | None = None) -> None:
        self.X, self.block_rows, self.mean, self.scale = X, block_rows, mean, scale
        self.shape = tuple(X.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx: Any) -> torch.Tensor:
        rows = take_rows(self.X, idx)
        return rows if self.mean is None else rows.sub_(self.mean).div_(self.scale)

    def blocks(self, rows: Any) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, Z[rows[start:start + block_rows]])`` over ``rows``."""
        for s in range(0, len(rows), self.block_rows):
            yield s, self[rows[s : s + self.block_rows]]
