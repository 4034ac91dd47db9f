"""Per-node minibatch order and dropout masks that depend only on (seed, node, epoch).

Each record's sort key is a SplitMix64 hash of ``(seed, node, epoch, row)``;
a node's epoch permutation is the order of its keys. Because no state is
shared between nodes, a node's shuffle is the same whether it trains alone,
in a chunk of thousands, or in another process. ``node`` is the node's
shuffle id: its index in the federation (``BatchedTrainer(shuffle_ids=...)``),
which a deployed node keeps when it trains on its own.

Dropout masks come from the same hash, keyed further by the hidden layer, the
record's position in the node's epoch order and the unit, so a node drops the
same units whether it trains alone or among thousands.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MASK = (1 << 64) - 1


def _mix(z: U64) -> U64:
    """SplitMix64 finaliser, elementwise (uint64 arithmetic wraps)."""
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def node_keys(seed: int, nodes: npt.ArrayLike, epoch: int) -> U64:
    """One 64-bit stream key per node for this (seed, epoch)."""
    base = _mix(np.array([int(seed) & _MASK], dtype=np.uint64))
    ids = np.atleast_1d(np.asarray(nodes, dtype=np.int64)).astype(np.uint64)
    ep = np.array([int(epoch) & _MASK], dtype=np.uint64)
    return _mix(_mix(base ^ ids) ^ ep)


def epoch_permutation(seed: int, node: int, epoch: int, n: int) -> I64:
    """The order in which ``node`` visits its ``n`` records in ``epoch``."""
    keys = _mix(node_keys(seed, [node], epoch)[0] + np.arange(n, dtype=np.uint64))
    return np.argsort(keys, kind="stable").astype(np.int64)


def chunk_permutation(seed: int, nodes: I64, sizes: I64, epoch: int) -> I64:
    """Epoch permutations of many nodes at once, as positions in their concatenation.

    Node ``i`` owns positions ``starts[i]:starts[i] + sizes[i]`` of the
    concatenation (``starts`` the exclusive cumulative sum of ``sizes``); the
    result lists, segment by segment, the positions in visiting order:
    ``out[starts[i]:starts[i+1]] - starts[i]`` equals
    ``epoch_permutation(seed, nodes[i], epoch, sizes[i])``.
    """
    total = int(sizes.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    starts = np.cumsum(sizes) - sizes
    segment = np.repeat(np.arange(len(sizes)), sizes)
    within = (np.arange(total, dtype=np.int64) - np.repeat(starts, sizes)).astype(np.uint64)
    keys = _mix(np.repeat(node_keys(seed, nodes, epoch), sizes) + within)
    return np.lexsort((keys, segment)).astype(np.int64)


#: Separates the dropout streams of each layer from the shuffle's stream.
_DROPOUT_TAG = np.uint64(0xD50F_0A7E_D15C_0001)


def dropout_keep(
    seed: int, nodes: npt.ArrayLike, epoch: int, *, layer: int, positions: I64, width: int, p: float
) -> npt.NDArray[np.bool_]:
    """Which units each node keeps: ``(len(nodes), len(positions), width)`` booleans.

    ``positions`` are records' places in the node's epoch visiting order (its
    minibatch ``s`` holds positions ``s*batch_size ...``); each unit is kept
    with probability ``1 - p``, independently, from a SplitMix64 hash of
    ``(seed, node, epoch, layer, position, unit)``.
    """
    tag = np.array([int(layer) + 1], dtype=np.uint64) * _DROPOUT_TAG  # arrays wrap silently
    base = node_keys(seed, nodes, epoch) ^ tag
    rows = _mix(base[:, None] + np.asarray(positions, dtype=np.int64).astype(np.uint64)[None, :])
    units = _mix(rows[:, :, None] ^ (np.arange(width, dtype=np.uint64) * _GOLDEN))
    threshold = np.uint64(min(int(p * (1 << 53)), (1 << 53) - 1))
    return np.asarray((units >> np.uint64(11)) >= threshold)
