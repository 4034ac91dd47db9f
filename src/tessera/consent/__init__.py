"""Consent: signed, revocable receipts for one job, and the data provider's release gate.

Pure code: no I/O, no clock (``now`` is always passed in). A user's node
signs a receipt with ``grant_consent`` and may withdraw it with
``revoke_consent``; every reader checks it with ``check_consent``. A data
provider releases a user's records only through ``RecordsGate``, which
binds the request to the node key enrolled for that user and keeps the
revocations and burnt nonces in a ``GateState``: ``MemoryGateState`` here,
or the durable ``tessera.data_provider.gate_state.SqlGateState`` (the one module that
does I/O: a database, imported on its own so this package stays light).
"""

from tessera.consent._errors import ConsentError, ReplayedRequest
from tessera.consent._gate import (
    ATTESTATION_KIND,
    ATTESTATION_REQUEST_KIND,
    REQUEST_KIND,
    REQUEST_WINDOW,
    Enrolment,
    GateState,
    MemoryGateState,
    RecordsGate,
    RecordsRequest,
    Release,
    check_attestation,
    sign_attestation_request,
    sign_records_request,
)
from tessera.consent._receipts import (
    CLOCK_SKEW,
    CONSENT_KIND,
    REVOCATION_KIND,
    ConsentTerms,
    check_consent,
    grant_consent,
    revoke_consent,
)

__all__ = [
    "ATTESTATION_KIND",
    "ATTESTATION_REQUEST_KIND",
    "CLOCK_SKEW",
    "CONSENT_KIND",
    "REQUEST_KIND",
    "REQUEST_WINDOW",
    "REVOCATION_KIND",
    "ConsentError",
    "ConsentTerms",
    "Enrolment",
    "GateState",
    "MemoryGateState",
    "RecordsGate",
    "RecordsRequest",
    "Release",
    "ReplayedRequest",
    "check_attestation",
    "check_consent",
    "grant_consent",
    "revoke_consent",
    "sign_attestation_request",
    "sign_records_request",
]
