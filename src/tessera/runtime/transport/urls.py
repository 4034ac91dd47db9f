"""Which service URLs a party may talk to: https, or plain http on loopback when asked.

A node sends its signed requests, its consent receipt and its revocations
over these URLs; over plain http anyone on the path reads and replays them.
So only https is taken, except where the operator sets the development
switch *and* the host is this machine's loopback (tests, ``tessera up
--no-tls``), where no third party is on the path.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from tessera.errors import ConfigError

_LOOPBACK_NAMES = frozenset({"localhost"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_https(url: str, what: str, *, insecure_loopback: bool = False) -> str:
    """``url`` if a party may use it for ``what``; ``ConfigError`` saying why not."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname:
        if insecure_loopback and is_loopback(parts.hostname):
            return url
        hint = (
            "plain http is taken only on loopback with the development switch (--insecure-loopback)"
            if is_loopback(parts.hostname)
            else "plain http is never taken off this machine"
        )
        raise ConfigError(what, f"{url} is not https: {hint}")
    raise ConfigError(what, f"{url!r} is not an https URL")
