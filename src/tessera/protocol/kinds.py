"""Kinds of signed documents shared by the coordinator service and the node agent.

A leaf module (no imports): the node agent reads it without loading the
coordinator service and its database and web stack.
"""

from __future__ import annotations

#: A node's signed registration: its id, public keys and organisation.
REGISTRATION_KIND = "registration"
