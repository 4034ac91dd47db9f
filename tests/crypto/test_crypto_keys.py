"""Node identity keys: derivation, public form, key files."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.crypto.keys import (
    PUBLIC_KEYS_SIZE,
    SCRYPT_DEFAULT,
    NodeKeys,
    PublicKeys,
    ScryptParams,
    key_file_format,
)
from tessera.errors import ConfigError, RemoteProtocolError
from tessera.storage.keyfile import load_keys, save_keys

PASS = b"correct horse battery staple"
CHEAP = ScryptParams.cheapest()  # where many files are opened; the default is tested too


def _legacy(keys: NodeKeys, passphrase: bytes) -> bytes:
    """The form written before scrypt: PKCS#8 under PBES2/PBKDF2 (2048 iterations)."""
    return b"".join(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase),
        )
        for key in (keys._signing, keys._agreement)
    )


def _flip(data: bytes, at: int) -> bytes:
    """``data`` with the base64 character ``at`` of its body changed."""
    start = data.index(b"\n") + 1
    i = start + at if at >= 0 else data.rindex(b"\n-----END") + at
    return data[:i] + (b"A" if data[i : i + 1] != b"A" else b"B") + data[i + 1 :]


def _raw_private(keys: NodeKeys) -> tuple[bytes, bytes]:
    """The two raw private keys, read back through the public PEM form."""
    pem = keys.private_bytes(None)
    cut = pem.index(b"-----END PRIVATE KEY-----") + len(b"-----END PRIVATE KEY-----")
    signing = serialization.load_pem_private_key(pem[:cut], None)
    agreement = serialization.load_pem_private_key(pem[cut:], None)
    assert isinstance(signing, ed25519.Ed25519PrivateKey)
    assert isinstance(agreement, x25519.X25519PrivateKey)
    return signing.private_bytes_raw(), agreement.private_bytes_raw()


def test_generate_gives_fresh_keys() -> None:
    a, b = NodeKeys.generate(), NodeKeys.generate()
    assert a.public != b.public
    assert len(a.public.signing) == len(a.public.agreement) == 32
    assert len(a.public.to_bytes()) == PUBLIC_KEYS_SIZE


def test_from_seed_is_deterministic_and_seed_specific() -> None:
    assert NodeKeys.from_seed(b"node-1").public == NodeKeys.from_seed(b"node-1").public
    assert _raw_private(NodeKeys.from_seed(b"node-1")) == _raw_private(
        NodeKeys.from_seed(b"node-1")
    )
    assert NodeKeys.from_seed(b"node-1").public != NodeKeys.from_seed(b"node-2").public


def test_from_seed_follows_its_documented_derivation() -> None:
    seed = b"tessera-kat-seed"
    okm = HKDF(
        algorithm=hashes.SHA256(), length=64, salt=None, info=b"tessera/node-keys/v1/from-seed"
    ).derive(seed)
    assert _raw_private(NodeKeys.from_seed(seed)) == (okm[:32], okm[32:])


@pytest.mark.parametrize("seed", [b"", "text", None])
def test_from_seed_refuses_bad_seeds(seed: object) -> None:
    with pytest.raises(ValueError, match="seed"):
        NodeKeys.from_seed(seed)  # type: ignore[arg-type]


def test_constructor_checks_key_types() -> None:
    ed, x = ed25519.Ed25519PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    assert NodeKeys(ed, x).public.signing == ed.public_key().public_bytes_raw()
    with pytest.raises(TypeError):
        NodeKeys(x, ed)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        NodeKeys(ed, ed)  # type: ignore[arg-type]


def test_public_keys_wire_form_round_trips() -> None:
    public = NodeKeys.from_seed(b"x").public
    assert PublicKeys.from_bytes(public.to_bytes()) == public
    assert PublicKeys.from_bytes(bytearray(public.to_bytes())) == public
    assert hash(PublicKeys.from_bytes(public.to_bytes())) == hash(public)


@pytest.mark.parametrize("size", [0, 32, 63, 65])
def test_public_keys_from_bytes_refuses_wrong_sizes(size: int) -> None:
    with pytest.raises(RemoteProtocolError, match="64 bytes"):
        PublicKeys.from_bytes(bytes(size))


def test_public_keys_constructor_checks_sizes() -> None:
    with pytest.raises(ValueError, match="signing"):
        PublicKeys(signing=bytes(31), agreement=bytes(32))
    with pytest.raises(ValueError, match="agreement"):
        PublicKeys(signing=bytes(32), agreement=bytearray(32))  # type: ignore[arg-type]


def test_fingerprint_is_sha256_of_both_keys() -> None:
    public = NodeKeys.from_seed(b"x").public
    assert public.fingerprint == hashlib.sha256(public.signing + public.agreement).hexdigest()
    assert public.short_fingerprint == public.fingerprint[:16]
    assert public.short_fingerprint in repr(public)


def test_repr_shows_no_key_material() -> None:
    keys = NodeKeys.from_seed(b"x")
    text = repr(keys)
    assert keys.public.short_fingerprint in text
    for secret in _raw_private(keys):
        assert secret.hex() not in text
    assert keys.public.signing.hex() not in repr(keys.public)


@pytest.mark.parametrize("passphrase", [None, PASS])
def test_private_bytes_round_trip(passphrase: bytes | None) -> None:
    keys = NodeKeys.generate()
    data = keys.private_bytes(passphrase)
    if passphrase is None:
        assert data.count(b"BEGIN PRIVATE KEY") == 2 and key_file_format(data) == "clear"
    else:
        assert data.count(b"BEGIN TESSERA ENCRYPTED NODE KEYS") == 1
        assert key_file_format(data) == "scrypt"
        assert ScryptParams.of_key_file(data) == SCRYPT_DEFAULT
    back = NodeKeys.from_private_bytes(data, passphrase)
    assert back.public == keys.public
    assert _raw_private(back) == _raw_private(keys)


@settings(max_examples=20, deadline=None)
@given(passphrase=st.binary(min_size=1, max_size=100), seed=st.binary(min_size=1, max_size=8))
def test_sealed_key_file_round_trips_for_any_passphrase(passphrase: bytes, seed: bytes) -> None:
    keys = NodeKeys.from_seed(seed)
    data = keys.private_bytes(passphrase, kdf=CHEAP)
    assert ScryptParams.of_key_file(data) == CHEAP
    back = NodeKeys.from_private_bytes(data, passphrase)
    assert _raw_private(back) == _raw_private(keys)


def test_sealing_is_fresh_each_time() -> None:
    """A fresh salt and nonce each time: two files of one key under one passphrase differ."""
    keys = NodeKeys.from_seed(b"x")
    assert keys.private_bytes(PASS, kdf=CHEAP) != keys.private_bytes(PASS, kdf=CHEAP)


def test_legacy_pbkdf2_key_files_still_open() -> None:
    keys = NodeKeys.generate()
    data = _legacy(keys, PASS)
    assert key_file_format(data) == "pbkdf2"
    assert NodeKeys.from_private_bytes(data, PASS).public == keys.public
    with pytest.raises(ConfigError, match="wrong passphrase"):
        NodeKeys.from_private_bytes(data, b"not it")
    with pytest.raises(ConfigError, match="passphrase is required"):
        NodeKeys.from_private_bytes(data, None)


@pytest.mark.parametrize(
    "params",
    [
        ScryptParams(13, 8, 1),
        ScryptParams(14, 4, 1),
        ScryptParams(21, 8, 1),
        ScryptParams(14, 8, 17),
    ],
)
def test_scrypt_costs_outside_the_bounds_are_refused(params: ScryptParams) -> None:
    """Below the floor a file is too cheap to guard a key; above the ceiling, a memory bomb."""
    with pytest.raises(ConfigError, match="out of bounds"):
        NodeKeys.generate().private_bytes(PASS, kdf=params)
    good = NodeKeys.generate().private_bytes(PASS, kdf=CHEAP)
    header = bytearray(base64.b64decode(b"".join(good.splitlines()[1:-1])))
    header[2:5] = bytes([params.log2_n, params.r, params.p])
    body = base64.encodebytes(bytes(header))
    forged = good.split(b"\n", 1)[0] + b"\n" + body + good.splitlines(keepends=True)[-1]
    with pytest.raises(ConfigError, match="out of bounds"):
        NodeKeys.from_private_bytes(forged, PASS)


def test_encrypted_key_file_hides_the_keys() -> None:
    keys = NodeKeys.generate()
    data = keys.private_bytes(PASS)
    assert b"BEGIN PRIVATE KEY" not in data
    for secret in _raw_private(keys):
        assert secret not in data


@pytest.mark.parametrize("passphrase", [None, PASS])
def test_save_and_load(tmp_path: Path, passphrase: bytes | None) -> None:
    keys = NodeKeys.generate()
    path = tmp_path / "node.key"
    old_umask = os.umask(0)  # even a permissive umask must not widen the mode
    try:
        save_keys(keys, path, passphrase)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.key"]  # no temp file left
    assert load_keys(path, passphrase).public == keys.public
    assert load_keys(str(path), passphrase).public == keys.public


def test_save_refuses_to_replace_a_key_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    first, second = NodeKeys.generate(), NodeKeys.generate()
    save_keys(first, path)
    with pytest.raises(FileExistsError):
        save_keys(second, path)
    assert load_keys(path).public == first.public
    save_keys(second, path, PASS, overwrite=True)
    assert load_keys(path, PASS).public == second.public
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.key"]


def test_wrong_passphrase_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    save_keys(NodeKeys.generate(), path, PASS)
    with pytest.raises(ConfigError, match="wrong passphrase") as info:
        load_keys(path, b"not the passphrase")
    assert info.value.field == "passphrase"


def test_missing_or_needless_passphrase(tmp_path: Path) -> None:
    encrypted, plain = tmp_path / "enc.key", tmp_path / "plain.key"
    save_keys(NodeKeys.generate(), encrypted, PASS)
    save_keys(NodeKeys.generate(), plain)
    with pytest.raises(ConfigError, match="passphrase is required"):
        load_keys(encrypted)
    with pytest.raises(ConfigError, match="not encrypted"):
        load_keys(plain, PASS)


@pytest.mark.parametrize("passphrase", [b"", "text"])
def test_passphrase_must_be_non_empty_bytes(passphrase: object) -> None:
    keys = NodeKeys.generate()
    with pytest.raises(ConfigError, match="non-empty bytes"):
        keys.private_bytes(passphrase)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="non-empty bytes"):
        NodeKeys.from_private_bytes(keys.private_bytes(None), passphrase)  # type: ignore[arg-type]


def _without_line(data: bytes, i: int) -> bytes:
    lines = data.splitlines(keepends=True)
    return b"".join(lines[:i] + lines[i + 1 :])


def _swap_blocks(data: bytes) -> bytes:
    cut = data.index(b"-----END", 40)
    cut = data.index(b"-----\n", cut + 8) + len(b"-----\n")
    return data[cut:] + data[:cut]


def test_corrupt_or_foreign_key_files_are_refused() -> None:
    good = NodeKeys.generate().private_bytes(None)
    encrypted = _legacy(NodeKeys.generate(), PASS)
    half = encrypted[: encrypted.index(b"-----BEGIN", 10)]
    sealed = NodeKeys.generate().private_bytes(PASS, kdf=CHEAP)
    ec_key = NodeKeys.generate()._signing.private_bytes(  # an Ed25519 block twice
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cases: list[tuple[bytes, bytes | None, str]] = [
        (b"", None, "not a Tessera node key file"),
        (b"garbage", None, "not a Tessera node key file"),
        (good[: good.index(b"-----BEGIN", 10)], None, "not a Tessera node key file"),
        (good * 2, None, "not a Tessera node key file"),
        (good.replace(b"PRIVATE KEY", b"PUBLIC KEY"), None, "not a Tessera node key file"),
        (_swap_blocks(good), None, "an Ed25519 key, then an X25519 key"),
        (ec_key * 2, None, "an Ed25519 key, then an X25519 key"),
        (half + good[good.index(b"-----BEGIN", 10) :], PASS, "one key is encrypted"),
        (good.replace(b"\nM", b"\nA", 1), None, "corrupt"),
        (sealed + good, PASS, "not a Tessera node key file"),
        (sealed.replace(b"\n-----END", b"!\n-----END"), PASS, "not base64"),
        (_without_line(sealed, 1), PASS, "wrong size"),
        (_flip(sealed, 0), PASS, "unsupported key file version"),
    ]
    for data, passphrase, message in cases:
        with pytest.raises(ConfigError, match=message):
            NodeKeys.from_private_bytes(data, passphrase)


@pytest.mark.parametrize("at", [10, 30, -10], ids=["salt", "nonce", "tag"])
def test_corrupt_encrypted_file_reads_as_wrong_passphrase(at: int) -> None:
    """The header is associated data: a changed salt or nonce fails as a changed tag does."""
    data = NodeKeys.generate().private_bytes(PASS, kdf=CHEAP)
    with pytest.raises(ConfigError, match="wrong passphrase, or the key file is corrupt"):
        NodeKeys.from_private_bytes(_flip(data, at), PASS)
    legacy = _legacy(NodeKeys.generate(), PASS)
    with pytest.raises(ConfigError, match="wrong passphrase, or the key file is corrupt"):
        NodeKeys.from_private_bytes(legacy.replace(b"\nM", b"\nA", 1), PASS)


def test_load_refuses_huge_files(tmp_path: Path) -> None:
    path = tmp_path / "huge.key"
    path.write_bytes(b"x" * (64 * 1024))
    with pytest.raises(ConfigError, match="too large"):
        load_keys(path)


def test_draw_is_keyed_deterministic_and_context_bound() -> None:
    a, b = NodeKeys.from_seed(b"draw-a"), NodeKeys.from_seed(b"draw-b")
    assert a.draw(b"ctx") == a.draw(b"ctx") and len(a.draw(b"ctx")) == 32
    assert a.draw(b"ctx") != b.draw(b"ctx")  # another key: another draw
    assert a.draw(b"ctx") != a.draw(b"ctx2")
    with pytest.raises(TypeError):
        a.draw("ctx")  # type: ignore[arg-type]


# -- the cache of shared secrets ------------------------------------------------------------


def _peers(n: int) -> list[bytes]:
    return [NodeKeys.from_seed(b"peer-%d" % i).public.agreement for i in range(n)]


def test_shared_secrets_are_cached_and_agree_both_ways() -> None:
    a, b = NodeKeys.from_seed(b"cache-a"), NodeKeys.from_seed(b"cache-b")
    assert a.cached_peers == 0
    first = a._exchange(b.public.agreement)
    assert first == b._exchange(a.public.agreement)  # static-static: both sides agree
    assert a.cached_peers == 1
    assert a._exchange(b.public.agreement) is first  # a hit, not a fresh exchange
    a.forget_shared()
    assert a.cached_peers == 0
    assert a._exchange(b.public.agreement) == first


def test_the_cache_is_bounded_and_drops_the_least_recently_used() -> None:
    keys = NodeKeys.from_seed(b"cache-bounded")
    keys = NodeKeys(keys._signing, keys._agreement, shared_cache_size=3)
    p = _peers(5)
    for peer in p[:3]:
        keys._exchange(peer)
    keys._exchange(p[0])  # now the most recent
    keys._exchange(p[3])  # evicts p[1], the least recently used
    assert keys.cached_peers == 3
    assert set(keys._shared) == {p[0], p[2], p[3]}
    keys._exchange(p[4])
    assert set(keys._shared) == {p[0], p[3], p[4]}


def test_the_cache_can_be_turned_off_and_never_holds_failures() -> None:
    keys = NodeKeys.from_seed(b"cache-off")
    off = NodeKeys(keys._signing, keys._agreement, shared_cache_size=0)
    peer = _peers(1)[0]
    assert off._exchange(peer) == keys._exchange(peer)
    assert off.cached_peers == 0
    with pytest.raises(ValueError, match="shared key"):
        keys._exchange(bytes(32))  # a low-order point: no secret, nothing cached
    assert keys.cached_peers == 1
    with pytest.raises(ValueError, match="shared_cache_size"):
        NodeKeys(keys._signing, keys._agreement, shared_cache_size=-1)
    with pytest.raises(TypeError, match="shared_cache_size"):
        NodeKeys(keys._signing, keys._agreement, shared_cache_size=True)
