"""The pipe framing, bytes in and messages out, with no process involved."""

from __future__ import annotations

import io

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera.sandbox import FrameError, SandboxError
from tessera.sandbox.frames import HEADER, FrameReader, body_length, decode, encode, read_body

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text()
    | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
messages = st.dictionaries(st.text(max_size=10), values, max_size=6)


@given(messages, st.lists(st.integers(1, 50), min_size=1, max_size=20))
def test_reader_reassembles_frames_split_anywhere(
    message: dict[str, object], cuts: list[int]
) -> None:
    data = encode(message) + encode({"next": 1})
    reader = FrameReader()
    got, pos = [], 0
    for cut in [*cuts, len(data)]:
        reader.feed(data[pos : pos + cut])
        pos += cut
        while (m := reader.next_message()) is not None:
            got.append(m)
    assert len(got) == 2
    assert msgpack.packb(got[0]) == msgpack.packb(message)  # NaN-safe equality
    assert got[1] == {"next": 1}
    assert reader.pending == 0


def test_stream_round_trip_and_clean_end() -> None:
    stream = io.BytesIO(encode({"op": "ping"}) + encode({"op": "x", "b": b"\0" * 10}))
    assert decode(read_body(stream) or b"") == {"op": "ping"}
    assert decode(read_body(stream) or b"") == {"op": "x", "b": b"\0" * 10}
    assert read_body(stream) is None


def test_oversized_header_refused_before_reading_the_body() -> None:
    header = HEADER.pack(2**31)
    with pytest.raises(FrameError, match="exceeds the limit"):
        body_length(header, max_size=1 << 20)
    reader = FrameReader(max_size=100)
    reader.feed(HEADER.pack(101))
    with pytest.raises(FrameError, match="exceeds the limit"):
        reader.next_message()
    with pytest.raises(FrameError, match="exceeds the limit"):
        encode({"b": b"\0" * 200}, max_size=100)


@pytest.mark.parametrize(
    "data",
    [HEADER.pack(10)[:3], HEADER.pack(10) + b"12345"],
    ids=["header", "body"],
)
def test_truncated_stream_is_a_frame_error(data: bytes) -> None:
    with pytest.raises(FrameError, match="truncated"):
        read_body(io.BytesIO(data))


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1",  # a reserved msgpack byte
        msgpack.packb([1, 2]),
        msgpack.packb({1: "int key"}),
        msgpack.packb({"a": 1}) + b"\x00",  # trailing bytes
        msgpack.packb({"a": msgpack.ExtType(5, b"xx")}),
        b"\x91" * 100_000,  # nesting beyond msgpack's stack
    ],
    ids=["reserved", "array", "int-key", "trailing", "ext", "deep"],
)
def test_bad_bodies_are_frame_errors(body: bytes) -> None:
    with pytest.raises(FrameError) as info:
        decode(body)
    assert isinstance(info.value, SandboxError)
