"""Data-quality statistics a contributor computes on its own records, shared only
inside secure aggregation: nobody reads one contributor's, only a group's or the
round's sum.

A job with ``[contributions]`` asks each contributor for ``3 + C`` words after its
update (``SecureAssignment.quality``; ``C`` a classifier's classes, else 0), each
in [0, 1] so the ring's bound and a sum's size are known:

- ``w * min(loss_before, loss_cap) / loss_cap``: the global model's loss on the
  contributor's records before it trained (mislabelled or noisy records show a
  high one);
- ``w * min(norm / clip, 1)``: its update's norm before clipping, against the
  clip bound;
- ``1`` if the update was clipped, else ``0``: the sum counts them (a scaled
  update is clipped);
- ``w * count_c / records`` for each class ``c``: its label distribution.

``w`` is the contributor's aggregation weight, so a sum divided by the summed
weight is the weighted mean; ``RoundQuality.of`` reads a decoded sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tessera.errors import RemoteProtocolError

#: Words before the label distribution: loss before, norm ratio, clipped.
QUALITY_HEAD = 3
#: At most this many words (a classifier of up to 1,021 classes).
MAX_QUALITY_WORDS = 1024


@dataclass(frozen=True, kw_only=True, slots=True)
class LocalQuality:
    """What a contributor's trainer measured on its own records this round."""

    loss_before: float
    norm: float  # the update's L2 norm before clipping
    labels: tuple[int, ...] = ()  # records per class (a classifier's)

    def __post_init__(self) -> None:
        if not (self.norm >= 0 and self.loss_before >= 0):  # NaN fails too
            raise RemoteProtocolError("quality statistics must be finite and non-negative")
        if any(c < 0 for c in self.labels):
            raise RemoteProtocolError("label counts must be non-negative")


def quality_words(
    q: LocalQuality, *, w: float, clip: float, loss_cap: float, words: int
) -> npt.NDArray[np.float64]:
    """The ``words`` (``QUALITY_HEAD + C``) a contributor shares for ``q``; ``ValueError``
    when its label counts are not the job's ``C`` classes."""
    classes = words - QUALITY_HEAD
    if len(q.labels) != classes:
        raise ValueError(f"{len(q.labels)} label counts for a job of {classes} classes")
    out = np.empty(words, np.float64)
    out[0] = w * min(q.loss_before, loss_cap) / loss_cap
    out[1] = w * min(q.norm / clip, 1.0)
    out[2] = 1.0 if q.norm > clip else 0.0
    records = sum(q.labels)
    out[QUALITY_HEAD:] = [w * c / records if records else 0.0 for c in q.labels]
    return out


@dataclass(frozen=True, kw_only=True, slots=True)
class RoundQuality:
    """A sum's quality words read back: weighted means over its contributors."""

    loss_before: float
    norm_ratio: float  # mean of min(norm / clip, 1)
    clipped: int  # contributors whose update was clipped
    labels: tuple[float, ...]  # the weighted label distribution

    @classmethod
    def of(cls, words: npt.NDArray[np.float64], weight: float, loss_cap: float) -> RoundQuality:
        if weight <= 0:
            raise ValueError("a sum of no weight has no mean")
        return cls(
            loss_before=float(words[0]) / weight * loss_cap,
            norm_ratio=float(words[1]) / weight,
            clipped=max(round(float(words[2])), 0),
            labels=tuple(float(v) / weight for v in words[QUALITY_HEAD:]),
        )
