"""Who holds which training records: natural, per-user and synthetic splits.

A ``Partition`` is a permutation of record indices cut into consecutive
slices, one per node; it is two int64 arrays whatever the number of nodes,
so one node per user (tens of thousands of nodes) stays cheap. Every
function here is vectorized and deterministic for a given seed.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tessera.data._common import count, positive, rng
from tessera.errors import DataError
from tessera.ids import node_id

Indices = npt.NDArray[np.int64]

# How many Dirichlet draws ``dirichlet`` tries before it reports the request as
# unreachable; a request that fails this often needs a larger alpha or fewer nodes.
DIRICHLET_TRIES = 100


@dataclass(frozen=True, eq=False)
class Partition:
    """Node ``i`` holds records ``order[offsets[i]:offsets[i + 1]]``.

    ``order`` is a permutation of ``0..n-1``; ``offsets`` has ``n_nodes + 1``
    increasing entries from 0 to n, so no node is empty; ``names`` labels the
    nodes. The arrays are copied and made read-only.
    """

    order: Indices
    offsets: Indices
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        order = _frozen_int64("order", self.order)
        offsets = _frozen_int64("offsets", self.offsets)
        object.__setattr__(self, "order", order)
        object.__setattr__(self, "offsets", offsets)
        object.__setattr__(self, "names", tuple(str(name) for name in self.names))
        n = len(order)
        if n == 0:
            raise DataError("a partition needs at least one record")
        if not self.names:
            raise DataError("a partition needs at least one node")
        if len(offsets) != len(self.names) + 1:
            raise DataError(
                f"partition has {len(self.names)} names but {len(offsets) - 1} nodes in offsets"
            )
        if offsets[0] != 0 or offsets[-1] != n:
            raise DataError(f"partition offsets must run from 0 to {n}")
        if (np.diff(offsets) <= 0).any():
            empty = self.names[int(np.flatnonzero(np.diff(offsets) <= 0)[0])]
            raise DataError(f"partition node {empty!r} is empty (offsets must increase)")
        if order.min() < 0 or order.max() >= n or (np.bincount(order, minlength=n) != 1).any():
            raise DataError(f"partition order must be a permutation of 0..{n - 1}")
        if len(set(self.names)) != len(self.names):
            raise DataError("partition node names must be distinct")

    @property
    def n_nodes(self) -> int:
        return len(self.names)

    @property
    def n_records(self) -> int:
        return len(self.order)

    @property
    def sizes(self) -> Indices:
        """Records per node."""
        return np.diff(self.offsets)

    def records(self, i: int) -> Indices:
        """Indices of the records node ``i`` holds."""
        index = count("node index", i, 0)
        if index >= self.n_nodes:
            raise DataError(f"node index {index} out of range: the partition has {self.n_nodes}")
        return self.order[self.offsets[index] : self.offsets[index + 1]]

    def owners(self) -> Indices:
        """Node index of every record (the inverse view of ``order``)."""
        owner = np.empty(self.n_records, dtype=np.int64)
        owner[self.order] = np.repeat(np.arange(self.n_nodes, dtype=np.int64), self.sizes)
        return owner

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Partition):
            return NotImplemented
        return (
            self.names == other.names
            and np.array_equal(self.offsets, other.offsets)
            and np.array_equal(self.order, other.order)
        )

    # Unhashable, as __eq__ compares arrays; mypy's documented idiom for it.
    __hash__ = None  # type: ignore[assignment]


def natural(groups: npt.ArrayLike) -> Partition:
    """One node per distinct group value (e.g. per school), nodes sorted by value.

    Names are ``str(value)``; records keep their original order within a node.
    """
    values = np.asarray(groups)
    if values.ndim != 1 or len(values) == 0:
        raise DataError(f"natural partition needs a non-empty 1-D array, got shape {values.shape}")
    try:
        uniques, inverse = np.unique(values, return_inverse=True)
    except TypeError as exc:
        raise DataError(
            f"group values cannot be sorted (mixed or missing values?): {exc}"
        ) from None
    if uniques.dtype.kind == "f" and np.isnan(uniques).any():
        raise DataError("group values contain NaN; drop or fill those records first")
    names = tuple(str(u) for u in uniques.tolist())
    if len(set(names)) != len(names):
        raise DataError("distinct group values print the same (e.g. 1 and '1'); make them uniform")
    return _from_assignment(inverse.reshape(-1), len(uniques), names)


def per_record(n: int) -> Partition:
    """One node per record: each user is their own node."""
    size = count("number of records", n, 1)
    return Partition(
        order=np.arange(size, dtype=np.int64),
        offsets=np.arange(size + 1, dtype=np.int64),
        names=_names(size),
    )


def iid(n: int, n_nodes: int, seed: int) -> Partition:
    """Records shuffled and dealt into ``n_nodes`` near-equal shares."""
    size, nodes = _check_sizes(n, n_nodes)
    draw = rng(seed)
    sizes = np.full(nodes, size // nodes, dtype=np.int64)
    sizes[: size % nodes] += 1
    return _from_sizes(draw.permutation(size), sizes)


def dirichlet(
    labels: npt.ArrayLike, n_nodes: int, alpha: float, seed: int, min_size: int = 1
) -> Partition:
    """Label skew: each class is split over the nodes by proportions drawn from Dir(alpha).

    Small ``alpha`` gives each node few classes; large ``alpha`` approaches iid.
    As in the usual implementation (Hsu et al. 2019; Li et al., NIID-Bench), a
    node that already holds more than its fair share n/n_nodes gets none of the
    classes that follow, and the whole draw is repeated until every node has at
    least ``min_size`` records (``DIRICHLET_TRIES`` times at most).
    """
    y = np.asarray(labels)
    if y.ndim != 1:
        raise DataError(f"labels must be a 1-D array, got shape {y.shape}")
    size, nodes = _check_sizes(len(y), n_nodes, min_size)
    concentration = positive("alpha", alpha)
    try:
        _, classes = np.unique(y, return_inverse=True)
    except TypeError as exc:
        raise DataError(f"labels cannot be sorted (mixed or missing values?): {exc}") from None
    classes = classes.reshape(-1)
    members = np.argsort(classes, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(classes))])
    draw = rng(seed)
    fair = size / nodes
    least = 0
    for _ in range(DIRICHLET_TRIES):
        owner = np.empty(size, dtype=np.int64)
        held = np.zeros(nodes, dtype=np.int64)
        for start, stop in itertools.pairwise(bounds):
            records = draw.permutation(members[start:stop])
            share = draw.dirichlet(np.full(nodes, concentration))
            capped = share * (held < fair)
            share = capped / capped.sum() if capped.sum() > 0 else share / share.sum()
            cuts = (np.cumsum(share) * len(records)).astype(np.int64)
            cuts[-1] = len(records)
            counts = np.diff(cuts, prepend=0)
            owner[records] = np.repeat(np.arange(nodes, dtype=np.int64), counts)
            held += counts
        least = int(held.min())
        if least >= min_size:
            return _from_assignment(owner, nodes, _names(nodes))
    raise DataError(
        f"dirichlet partition of {size} records over {nodes} nodes with alpha={alpha} "
        f"left a node with {least} < min_size={min_size} records in {DIRICHLET_TRIES} tries; "
        "use a larger alpha, fewer nodes or a smaller min_size"
    )


def quantity_skew(n: int, n_nodes: int, alpha: float, seed: int, min_size: int = 1) -> Partition:
    """Unequal node sizes from Dir(alpha), records otherwise iid.

    Every node first gets ``min_size`` records; the rest are shared out by
    multinomial draw with Dirichlet proportions, so no resampling is needed.
    """
    size, nodes = _check_sizes(n, n_nodes, min_size)
    concentration = positive("alpha", alpha)
    draw = rng(seed)
    share = draw.dirichlet(np.full(nodes, concentration))
    sizes = min_size + draw.multinomial(size - nodes * min_size, share / share.sum())
    return _from_sizes(draw.permutation(size), sizes.astype(np.int64))


def _check_sizes(n: int, n_nodes: int, min_size: int = 1) -> tuple[int, int]:
    size = count("number of records", n, 0)
    nodes = count("n_nodes", n_nodes, 1)
    least = count("min_size", min_size, 1)
    if size == 0:
        raise DataError("cannot partition empty data")
    if nodes * least > size:
        raise DataError(
            f"cannot give {nodes} nodes at least {least} record(s) each from {size} records"
        )
    return size, nodes


def _names(n_nodes: int) -> tuple[str, ...]:
    return tuple(node_id(i) for i in range(n_nodes))


def _from_sizes(order: npt.NDArray[np.integer], sizes: Indices) -> Partition:
    offsets = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(sizes)])
    return Partition(order=order.astype(np.int64), offsets=offsets, names=_names(len(sizes)))


def _from_assignment(
    owner: npt.NDArray[np.integer], n_nodes: int, names: Sequence[str]
) -> Partition:
    """Partition from each record's node index; records keep their order within a node."""
    order = np.argsort(owner, kind="stable").astype(np.int64)
    sizes = np.bincount(owner, minlength=n_nodes)
    offsets = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(sizes)])
    return Partition(order=order, offsets=offsets, names=tuple(names))


def _frozen_int64(name: str, values: npt.ArrayLike) -> Indices:
    array = np.asarray(values)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise DataError(
            f"partition {name} must be a 1-D integer array, got {array.dtype} {array.shape}"
        )
    out = array.astype(np.int64, copy=True)
    out.setflags(write=False)
    return out
