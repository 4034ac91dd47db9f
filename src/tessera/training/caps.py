"""Per-node caps on local steps: a node that stops early, exactly as if it trained alone.

A deadline round (``runtime.sim.deadline``) gives each slow node as many local
optimizer steps as fit before the deadline. ``BatchedTrainer`` trains a chunk
of nodes as rows of one tensor whose active rows are a prefix (nodes sorted
by size), so a node cannot simply leave the prefix early. Instead ``Stops``
keeps a copy of a capped node's row (and its loss so far) at the step its cap
is reached; the row may go on changing, unused, and is put back at the end.
Rows never interact (every operation is per row, every shuffle and dropout
mask keyed by the node alone), so the result is the node's own. Without caps
``Stops`` does nothing: the trainer runs exactly as before.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from tessera.errors import DataError


def as_caps(max_steps: npt.ArrayLike | None, k: int) -> npt.NDArray[np.int64] | None:
    """``max_steps`` as ``k`` positive int64 caps, or None (no caps)."""
    if max_steps is None:
        return None
    arr = np.asarray(max_steps)
    if arr.shape != (k,) or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise DataError(f"max_steps must be {k} integers, got {arr.dtype} {arr.shape}")
    if arr.size and int(arr.min()) < 1:
        raise DataError("max_steps must be at least 1 (a node that cannot step is not trained)")
    return arr.astype(np.int64)


class Stops:
    """Where each capped node of a chunk stops, and its row and loss when it did."""

    def __init__(
        self,
        caps: npt.NDArray[np.int64] | None,
        sizes: npt.NDArray[np.int64],
        batch: int,
        epochs: int,
    ) -> None:
        self.epochs = epochs
        self.loss_epochs: frozenset[int] = frozenset()
        self._at: dict[tuple[int, int], list[int]] = {}
        self._last_steps = 0  # minibatches the last epoch run needs (0: all)
        self._saved: dict[int, tuple[torch.Tensor, float, int]] = {}
        if caps is None:
            return
        per_epoch = -(-sizes // batch)
        capped = caps < epochs * per_epoch
        stop_epoch = np.where(capped, (caps - 1) // per_epoch, epochs - 1)
        stop_step = np.where(capped, (caps - 1) % per_epoch, per_epoch - 1)
        for row in np.flatnonzero(capped):
            self._at.setdefault((int(stop_epoch[row]), int(stop_step[row])), []).append(int(row))
        self.loss_epochs = frozenset(int(e) for e in stop_epoch[capped])
        self.epochs = int(stop_epoch.max()) + 1 if len(sizes) else 0
        ending = stop_epoch == self.epochs - 1
        self._last_steps = int(stop_step[ending].max()) + 1 if ending.any() else 0

    def steps_in(self, epoch: int, n_steps: int) -> int:
        """How many minibatch steps epoch ``epoch`` runs (all ``n_steps`` but maybe the last)."""
        if epoch == self.epochs - 1 and self._last_steps:
            return min(n_steps, self._last_steps)
        return n_steps

    def reached(self, epoch: int, step: int, params: torch.Tensor, loss: torch.Tensor) -> None:
        """Keep the rows whose cap is reached at this step (after it)."""
        for row in self._at.get((epoch, step), ()):
            self._saved[row] = (params[row].clone(), float(loss[row]), step)

    def final(
        self,
        params: torch.Tensor,
        loss: torch.Tensor,
        sizes: npt.NDArray[np.int64],
        batch: int,
    ) -> tuple[torch.Tensor, torch.Tensor, npt.NDArray[np.int64]]:
        """Each row as its node stopped, its loss sum, and the records that sum is over."""
        if not self._saved:
            return params, loss, sizes
        seen = sizes.copy()
        for row, (kept, loss_sum, step) in self._saved.items():
            params[row] = kept
            loss[row] = loss_sum
            seen[row] = min(int(sizes[row]), (step + 1) * batch)
        return params, loss, seen
