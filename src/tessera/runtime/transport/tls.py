"""A throwaway local certificate authority, so services talk TLS from day one.

Theory of operation: ``make_local_pki`` writes one CA (``ca.pem`` and
``ca-key.pem``) and, per service, a certificate signed by it
(``NAME.pem``, ``NAME-key.pem``). Clients trust that CA and nothing else
(``client_ssl_context``), so a certificate from any other authority, or one
issued for another host name, is refused. It is meant for local and test
deployments; a real deployment brings certificates from its own authority and
passes the same ``CertPaths`` around.

Choices, and why:

- ECDSA P-256 keys and SHA-256 signatures: every OpenSSL that Python's ``ssl``
  links accepts them for TLS servers and clients (Ed25519 server certificates
  are not universally supported by clients).
- Extensions follow what ``ssl.VERIFY_X509_STRICT`` (the default from
  Python 3.13) demands: key usages on both, subject and authority key
  identifiers, a critical ``BasicConstraints`` with ``path_length=0`` so the CA
  can sign leaf certificates only.
- Private keys are written unencrypted with mode 0600 (the folder is created
  0700): a throwaway CA has nobody to type a passphrase. Every file is written
  to a temporary name and renamed, so a crash never leaves half a PEM.
- ``now`` can be passed in for reproducible tests; validity starts five
  minutes before it to tolerate clock skew between machines.

Every problem a user can fix (unwritable folder, existing files, malformed or
mismatched PEM, bad host names) is a ``ConfigError`` naming what to change.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import ssl
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tessera.errors import ConfigError

__all__ = [
    "DEFAULT_HOSTS",
    "CertPaths",
    "Pki",
    "client_ssl_context",
    "issue_certificate",
    "make_ca",
    "make_local_pki",
    "server_ssl_kwargs",
]

DEFAULT_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost")
_MAX_DAYS = 3650
_SKEW = dt.timedelta(minutes=5)
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True, slots=True)
class CertPaths:
    """Where one certificate and its private key live (both PEM)."""

    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class Pki:
    """A local CA and the certificates it issued, by service name."""

    folder: Path
    ca: CertPaths
    services: Mapping[str, CertPaths]


def make_ca(
    folder: Path,
    *,
    name: str = "Tessera local CA",
    days: int = 30,
    overwrite: bool = False,
    now: dt.datetime | None = None,
) -> CertPaths:
    """Create a self-signed CA in ``folder`` (``ca.pem``, ``ca-key.pem``)."""
    paths = CertPaths(folder / "ca.pem", folder / "ca-key.pem")
    _prepare(folder, [paths], overwrite=overwrite)
    start, end = _validity(now, days)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _common_name(name))])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    _write_pair(paths, cert, key)
    return paths


def issue_certificate(
    folder: Path,
    *,
    ca: CertPaths,
    name: str,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = 30,
    overwrite: bool = False,
    now: dt.datetime | None = None,
) -> CertPaths:
    """Issue ``NAME.pem`` / ``NAME-key.pem`` for ``hosts``, signed by ``ca``.

    The certificate serves TLS (serverAuth) and may also authenticate a client
    (clientAuth), so the same file can later be used for mutual TLS. Its
    validity never outlasts the CA's.
    """
    _check_file_name(name)
    names = _subject_alt_names(hosts)
    ca_cert, ca_key = _load_ca(ca)
    paths = CertPaths(folder / f"{name}.pem", folder / f"{name}-key.pem")
    _prepare(folder, [paths], overwrite=overwrite)
    start, end = _validity(now, days)
    if ca_cert.not_valid_after_utc <= start:
        raise ConfigError("certs.ca", f"{ca.cert} expired on {ca_cert.not_valid_after_utc:%F}")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(start, ca_cert.not_valid_before_utc))
        .not_valid_after(min(end, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_id(ca_cert, ca_key), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_pair(paths, cert, key)
    return paths


def make_local_pki(
    folder: Path,
    *,
    services: Sequence[str] = ("coordinator", "provider"),
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = 30,
    overwrite: bool = False,
    now: dt.datetime | None = None,
) -> Pki:
    """One call for ``tessera certs``: a CA plus one certificate per service.

    Everything is checked before the first file is written, so a refusal
    (existing files, bad names or hosts) leaves the folder as it was.
    """
    if isinstance(services, str):
        services = (services,)
    for service in services:
        _check_file_name(service)
    if len(set(services)) != len(services):
        raise ConfigError("certs.services", f"service names repeat: {list(services)}")
    _subject_alt_names(hosts)
    _validity(now, days)
    planned = [CertPaths(folder / "ca.pem", folder / "ca-key.pem")]
    planned += [CertPaths(folder / f"{s}.pem", folder / f"{s}-key.pem") for s in services]
    _prepare(folder, planned, overwrite=overwrite)
    ca = make_ca(folder, days=days, overwrite=True, now=now)
    issued = {
        s: issue_certificate(folder, ca=ca, name=s, hosts=hosts, days=days, overwrite=True, now=now)
        for s in services
    }
    return Pki(folder=folder, ca=ca, services=issued)


def server_ssl_kwargs(cert: CertPaths) -> dict[str, str]:
    """The keyword arguments that make ``uvicorn.Config``/``uvicorn.run`` serve TLS."""
    for path in (cert.cert, cert.key):
        if not path.is_file():
            raise ConfigError("tls.cert", f"{path} does not exist; run `tessera certs` first")
    return {"ssl_certfile": str(cert.cert), "ssl_keyfile": str(cert.key)}


def client_ssl_context(ca_file: Path | str) -> ssl.SSLContext:
    """A client context that trusts ``ca_file`` only and checks the host name.

    Use as ``httpx.Client(verify=client_ssl_context(pki.ca.cert))``. System
    authorities are deliberately not loaded: a certificate from any other CA
    is refused. ``VERIFY_X509_STRICT`` is set so that certificates which a
    newer Python would reject fail here too.
    """
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    except OSError as exc:  # includes ssl.SSLError and FileNotFoundError
        reason = exc.strerror or str(exc)
        raise ConfigError("tls.ca", f"cannot load CA certificate {ca_file}: {reason}") from exc
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _validity(now: dt.datetime | None, days: int) -> tuple[dt.datetime, dt.datetime]:
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= _MAX_DAYS:
        raise ConfigError(
            "certs.days", f"must be a whole number from 1 to {_MAX_DAYS}, got {days!r}"
        )
    if now is None:
        now = dt.datetime.now(dt.UTC)
    elif now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now - _SKEW, now + dt.timedelta(days=days)


def _common_name(name: str) -> str:
    if not 1 <= len(name) <= 64:
        raise ConfigError("certs.name", f"CA name must have 1 to 64 characters, got {name!r}")
    return name


def _check_file_name(name: str) -> None:
    if not _FILE_NAME.match(name) or name == "ca":
        raise ConfigError(
            "certs.services",
            f"{name!r} is not a usable certificate name: use letters, digits, '-' or '_' "
            "(at most 64, not 'ca')",
        )


def _subject_alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    if isinstance(hosts, str):
        hosts = (hosts,)
    if not hosts:
        raise ConfigError("certs.hosts", "give at least one host name or IP address")
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        labels = host.split(".")
        if len(host) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
            raise ConfigError("certs.hosts", f"{host!r} is neither an IP address nor a DNS name")
        names.append(x509.DNSName(host.lower()))
    return names


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _authority_key_id(
    ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _load_ca(ca: CertPaths) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Read the CA back, refusing anything it could not sign with."""
    cert_pem, key_pem = _read(ca.cert), _read(ca.key)
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise ConfigError("certs.ca", f"{ca.cert} is not a PEM certificate") from exc
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError("certs.ca", f"{ca.key} is not an unencrypted PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError("certs.ca", f"{ca.key} is not an elliptic-curve key")
    if key.public_key() != cert.public_key():
        raise ConfigError("certs.ca", f"{ca.key} does not belong to {ca.cert}")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise ConfigError("certs.ca", f"{ca.cert} is not a CA certificate")
    return cert, key


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError("certs.ca", f"cannot read {path}: {exc.strerror or exc}") from exc


def _prepare(folder: Path, planned: Sequence[CertPaths], *, overwrite: bool) -> None:
    """Create ``folder`` (0700) and refuse to replace files unless asked to."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("certs.folder", f"cannot create {folder}: {exc.strerror or exc}") from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError("certs.folder", f"{folder} is not writable")
    if overwrite:
        return
    existing = [p.name for c in planned for p in (c.cert, c.key) if p.exists()]
    if existing:
        raise ConfigError(
            "certs.folder",
            f"{', '.join(existing)} already exist in {folder}; pass overwrite=True to replace them",
        )


def _write_pair(paths: CertPaths, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomic(paths.key, key_pem, mode=0o600)
    _write_atomic(paths.cert, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def _write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    """Write to a private temporary file, then rename it over ``path``."""
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise ConfigError("certs.folder", f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
