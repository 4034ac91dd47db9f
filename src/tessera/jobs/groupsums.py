"""One round's disclosed group sums as the coordinator keeps them: a safetensors artefact.

A job with ``[contributions]`` has its coordinator decode each leaf group's
sum every round (``protocol.effects.GroupSum``). The coordinator keeps them,
content-addressed, as one artefact per round, which that round's record
names (``RoundRecord.group_sums``); only the job's AI provider may read it
(``coordinator.access``), to value the groups on its own validation rows
(``jobs.valuation.GroupValuer``) and post its verdicts back.

The artefact holds one float64 matrix ``totals`` (a row per group, the
``TAIL`` words included) and, in the safetensors header's text metadata, the
format, the round and each group's id and members. No group ever holds
fewer than the job's floor of members: the writer refuses to write one, and
the reader refuses to return one.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
from safetensors.numpy import load, save

from tessera.config import JobConfig
from tessera.errors import LocalProtocolError, RemoteProtocolError
from tessera.protocol.effects import GroupSum

GROUP_SUMS_MEDIA_TYPE = "application/vnd.tessera.group-sums+safetensors"
_FORMAT = "tessera-group-sums/v1"
#: The safetensors header a reader parses at most (a group's members are listed in it).
MAX_HEADER_BYTES = 16 << 20


def group_floor(cfg: JobConfig) -> int:
    """The fewest members a disclosed group of the job holds (``SecureParams.disclosure``)."""
    floor = cfg.contributions.min_group if cfg.contributions is not None else None
    return max(floor or cfg.secure.min_group, 2)


def group_sums_artefact(
    round: int, groups: Sequence[GroupSum], *, min_group: int
) -> tuple[bytes, str]:
    """The artefact of ``round``'s ``groups`` and its SHA-256.

    LocalProtocolError (writing nothing) if a group holds fewer than ``min_group``
    members, names one twice, or the totals differ in length: the protocol never
    discloses such a sum, so one here is a bug that must not leave the coordinator.
    """
    if not groups:
        raise LocalProtocolError("a group-sum artefact holds at least one group")
    if min_group < 2:
        raise LocalProtocolError(f"a disclosed group's floor is at least 2, not {min_group}")
    for g in groups:
        if len(set(g.members)) != len(g.members) or len(g.members) < min_group:
            raise LocalProtocolError(
                f"group {g.group} of round {round} holds {len(set(g.members))} distinct members, "
                f"below the job's floor of {min_group}: its sum is never written"
            )
    lengths = {len(g.total) for g in groups}
    if len(lengths) != 1:
        raise LocalProtocolError(f"round {round}'s group totals differ in length: {lengths}")
    totals = np.stack([np.asarray(g.total, dtype=np.float64) for g in groups])
    meta = {
        "format": _FORMAT,
        "round": str(round),
        "groups": json.dumps([{"group": g.group, "members": list(g.members)} for g in groups]),
    }
    data = save({"totals": np.ascontiguousarray(totals)}, metadata=meta)
    return data, hashlib.sha256(data).hexdigest()


def read_group_sums(
    data: bytes, sha256: str, *, length: int, min_group: int
) -> tuple[int, tuple[GroupSum, ...]]:
    """(round, groups) of an artefact, hash-checked; RemoteProtocolError (the
    coordinator's fault) if it is not one, its totals are not ``length`` words, or a
    group holds fewer than ``min_group`` members."""
    if hashlib.sha256(data).hexdigest() != sha256:
        raise RemoteProtocolError("group-sum artefact does not match its SHA-256")
    meta = _metadata(data)
    try:
        totals = load(data)["totals"]
        round = int(meta["round"])
        listed: Any = json.loads(meta["groups"])
    except Exception as exc:  # safetensors, int() and json raise their own error types
        raise RemoteProtocolError(f"not a group-sum artefact: {exc}") from None
    if totals.dtype != np.float64 or totals.ndim != 2 or totals.shape[1] != length:
        raise RemoteProtocolError(f"group totals must be float64 rows of {length} words")
    if not isinstance(listed, list) or len(listed) != totals.shape[0] or not listed:
        raise RemoteProtocolError("the group-sum artefact lists one group per row")
    out = []
    for entry, total in zip(listed, totals, strict=True):
        group = entry.get("group") if isinstance(entry, dict) else None
        members = entry.get("members") if isinstance(entry, dict) else None
        if (
            not isinstance(group, str)
            or not isinstance(members, list)
            or not all(isinstance(m, str) for m in members)
        ):
            raise RemoteProtocolError("a group names its id and its members")
        if len(set(members)) != len(members) or len(members) < min_group:
            raise RemoteProtocolError(
                f"group {group} holds {len(members)} members, below the floor of {min_group}"
            )
        if not np.all(np.isfinite(total)):
            raise RemoteProtocolError(f"group {group}'s total is not finite")
        out.append(GroupSum(group=group, members=tuple(members), total=total.copy()))
    return round, tuple(out)


def _metadata(data: bytes) -> dict[str, str]:
    """The safetensors header's text metadata, of our format."""
    if len(data) < 8:
        raise RemoteProtocolError("not a group-sum artefact: too short")
    (size,) = struct.unpack("<Q", data[:8])
    if size > min(MAX_HEADER_BYTES, len(data) - 8):
        raise RemoteProtocolError("not a group-sum artefact: its header is too long")
    try:
        header = json.loads(data[8 : 8 + size])
    except ValueError:
        raise RemoteProtocolError("not a group-sum artefact: its header is not JSON") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise RemoteProtocolError(f"not a group-sum artefact (expected {_FORMAT!r})")
    return {str(k): str(v) for k, v in meta.items()}
