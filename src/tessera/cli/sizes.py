"""Sizes in bytes on the command line: ``2GiB``, ``512M``, ``1.5GiB`` or plain bytes.

The suffixes are binary and read as systemd reads ``MemoryMax=`` (``K``, ``M``,
``G``, ``T``, with or without ``iB``), so a node's ``--memory-limit`` and its
unit's ``MemoryMax=`` are written alike. Decimal ``GB``/``MB`` are refused
rather than guessed: the two readings differ by 7 %.
"""

from __future__ import annotations

import re

import typer

from tessera.sandbox import size_text

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:([KMGT])(?:iB?)?|B?)", re.IGNORECASE)
_SHIFT = {"K": 10, "M": 20, "G": 30, "T": 40}
#: Less cannot hold Python itself: surely a slip (a unit left out), refused at once.
MIN_MEMORY = 64 << 20


def parse_size(text: str) -> int:
    """The bytes ``text`` names; ``ValueError`` saying which forms are taken."""
    found = _SIZE.fullmatch(text.strip())
    if found is None:
        raise ValueError(
            f"{text!r} is not a size: give bytes, or a number with K, M, G or T"
            " (binary, as systemd's MemoryMax=), e.g. 2GiB or 512M"
        )
    number, unit = found.groups()
    size = float(number) * (1 << _SHIFT[unit.upper()] if unit else 1)
    if not size.is_integer() or size < 1:
        raise ValueError(f"{text!r} is not a positive whole number of bytes")
    return int(size)


def memory_option(text: str | None, flag: str) -> int | None:
    """A memory-limit option in bytes (None stays None); a usage error when malformed
    or under ``MIN_MEMORY``."""
    if text is None:
        return None
    try:
        size = parse_size(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=flag) from None
    if size < MIN_MEMORY:
        raise typer.BadParameter(
            f"{text} is under {size_text(MIN_MEMORY)}, too little for the sandbox to start"
            " (did you leave out the unit? 512M, 2GiB)",
            param_hint=flag,
        )
    return size
