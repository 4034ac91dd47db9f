"""The local CA: real certificates, served over real TLS sockets."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import stat
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID
from fastapi import FastAPI

from tessera.errors import ConfigError
from tessera.runtime.transport.serve import serve_in_thread
from tessera.runtime.transport.tls import (
    CertPaths,
    Pki,
    client_ssl_context,
    issue_certificate,
    make_ca,
    make_local_pki,
    server_ssl_kwargs,
)

NOW = dt.datetime(2026, 1, 15, 12, 0, tzinfo=dt.UTC)


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict[str, str]:
        return {"pong": "ok"}

    return app


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_local_pki(tmp_path_factory.mktemp("pki"))


def test_local_pki_writes_ca_and_service_files(pki: Pki) -> None:
    names = sorted(p.name for p in pki.folder.iterdir())
    assert names == [
        "ca-key.pem",
        "ca.pem",
        "coordinator-key.pem",
        "coordinator.pem",
        "provider-key.pem",
        "provider.pem",
    ]
    assert set(pki.services) == {"coordinator", "provider"}
    for paths in [pki.ca, *pki.services.values()]:
        assert stat.S_IMODE(paths.key.stat().st_mode) == 0o600
        assert stat.S_IMODE(paths.cert.stat().st_mode) == 0o644


def test_ca_extensions(pki: Pki) -> None:
    ca = _load(pki.ca.cert)
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert ca.subject == ca.issuer


def test_service_certificate_extensions(pki: Pki) -> None:
    ca, leaf = _load(pki.ca.cert), _load(pki.services["coordinator"].cert)
    leaf.verify_directly_issued_by(ca)
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest


def test_chain_passes_a_strict_rfc5280_verifier(pki: Pki) -> None:
    """cryptography's own (webpki-style) verifier, stricter than OpenSSL's."""
    ca, leaf = _load(pki.ca.cert), _load(pki.services["provider"].cert)
    builder = verification.PolicyBuilder().store(verification.Store([ca]))
    builder = builder.time(dt.datetime.now(dt.UTC))
    for name in (
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ):
        chain = builder.build_server_verifier(name).verify(leaf, [])
        assert chain[-1] == ca


def test_https_round_trip_with_the_local_ca(pki: Pki) -> None:
    with serve_in_thread(_app(), ssl=pki.services["coordinator"]) as server:
        assert server.url.startswith("https://127.0.0.1:")
        with httpx.Client(verify=client_ssl_context(pki.ca.cert)) as client:
            response = client.get(f"{server.url}/ping")
        assert response.status_code == 200
        assert response.json() == {"pong": "ok"}


def test_client_trusting_another_ca_is_refused(pki: Pki, tmp_path: Path) -> None:
    other_ca = make_ca(tmp_path / "other")
    with (
        serve_in_thread(_app(), ssl=pki.services["coordinator"]) as server,
        httpx.Client(verify=client_ssl_context(other_ca.cert)) as client,
        pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        client.get(f"{server.url}/ping")


def test_client_with_system_trust_only_is_refused(pki: Pki) -> None:
    with (
        serve_in_thread(_app(), ssl=pki.services["coordinator"]) as server,
        httpx.Client(verify=ssl.create_default_context()) as client,
        pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        client.get(f"{server.url}/ping")


def test_certificate_for_another_host_is_refused(pki: Pki, tmp_path: Path) -> None:
    wrong = issue_certificate(tmp_path, ca=pki.ca, name="elsewhere", hosts=["example.org"])
    with (
        serve_in_thread(_app(), ssl=wrong) as server,
        httpx.Client(verify=client_ssl_context(pki.ca.cert)) as client,
        pytest.raises(httpx.ConnectError, match="mismatch"),
    ):
        client.get(f"{server.url}/ping")


def test_new_folder_is_private(tmp_path: Path) -> None:
    pki = make_local_pki(tmp_path / "a" / "b")
    assert stat.S_IMODE(pki.folder.stat().st_mode) == 0o700


def test_existing_files_are_kept_unless_overwrite(tmp_path: Path) -> None:
    first = make_local_pki(tmp_path, services=["coordinator"])
    before = first.ca.cert.read_bytes()
    with pytest.raises(ConfigError, match="already exist") as info:
        make_local_pki(tmp_path, services=["coordinator"])
    assert info.value.field == "certs.folder"
    assert first.ca.cert.read_bytes() == before
    again = make_local_pki(tmp_path, services=["coordinator"], overwrite=True)
    assert again.ca.cert.read_bytes() != before
    assert stat.S_IMODE(again.ca.key.stat().st_mode) == 0o600


def test_refusal_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "provider.pem").write_text("keep me")
    with pytest.raises(ConfigError, match=r"provider\.pem already exist"):
        make_local_pki(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["provider.pem"]


def test_unwritable_folder_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="cannot create") as info:
        make_local_pki(blocker / "pki")
    assert info.value.field == "certs.folder"


@pytest.mark.parametrize(
    ("which", "content", "message"),
    [
        ("cert", b"garbage", "not a PEM certificate"),
        ("key", b"garbage", "not an unencrypted PEM private key"),
    ],
)
def test_malformed_ca_files_are_config_errors(
    tmp_path: Path, which: str, content: bytes, message: str
) -> None:
    ca = make_ca(tmp_path)
    getattr(ca, which).write_bytes(content)
    with pytest.raises(ConfigError, match=message) as info:
        issue_certificate(tmp_path, ca=ca, name="coordinator")
    assert info.value.field == "certs.ca"


def test_mismatched_or_non_ca_files_are_refused(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "a")
    other = make_ca(tmp_path / "b")
    with pytest.raises(ConfigError, match="does not belong"):
        issue_certificate(tmp_path, ca=CertPaths(ca.cert, other.key), name="x")
    leaf = issue_certificate(tmp_path, ca=ca, name="leaf")
    with pytest.raises(ConfigError, match="not a CA"):
        issue_certificate(tmp_path, ca=leaf, name="x")
    with pytest.raises(ConfigError, match="cannot read"):
        issue_certificate(tmp_path, ca=CertPaths(tmp_path / "no.pem", ca.key), name="x")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"services": ["../escape"]}, "certs.services"),
        ({"services": ["ca"]}, "certs.services"),
        ({"services": ["a", "a"]}, "certs.services"),
        ({"hosts": []}, "certs.hosts"),
        ({"hosts": ["bad host"]}, "certs.hosts"),
        ({"hosts": ["-leading.example"]}, "certs.hosts"),
        ({"days": 0}, "certs.days"),
        ({"days": 100_000}, "certs.days"),
    ],
)
def test_bad_arguments_are_config_errors(
    tmp_path: Path, kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(ConfigError) as info:
        make_local_pki(tmp_path / "pki", **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert not (tmp_path / "pki").exists()


def test_hosts_mix_ip_addresses_and_names(tmp_path: Path) -> None:
    pki = make_local_pki(tmp_path, services="node", hosts=["::1", "Node.Example", "10.0.0.7"])
    san = (
        _load(pki.services["node"].cert)
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("10.0.0.7"),
    ]
    assert san.get_values_for_type(x509.DNSName) == ["node.example"]


def test_validity_follows_now_and_never_outlasts_the_ca(tmp_path: Path) -> None:
    ca = make_ca(tmp_path, days=2, now=NOW)
    leaf = issue_certificate(tmp_path, ca=ca, name="svc", days=30, now=NOW)
    ca_cert, leaf_cert = _load(ca.cert), _load(leaf.cert)
    assert ca_cert.not_valid_before_utc == NOW - dt.timedelta(minutes=5)
    assert ca_cert.not_valid_after_utc == NOW + dt.timedelta(days=2)
    assert leaf_cert.not_valid_after_utc == ca_cert.not_valid_after_utc
    later = NOW + dt.timedelta(days=3)
    with pytest.raises(ConfigError, match="expired"):
        issue_certificate(tmp_path, ca=ca, name="late", now=later)


def test_ssl_helpers(pki: Pki, tmp_path: Path) -> None:
    cert = pki.services["coordinator"]
    assert server_ssl_kwargs(cert) == {"ssl_certfile": str(cert.cert), "ssl_keyfile": str(cert.key)}
    with pytest.raises(ConfigError, match="does not exist"):
        server_ssl_kwargs(CertPaths(tmp_path / "missing.pem", cert.key))
    context = client_ssl_context(pki.ca.cert)
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert len(context.get_ca_certs()) == 1
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    for bad in (junk, tmp_path / "absent.pem"):
        with pytest.raises(ConfigError) as info:
            client_ssl_context(bad)
        assert info.value.field == "tls.ca"
