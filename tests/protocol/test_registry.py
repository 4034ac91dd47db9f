"""One registry of kinds, one table of limits: complete, unambiguous and consistent."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import msgpack
import numpy as np

from tessera.coordinator.app import MAX_BODY as COORDINATOR_APP_BODY
from tessera.coordinator.app import create_coordinator_app
from tessera.crypto.documents import MAX_DOCUMENT_BYTES, DocumentKind
from tessera.data_provider.app import MAX_BODY as PROVIDER_APP_BODY
from tessera.ids import JobId
from tessera.protocol import limits
from tessera.protocol.control import decode_update, encode_update
from tessera.protocol.kinds import CODEC, SEALED, Codec, Kind
from tessera.protocol.messages import UpdateSubmission
from tessera.sandbox.catalogue import NodeCatalogue

SRC = Path(__file__).resolve().parents[2] / "src" / "tessera"


def test_every_kind_has_one_number_and_one_codec() -> None:
    assert len({int(k) for k in Kind}) == len(Kind.__members__) == len(list(Kind))  # no aliases
    assert all(0 < int(k) < 256 for k in Kind)  # one header byte
    assert set(CODEC) == set(Kind)
    assert set(Kind) >= SEALED


def test_the_registry_is_the_only_place_kinds_are_numbered() -> None:
    """No module defines envelope kinds of its own any more (they once lived in two enums)."""
    found = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        if path.name != "kinds.py" and re.search(r"class \w*Kind\(IntEnum\)", text):
            found.append(str(path.relative_to(SRC)))
    assert found == []


def test_every_codec_is_used_by_the_module_its_docstring_names() -> None:
    codec_py = (SRC / "protocol" / "codec.py").read_text()
    control_py = (SRC / "protocol" / "control.py").read_text()
    assert "msgpack" in control_py and "msgpack" not in codec_py
    for kind, codec in CODEC.items():
        if codec is Codec.MSGPACK:
            assert f"Kind.{kind.name}" in control_py, kind


def test_document_kinds_are_distinct_and_used() -> None:
    assert len({k.value for k in DocumentKind}) == len(DocumentKind)
    text = "".join(p.read_text() for p in SRC.rglob("*.py"))
    for kind in DocumentKind:
        assert f"DocumentKind.{kind.name}" in text, f"{kind} is registered but never signed"
    # no document kind written as a bare string next to a signature call
    assert not re.search(r'sign_document\([^,]+, "[a-z-]+"', text)


def test_limits_agree_along_every_path() -> None:
    # The mailbox relays every envelope: its route takes the largest any party accepts.
    assert max(limits.ENVELOPE_LIMITS.values()) <= limits.MAIL_BODY
    assert limits.MAIL_BODY == limits.MAX_ENVELOPE_BYTES
    signature = inspect.signature(create_coordinator_app).parameters
    assert signature["mail_body"].default == limits.MAIL_BODY
    # Every other route takes documents and the largest model's initial weights.
    assert COORDINATOR_APP_BODY == limits.COORDINATOR_BODY >= limits.MAX_PARAMETERS * 4
    assert limits.COORDINATOR_BODY >= MAX_DOCUMENT_BYTES
    # Evidence, the bulkiest kind, holds at least three full vectors of the largest model.
    assert limits.MAX_EVIDENCE_BYTES >= 3 * (limits.MAX_SHARE_BYTES - limits.ENVELOPE_SLACK)
    # One full share or sum of the largest model fits an envelope.
    assert limits.MAX_SHARE_BYTES <= limits.MAX_ENVELOPE_BYTES
    # The node catalogue never allows a model the protocol cannot carry.
    assert NodeCatalogue().max_parameters <= limits.MAX_PARAMETERS
    # The provider takes a records request: three documents and the fields.
    assert PROVIDER_APP_BODY == limits.PROVIDER_BODY >= 3 * MAX_DOCUMENT_BYTES
    assert limits.MAX_CONTROL_BYTES <= limits.MAX_MSGPACK_BYTES <= limits.MAX_ENVELOPE_BYTES


def test_a_plaintext_update_of_the_largest_model_is_accepted() -> None:
    """It was refused before the table: 20 MB of float32 over a 16 MiB msgpack limit."""
    update = UpdateSubmission(
        job_id=JobId("j"),
        round=0,
        delta=np.zeros(limits.MAX_PARAMETERS, np.float32),
        num_samples=1,
        loss=0.0,
    )
    data = encode_update(update)
    assert len(data) + limits.ENVELOPE_SLACK <= limits.MAX_ENVELOPE_BYTES
    assert decode_update(data).delta.shape == (limits.MAX_PARAMETERS,)
    assert msgpack.unpackb(data)["k"] == int(Kind.UPDATE)
