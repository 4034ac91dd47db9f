"""People's sessions on the coordinator's pages (``coordinator.pages``).

A browser cannot sign requests, so a party asks for a login link with a
signed request (``POST /v1/sessions``, a node or an AI provider): a random
one-time token (``secrets.token_urlsafe(32)``), valid ``LINK_SECONDS``. The
link exchanges it, once, for a session cookie bound to that party (its node
id, or its keys' fingerprint), valid ``SESSION_SECONDS``. Both live **in
memory only**, and only as SHA-256 hashes of the token and of the session
id: a coordinator restart logs everyone out (they ask for a new link), and a
leak of the coordinator's memory or store gives nobody a usable session.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass

from tessera.crypto.keys import PublicKeys
from tessera.runtime.transport.auth import Caller

LINK_SECONDS = 300.0  # a login link's life: five minutes, and used once
SESSION_SECONDS = 8 * 3600.0  # a session's life: a working day
MAX_PENDING = 10_000  # links not yet used, and sessions, held at once (each a dict entry)
COOKIE = "tessera_session"
LOGIN_PATH = "/ui/login"


@dataclass(frozen=True, slots=True)
class Party:
    """Who a session stands for: a registered node (``node``) or a key holder (None)."""

    keys: PublicKeys
    node: str | None

    @classmethod
    def of(cls, caller: Caller) -> Party:
        return cls(keys=caller.keys, node=caller.node)

    def caller(self, now: float) -> Caller:
        """The party as ``coordinator.access`` sees a signed caller (its rights are the same)."""
        return Caller(keys=self.keys, node=self.node, nonce="", at=now)

    @property
    def name(self) -> str:
        if self.node is not None:
            return f"node {self.node}"
        return f"AI provider {self.keys.short_fingerprint}"


class LoginRefused(Exception):
    """A login token that opens no session: ``reason`` says why (shown on the 403 page)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SessionsFull(Exception):
    """More links or sessions are held than ``MAX_PENDING``."""


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Sessions:
    """Login links and sessions, in memory, keyed by the hashes of their secrets."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._links: dict[str, tuple[Party, float]] = {}  # hash -> party, expires
        self._used: dict[str, float] = {}  # hashes of used links -> when they would expire
        self._sessions: dict[str, tuple[Party, float]] = {}
        self._lock = threading.Lock()

    def _prune(self, now: float) -> None:
        for table in (self._links, self._sessions):
            for key in [k for k, (_, end) in table.items() if end <= now]:
                del table[key]
        for key in [k for k, end in self._used.items() if end <= now]:
            del self._used[key]

    def link(self, party: Party) -> tuple[str, float]:
        """A fresh one-time token for ``party`` and when it expires."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = self._clock()
            self._prune(now)
            if len(self._links) >= MAX_PENDING:
                raise SessionsFull("too many login links are pending: try again in a few minutes")
            expires = now + LINK_SECONDS
            self._links[_hash(token)] = (party, expires)
        return token, expires

    def redeem(self, token: str) -> tuple[str, Party]:
        """Exchange a link's token for a new session id (once); LoginRefused saying why not."""
        key = _hash(token)
        with self._lock:
            now = self._clock()
            found = self._links.pop(key, None)
            if found is None:
                if key in self._used:
                    raise LoginRefused("this login link was used already: ask for a new one")
                raise LoginRefused("unknown or expired login link: ask for a new one")
            party, expires = found
            self._used[key] = expires
            self._prune(now)
            if expires <= now:
                raise LoginRefused("this login link has expired (they last 5 minutes)")
            if len(self._sessions) >= MAX_PENDING:
                raise LoginRefused("too many sessions are open: try again later")
            session = secrets.token_urlsafe(32)
            self._sessions[_hash(session)] = (party, now + SESSION_SECONDS)
        return session, party

    def party(self, session: str | None) -> Party | None:
        """The party a live session stands for (None: no such session, or it expired)."""
        if not session:
            return None
        with self._lock:
            found = self._sessions.get(_hash(session))
            if found is None:
                return None
            party, expires = found
            if expires <= self._clock():
                del self._sessions[_hash(session)]
                return None
        return party

    def end(self, session: str | None) -> None:
        if session:
            with self._lock:
                self._sessions.pop(_hash(session), None)
