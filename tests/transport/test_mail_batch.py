"""A node reads a mailbox batch as it streams in, each envelope straight into its bytes.

The reader takes exactly what msgpack makes of a list of [id, bytes] pairs,
however the stream is cut, and refuses anything else with a 502.
"""

from __future__ import annotations

import itertools

import httpx
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.runtime.transport.client import ServiceRefused, _read_batch


def _response(data: bytes, cuts: list[int]) -> httpx.Response:
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in itertools.pairwise([0, *points, len(data)])]
    return httpx.Response(200, content=iter(chunks))


_ITEMS = st.lists(
    st.tuples(
        st.integers(0, 2**62),
        st.one_of(st.binary(max_size=300), st.integers(0, 70_000).map(lambda n: b"\xab" * n)),
    ),
    max_size=20,
)


@settings(max_examples=80, deadline=None)
@given(items=_ITEMS, cuts=st.lists(st.integers(0, 200_000), max_size=10))
def test_a_batch_reads_back_whatever_the_cuts(
    items: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    data = msgpack.packb([[i, d] for i, d in items], use_bin_type=True)
    assert _read_batch(_response(data, cuts)) == items


@settings(max_examples=60, deadline=None)
@given(items=_ITEMS.filter(bool), cut=st.integers(1, 1000), data=st.data())
def test_a_batch_cut_short_is_refused(
    items: list[tuple[int, bytes]], cut: int, data: st.DataObject
) -> None:
    whole = msgpack.packb([[i, d] for i, d in items], use_bin_type=True)
    end = data.draw(st.integers(0, len(whole) - 1))
    with pytest.raises(ServiceRefused, match="cut short") as caught:
        _read_batch(_response(whole[:end], [cut]))
    assert caught.value.status == 502


@pytest.mark.parametrize(
    ("batch", "reason"),
    [
        (msgpack.packb([[1, b"x"]]) + b"\x00", "trailing bytes"),
        (msgpack.packb([[1, "text"]]), "no envelope"),
        (msgpack.packb([[1, b"x", 2]]), "not an \\[id, bytes\\] pair"),
        (msgpack.packb([[-1, b"x"]]), "no message id"),
        (msgpack.packb({"a": 1}), "no array"),
        (b"\xdd" + (5000).to_bytes(4, "big"), "a batch of 5000 messages"),
        (b"\x91\x92\x01\xc6" + (2**31).to_bytes(4, "big"), "an envelope of 2147483648 bytes"),
    ],
)
def test_anything_else_is_refused_with_its_reason(batch: bytes, reason: str) -> None:
    with pytest.raises(ServiceRefused, match=reason) as caught:
        _read_batch(_response(batch, []))
    assert caught.value.status == 502
