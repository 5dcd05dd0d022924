"""Server TLS and mutual TLS (issue 12, service/pointsd/service/tls.py):
calls over TLS with a bearer token, a plaintext client refused; client
certificates mapped to callers by subject (their roles and tenants apply,
an unmapped one falls back to the bearer token), a client certificate of
another CA, an expired one or none refused at the handshake; bad files
refused at start with one line; reload (in process and by SIGHUP to a
`pointsd serve` child, with and without workers) swaps the server
certificate for new connections and a bad file keeps the old one.

Certificates are made here with `cryptography`. Their validity is relative
to the system time, not the service clock: OpenSSL checks peers against the
system time. They are valid from a day before to a day after now, so the
date and time of day do not matter.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
import redis as sync_redis
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.api.points.v1 import points_pb2_grpc as pb_grpc
from pointsd.service.app import App
from pointsd.service.config import ConfigError, Settings
from pointsd.service.server import start_server
from pointsd.service.startup import ExitCode
from pointsd.service.tls import ServerTls, load_callers
from scripts.procs import ROOT, ServerProcess, free_port, run_cli
from tests import clock as test_clock
from tests.clock import system_now
from tests.conftest import Api, ApiFactory, Servers, new_tenant, rule_book, settings_for
from tests.helpers import child_env, ev, rules_file, tenant_keys

# -- certificates ---------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM bytes and as files."""

    pem: bytes
    key_pem: bytes
    cert_file: Path
    key_file: Path
    subject: str  # RFC 4514/2253 form, as the callers file names it


@dataclass(frozen=True)
class Pki:
    ca: Issued
    wrong_ca: Issued  # a second CA the server does not trust for clients
    server: Issued  # by `ca`, for 127.0.0.1 and localhost
    server_b: Issued  # by `wrong_ca`: what a reload swaps in
    gateway: Issued  # CN=im-gateway-1,O=Acme by `ca`
    ops: Issued  # CN=ops-console,O=Acme by `ca`
    unicode: Issued  # a subject beyond ASCII, by `ca`
    stranger: Issued  # valid, by `ca`, in no callers file
    impostor: Issued  # the gateway's subject, by `wrong_ca`
    expired: Issued  # the gateway's subject, by `ca`, expired an hour ago
    expired_server: Issued  # by `ca`, expired an hour ago


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _issue(
    folder: Path,
    file: str,
    cn: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    *,
    server: bool = False,
    expired: bool = False,
) -> tuple[Issued, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = system_now()  # OpenSSL checks certificates against the system time
    start, end = (
        (now - dt.timedelta(days=2), now - dt.timedelta(hours=1))
        if expired
        else (now - dt.timedelta(days=1), now + dt.timedelta(days=1))
    )
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_cert.subject if issuer_cert else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = builder.sign(issuer_key, hashes.SHA256())
    pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert_file, key_file = folder / f"{file}.pem", folder / f"{file}.key"
    cert_file.write_bytes(pem)
    key_file.write_bytes(key_pem)
    issued = Issued(pem, key_pem, cert_file, key_file, cert.subject.rfc4514_string())
    return issued, cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, ca_cert, ca_key = _issue(folder, "ca", "Points Test CA")
    wrong, wrong_cert, wrong_key = _issue(folder, "wrong-ca", "Another CA")
    by_ca, by_wrong = (ca_cert, ca_key), (wrong_cert, wrong_key)

    def issue(file: str, cn: str, by: Any = by_ca, **kw: bool) -> Issued:
        return _issue(folder, file, cn, by, **kw)[0]

    return Pki(
        ca=ca,
        wrong_ca=wrong,
        server=issue("server", "pointsd", server=True),
        server_b=issue("server-b", "pointsd-b", by_wrong, server=True),
        gateway=issue("gateway", "im-gateway-1"),
        ops=issue("ops", "ops-console"),
        unicode=issue("unicode", "网关-2, 北京"),
        stranger=issue("stranger", "stranger"),
        impostor=issue("impostor", "im-gateway-1", by_wrong),
        expired=issue("expired", "im-gateway-1", expired=True),
        expired_server=issue("expired-server", "pointsd", server=True, expired=True),
    )


# -- helpers --------------------------------------------------------------------

# A fresh connection per channel: channels with the same target and
# credentials could otherwise share one from gRPC's global pool.
_OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def tls_credentials(
    root: bytes, client: Issued | None = None, token: str | None = None
) -> grpc.ChannelCredentials:
    creds = grpc.ssl_channel_credentials(
        root, client.key_pem if client else None, client.pem if client else None
    )
    if token is None:
        return creds
    # gRPC's own call credentials: `authorization: Bearer <token>`, TLS only.
    return grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))


def tls_stub(
    api: Api, root: bytes, client: Issued | None = None, token: str | None = None
) -> tuple[grpc.aio.Channel, pb_grpc.PointsServiceStub]:
    channel = grpc.aio.secure_channel(
        api.target, tls_credentials(root, client, token), options=_OWN_CONNECTION
    )
    return channel, pb_grpc.PointsServiceStub(channel)


async def code_of(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def tls_settings(server: Issued, **extra: Any) -> dict[str, Any]:
    return {"tls_cert_file": str(server.cert_file), "tls_key_file": str(server.key_file), **extra}


def mtls_settings(pki: Pki, callers: Path, server: Issued | None = None) -> dict[str, Any]:
    return tls_settings(
        server or pki.server,
        tls_client_ca_file=str(pki.ca.cert_file),
        tls_client_auth="require",
        tls_client_callers_file=str(callers),
    )


def write_callers(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"callers": entries}, allow_unicode=True))
    return path


def copy_pair(source: Issued, folder: Path, name: str = "live") -> Issued:
    """A server certificate in files of its own, for tests that change them."""
    cert_file, key_file = folder / f"{name}.pem", folder / f"{name}.key"
    cert_file.write_bytes(source.pem)
    key_file.write_bytes(source.key_pem)
    return Issued(source.pem, source.key_pem, cert_file, key_file, source.subject)


def swap_in(live: Issued, source: Issued) -> None:
    live.cert_file.write_bytes(source.pem)
    live.key_file.write_bytes(source.key_pem)


@pytest.fixture
def callers(pki: Pki, tmp_path: Path, tenant: str) -> Path:
    return write_callers(
        tmp_path / "callers.yaml",
        [
            {"subject": pki.gateway.subject, "name": "im-gateway-1", "roles": ["ingest"],
             "tenants": [tenant]},
            {"subject": pki.ops.subject, "name": "ops-console", "roles": ["admin"],
             "tenants": "all"},
            # As a person writes it: the characters, not gRPC's \XX escapes.
            {"subject": pki.unicode.subject, "name": "gateway-bj", "roles": "read",
             "tenants": [tenant]},
        ],
    )  # fmt: skip


# -- TLS with bearer tokens -------------------------------------------------------


async def test_tls_port_serves_calls_that_carry_a_token(
    make_api: ApiFactory, pki: Pki, tenant: str
) -> None:
    api = await make_api([tenant], **tls_settings(pki.server))
    assert isinstance(api.app.tls, ServerTls)
    assert api.app.gate.certificates is None  # no client CA: tokens alone
    channel, stub = tls_stub(api, pki.ca.pem, token=api.token)
    bare, bare_stub = tls_stub(api, pki.ca.pem)
    try:
        result = await stub.RecordActivity(ev(tenant, "ann", "login"))
        assert result.outcome == pb.AWARDED
        balance = await stub.GetBalance(pb.GetBalanceRequest(tenant_id=tenant, user_id="ann"))
        assert balance.available == result.points > 0
        # TLS is no credential by itself.
        refused = bare_stub.GetBalance(pb.GetBalanceRequest(tenant_id=tenant, user_id="ann"))
        assert await code_of(refused) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await channel.close()
        await bare.close()


async def test_plaintext_or_untrusting_clients_cannot_call_a_tls_port(
    make_api: ApiFactory, pki: Pki, tenant: str, rds: sync_redis.Redis
) -> None:
    api = await make_api([tenant], **tls_settings(pki.server))
    plain = grpc.aio.insecure_channel(api.target, options=_OWN_CONNECTION)
    # A client that does not trust the server's CA refuses the server.
    untrusting, untrusting_stub = tls_stub(api, pki.wrong_ca.pem, token=api.token)
    try:
        call = pb_grpc.PointsServiceStub(plain).RecordActivity(
            ev(tenant, "ann", "login"), metadata=(("authorization", f"Bearer {api.token}"),),
            timeout=10,
        )  # fmt: skip
        assert await code_of(call) == grpc.StatusCode.UNAVAILABLE
        call = untrusting_stub.RecordActivity(ev(tenant, "ann", "login"), timeout=10)
        assert await code_of(call) == grpc.StatusCode.UNAVAILABLE
        assert tenant_keys(rds, tenant) == []
    finally:
        await plain.close()
        await untrusting.close()


# -- client certificates ------------------------------------------------------------


async def test_a_mapped_client_certificate_is_its_caller_without_a_token(
    make_api: ApiFactory, pki: Pki, tenant: str, callers: Path, sql: Callable[..., list[Any]]
) -> None:
    api = await make_api([tenant], **mtls_settings(pki, callers))
    gateway, stub = tls_stub(api, pki.ca.pem, pki.gateway)
    ops = grpc.aio.secure_channel(
        api.target, tls_credentials(pki.ca.pem, pki.ops), options=_OWN_CONNECTION
    )
    bj, bj_stub = tls_stub(api, pki.ca.pem, pki.unicode)
    # A token of every role beside the certificate: the certificate decides.
    both, both_stub = tls_stub(api, pki.ca.pem, pki.gateway, token=api.token)
    other = new_tenant()
    try:
        result = await stub.RecordActivity(ev(tenant, "ann", "login"))
        assert result.outcome == pb.AWARDED
        streamed = [r async for r in stub.StreamActivities(iter([ev(tenant, "bob", "login")]))]
        assert [r.outcome for r in streamed] == [pb.AWARDED]
        # Its roles and its tenants, nothing more.
        read = pb.GetBalanceRequest(tenant_id=tenant, user_id="ann")
        for call in (stub.GetBalance(read), both_stub.GetBalance(read)):
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await call
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "lacks role 'read'" in (denied.value.details() or "")
        foreign = stub.RecordActivity(ev(other, "ann", "login"))
        assert await code_of(foreign) == grpc.StatusCode.PERMISSION_DENIED
        # The subject beyond ASCII matches as written in the file.
        balance = await bj_stub.GetBalance(read)
        assert balance.available == result.points
        # The audit trail names the certificate.
        missing = pb_grpc.AdminServiceStub(ops).DisableItem(
            pb.DisableItemRequest(tenant_id=tenant, item_id="no-such-item")
        )
        assert await code_of(missing) == grpc.StatusCode.NOT_FOUND
        rows = sql(
            "SELECT caller, credential FROM audit_log WHERE tenant_id = :t AND rpc = 'DisableItem'",
            t=tenant,
        )
        assert [tuple(r) for r in rows] == [("ops-console", "cert CN=ops-console,O=Acme")]
    finally:
        for channel in (gateway, ops, bj, both):
            await channel.close()


async def test_an_unmapped_client_certificate_needs_a_bearer_token(
    make_api: ApiFactory, pki: Pki, tenant: str, callers: Path
) -> None:
    api = await make_api([tenant], **mtls_settings(pki, callers))
    bare, bare_stub = tls_stub(api, pki.ca.pem, pki.stranger)
    with_token, token_stub = tls_stub(api, pki.ca.pem, pki.stranger, token=api.token)
    read = pb.GetBalanceRequest(tenant_id=tenant, user_id="ann")
    try:
        assert await code_of(bare_stub.GetBalance(read)) == grpc.StatusCode.UNAUTHENTICATED
        assert await code_of(token_stub.GetBalance(read)) == grpc.StatusCode.OK
    finally:
        await bare.close()
        await with_token.close()


@pytest.mark.parametrize("client", ["impostor", "expired", "none"])
async def test_a_client_certificate_of_another_ca_expired_or_missing_is_refused(
    make_api: ApiFactory,
    pki: Pki,
    tenant: str,
    callers: Path,
    rds: sync_redis.Redis,
    client: str,
) -> None:
    """Refused at the handshake, whatever the token: UNAVAILABLE, nothing stored.
    The impostor and the expired certificate carry the gateway's mapped subject."""
    api = await make_api([tenant], **mtls_settings(pki, callers))
    presented = None if client == "none" else getattr(pki, client)
    channel, stub = tls_stub(api, pki.ca.pem, presented, token=api.token)
    try:
        call = stub.RecordActivity(ev(tenant, "ann", "login"), timeout=10)
        assert await code_of(call) == grpc.StatusCode.UNAVAILABLE
        assert tenant_keys(rds, tenant) == []
    finally:
        await channel.close()


def test_a_subject_beyond_ascii_may_be_written_as_characters_or_as_openssl_escapes(
    tmp_path: Path,
) -> None:
    """gRPC reports bytes beyond ASCII as `\\XX` (OpenSSL's RFC 2253 output)."""
    written = write_callers(
        tmp_path / "callers.yaml",
        [{"subject": "CN=网关,O=Acme", "name": "a", "roles": "read", "tenants": "all"}],
    )
    escaped = tmp_path / "escaped.yaml"
    escaped.write_text("callers: [{subject: 'CN=\\E7\\BD\\91\\E5\\85\\B3,O=Acme', name: a, "
                       "roles: read, tenants: all}]\n")  # fmt: skip
    key = b"CN=\\E7\\BD\\91\\E5\\85\\B3,O=Acme"
    assert list(load_callers(str(written))) == list(load_callers(str(escaped))) == [key]


# -- bad files at start ---------------------------------------------------------------


def _settings(**values: Any) -> Settings:
    settings = Settings(**values)
    settings.check()
    return settings


def _bad_start_cases(pki: Pki, tmp: Path) -> dict[str, tuple[dict[str, Any], str]]:
    """Case -> (settings, what the one-line message says)."""
    encrypted = tmp / "encrypted.key"
    encrypted.write_bytes(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED "
                          b"PRIVATE KEY-----\n")  # fmt: skip
    garbage = tmp / "garbage.pem"
    garbage.write_bytes(b"not a certificate\n")
    callers = tmp / "callers.yaml"
    mtls = mtls_settings(pki, callers)

    def with_callers(text: str) -> dict[str, Any]:
        path = tmp / f"callers-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(text)
        return {**mtls, "tls_client_callers_file": str(path)}

    entry = f"callers:\n  - {{subject: '{pki.gateway.subject}', name: gw, roles: [ingest], "
    good = entry + "tenants: all}\n"
    return {
        "missing cert": (
            tls_settings(pki.server, tls_cert_file=str(tmp / "nope.pem")),
            r"^POINTS_TLS_CERT_FILE: .*nope\.pem: no such file$",
        ),
        "cert is a folder": (
            tls_settings(pki.server, tls_cert_file=str(tmp)),
            r"^POINTS_TLS_CERT_FILE: .* is a folder",
        ),
        "not PEM": (
            tls_settings(pki.server, tls_cert_file=str(garbage)),
            r"^POINTS_TLS_CERT_FILE: .*garbage\.pem holds no PEM certificate",
        ),
        "key is a certificate": (
            tls_settings(pki.server, tls_key_file=str(pki.server.cert_file)),
            r"^POINTS_TLS_KEY_FILE: .* holds no PEM private key",
        ),
        "key of another certificate": (
            tls_settings(pki.server, tls_key_file=str(pki.gateway.key_file)),
            r"^POINTS_TLS_KEY_FILE: .*gateway\.key is not the private key of the certificate",
        ),
        "encrypted key": (
            tls_settings(pki.server, tls_key_file=str(encrypted)),
            r"^POINTS_TLS_KEY_FILE: .* is encrypted",
        ),
        "expired server certificate": (
            tls_settings(pki.expired_server),
            r"^POINTS_TLS_CERT_FILE: .*expired-server\.pem expired on 20",
        ),
        "client CA not PEM": (
            {**mtls, "tls_client_ca_file": str(garbage)},
            r"^POINTS_TLS_CLIENT_CA_FILE: .* holds no PEM certificate",
        ),
        "client CA with optional": (
            {**mtls, "tls_client_auth": "optional", "tls_client_callers_file": ""},
            r"^POINTS_TLS_CLIENT_AUTH=optional cannot be honoured with POINTS_TLS_CLIENT_CA_FILE",
        ),
        "require without a client CA": (
            tls_settings(pki.server, tls_client_auth="require"),
            r"^POINTS_TLS_CLIENT_AUTH=require needs POINTS_TLS_CLIENT_CA_FILE",
        ),
        "callers not YAML": (
            with_callers("callers: [\n"),
            r"^POINTS_TLS_CLIENT_CALLERS_FILE: .*: .* at line \d+, column \d+$",
        ),
        "callers not a list": (
            with_callers("callers: {}\n"),
            r"^POINTS_TLS_CLIENT_CALLERS_FILE: .* must be a mapping with a list 'callers'",
        ),
        "subject in OpenSSL's default form": (
            with_callers(good.replace(pki.gateway.subject, "CN = im-gateway-1, O = Acme")),
            r"callers\[0\]: subject 'CN = im-gateway-1, O = Acme' is not in RFC 2253 form",
        ),
        "subject listed twice": (
            with_callers(good + good.removeprefix("callers:\n")),
            r"callers\[1\]: subject 'CN=im-gateway-1,O=Acme' is listed twice",
        ),
        "unknown role": (
            with_callers(good.replace("[ingest]", "[ingest, root]")),
            r"callers\[0\] \(subject 'CN=im-gateway-1,O=Acme'\): unknown role 'root'",
        ),
        "missing tenants": (
            with_callers(entry.removesuffix(", ") + "}\n"),
            r"callers\[0\]: tenants is missing",
        ),
    }


def test_bad_files_are_refused_at_start_with_one_line(pki: Pki, tmp_path: Path) -> None:
    cases = _bad_start_cases(pki, tmp_path)
    for case, (values, said) in cases.items():
        with pytest.raises(ConfigError) as refused:
            ServerTls.from_settings(_settings(**values))
        message = str(refused.value)
        assert "\n" not in message and len(message) < 400, (case, message)
        assert re.search(said, message), (case, message)


def test_the_server_certificate_is_checked_against_the_wall_clock(pki: Pki) -> None:
    """Against the system time as given (`wall_clock`), not the service clock."""
    cert = x509.load_pem_x509_certificate(pki.server.pem)
    settings = _settings(**tls_settings(pki.server))
    after = cert.not_valid_after_utc.timestamp()
    before = cert.not_valid_before_utc.timestamp()
    with pytest.raises(ConfigError, match=r"expired on .*; renew it$"):
        ServerTls.from_settings(settings, wall_clock=lambda: after + 1)
    with pytest.raises(ConfigError, match=r"is valid only from .*clock right\?\)$"):
        ServerTls.from_settings(settings, wall_clock=lambda: before - 1)
    tls = ServerTls.from_settings(settings, wall_clock=lambda: after - 1)
    assert tls is not None and tls.not_after == cert.not_valid_after_utc
    assert ServerTls.from_settings(_settings()) is None  # no certificate: plaintext


async def test_start_server_refuses_bad_files_before_the_port_opens(
    servers: Servers, pki: Pki, tmp_path: Path, tenant: str
) -> None:
    port = free_port()
    app = await App.open(
        settings_for(servers, tmp_path, **tls_settings(pki.expired_server)),
        rules=rule_book([tenant]),
        clock=test_clock.current(),
    )
    try:
        with pytest.raises(ConfigError, match=r"^POINTS_TLS_CERT_FILE: .* expired on"):
            await start_server(app, f"127.0.0.1:{port}")
        assert app.tls is None
    finally:
        await app.close()
    # Nothing listens: the port is still free.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))


def test_serve_with_bad_files_exits_with_one_line(
    servers: Servers, pki: Pki, tmp_path: Path
) -> None:
    env = child_env(
        servers.redis_url, servers.database_url, rules_file(tmp_path / "rules.yaml", {"t": {}}),
        tmp_path / "data",
        POINTS_TLS_CERT_FILE=str(pki.server.cert_file),
        POINTS_TLS_KEY_FILE=str(pki.gateway.key_file),
    )  # fmt: skip
    done = run_cli(["serve"], env, timeout=60)
    assert done.returncode == ExitCode.CONFIG, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("configuration error: POINTS_TLS_KEY_FILE: "), lines


# -- reload --------------------------------------------------------------------------


async def test_reload_swaps_the_server_certificate_for_new_connections(
    make_api: ApiFactory, pki: Pki, tenant: str, tmp_path: Path
) -> None:
    live = copy_pair(pki.server, tmp_path)
    api = await make_api([tenant], **tls_settings(live))
    tls = api.app.tls
    assert isinstance(tls, ServerTls)
    read = pb.GetBalanceRequest(tenant_id=tenant, user_id="ann")
    opened, opened_stub = tls_stub(api, pki.ca.pem, token=api.token)
    channels = [opened]
    try:
        await opened_stub.GetBalance(read)
        swap_in(live, pki.server_b)
        assert tls.reload()
        for root, want in ((pki.wrong_ca.pem, grpc.StatusCode.OK),
                           (pki.ca.pem, grpc.StatusCode.UNAVAILABLE)):  # fmt: skip
            channel, stub = tls_stub(api, root, token=api.token)
            channels.append(channel)
            assert await code_of(stub.GetBalance(read, timeout=10)) == want, root
        # An open connection keeps the certificate it began with.
        assert await code_of(opened_stub.GetBalance(read)) == grpc.StatusCode.OK
    finally:
        for channel in channels:
            await channel.close()


async def test_a_bad_file_at_reload_keeps_all_the_old_ones(
    make_api: ApiFactory,
    pki: Pki,
    tenant: str,
    tmp_path: Path,
    callers: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    live = copy_pair(pki.server, tmp_path)
    api = await make_api([tenant], **mtls_settings(pki, callers, live))
    tls = api.app.tls
    assert isinstance(tls, ServerTls)
    read = pb.GetBalanceRequest(tenant_id=tenant, user_id="ann")
    channels: list[grpc.aio.Channel] = []

    async def code_with(root: bytes) -> grpc.StatusCode:
        channel, stub = tls_stub(api, root, pki.stranger, token=api.token)
        channels.append(channel)
        return await code_of(stub.GetBalance(read, timeout=10))

    try:
        caplog.set_level(logging.WARNING, "pointsd.tls")
        # A key of another certificate.
        live.key_file.write_bytes(pki.gateway.key_pem)
        assert not tls.reload()
        assert "certificates NOT reloaded, the old ones stay in use: POINTS_TLS_KEY_FILE" in (
            caplog.text
        )
        assert await code_with(pki.ca.pem) == grpc.StatusCode.OK
        # A good new pair with a bad callers file: all or nothing.
        swap_in(live, pki.server_b)
        write_callers(callers, [{"subject": "CN=x", "name": "x"}])
        assert not tls.reload()
        assert "POINTS_TLS_CLIENT_CALLERS_FILE" in caplog.text
        assert await code_with(pki.ca.pem) == grpc.StatusCode.OK
        assert await code_with(pki.wrong_ca.pem) == grpc.StatusCode.UNAVAILABLE
        # Fixed: the new pair is served.
        write_callers(callers, [])
        assert tls.reload()
        assert await code_with(pki.wrong_ca.pem) == grpc.StatusCode.OK
    finally:
        for channel in channels:
            await channel.close()


async def test_reloaded_callers_apply_at_once_on_open_connections(
    make_api: ApiFactory, pki: Pki, tenant: str, callers: Path
) -> None:
    api = await make_api([tenant], **mtls_settings(pki, callers))
    tls = api.app.tls
    assert isinstance(tls, ServerTls)
    channel, stub = tls_stub(api, pki.ca.pem, pki.gateway)
    read = pb.GetBalanceRequest(tenant_id=tenant, user_id="ann")
    try:
        assert await code_of(stub.GetBalance(read)) == grpc.StatusCode.PERMISSION_DENIED
        entry = {"subject": pki.gateway.subject, "name": "im-gateway-1",
                 "roles": ["ingest", "read"], "tenants": [tenant]}  # fmt: skip
        write_callers(callers, [entry])
        assert tls.reload()
        assert await code_of(stub.GetBalance(read)) == grpc.StatusCode.OK
        # Taken out of the file: the certificate alone no longer admits.
        write_callers(callers, [])
        assert tls.reload()
        assert await code_of(stub.GetBalance(read)) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await channel.close()


# -- SIGHUP to a serve process ----------------------------------------------------------


def _health(target: str, root: bytes) -> grpc.StatusCode:
    with grpc.secure_channel(
        target, grpc.ssl_channel_credentials(root), options=_OWN_CONNECTION
    ) as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError as exc:
            return cast(grpc.Call, exc).code()
    return grpc.StatusCode.OK


class TlsServerProcess(ServerProcess):
    """A `pointsd serve` child on a TLS port: ready once its log says every
    serving process has installed its SIGHUP handler and health answers
    over TLS (ServerProcess.start checks health in plaintext)."""

    def start_tls(self, root: bytes, serving: int, timeout_s: float = 60) -> None:
        self._log_fh = open(self.log, "ab")  # noqa: SIM115 - closed by terminate
        self.proc = subprocess.Popen(
            self.argv, env=self.env, cwd=ROOT, stdout=self._log_fh, stderr=subprocess.STDOUT
        )
        # "pointsd serving on host:port (redis ...)": a server process, after
        # its SIGHUP handler (a SIGHUP before it would end the process).
        self.wait_for(lambda log: log.count("(redis ") >= serving, timeout_s)
        self.wait_for(lambda _: _health(self.target, root) == grpc.StatusCode.OK, timeout_s)

    def wait_for(self, ready: Callable[[str], bool], timeout_s: float = 30) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.log.read_text()[-3000:]}")
            if ready(self.log.read_text()):
                return
            time.sleep(0.1)
        raise AssertionError(f"condition not met in time: {self.log.read_text()[-3000:]}")


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reloads_the_certificates_of_every_serving_process(
    servers: Servers, pki: Pki, tmp_path: Path, workers: int
) -> None:
    live = copy_pair(pki.server, tmp_path)
    env = child_env(
        servers.redis_url, servers.database_url, rules_file(tmp_path / "rules.yaml", {"t": {}}),
        tmp_path / "data",
        POINTS_TLS_CERT_FILE=str(live.cert_file), POINTS_TLS_KEY_FILE=str(live.key_file),
        POINTS_WORKERS=str(workers), POINTS_FLUSHER="off", POINTS_LOG_LEVEL="INFO",
    )  # fmt: skip
    child = TlsServerProcess(env, free_port(), tmp_path / "serve.log")
    child.start_tls(pki.ca.pem, serving=workers)
    try:
        swap_in(live, pki.server_b)
        os.kill(child.pid, signal.SIGHUP)
        child.wait_for(lambda log: log.count("certificates reloaded") >= workers)
        # Several new connections: with workers, the kernel spreads them.
        for _ in range(4 * workers):
            assert _health(child.target, pki.wrong_ca.pem) == grpc.StatusCode.OK
            assert _health(child.target, pki.ca.pem) == grpc.StatusCode.UNAVAILABLE
        # A bad file: logged, the certificate in use stays, the process serves on.
        live.key_file.write_text("garbage\n")
        os.kill(child.pid, signal.SIGHUP)
        child.wait_for(lambda log: log.count("certificates NOT reloaded") >= workers)
        assert child.proc is not None and child.proc.poll() is None
        for _ in range(2 * workers):
            assert _health(child.target, pki.wrong_ca.pem) == grpc.StatusCode.OK
    finally:
        code = child.terminate()
    assert code == 0, child.log.read_text()[-3000:]


def test_a_key_type_grpc_cannot_serve_is_refused_in_one_line_at_start_and_reload(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An Ed448 certificate passes the file checks, but gRPC's TLS library
    cannot serve it: refused at start with one line, and a SIGHUP reload to
    it keeps the old certificate and says so (it does not claim success)."""
    from cryptography.hazmat.primitives.asymmetric import ed448

    key = ed448.Ed448PrivateKey.generate()
    now = system_now()
    cert = (
        x509.CertificateBuilder().subject_name(_name("pointsd")).issuer_name(_name("pointsd"))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
        .sign(key, None)
    )  # fmt: skip
    cert_file, key_file = tmp_path / "ed448.pem", tmp_path / "ed448.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pkcs8 = serialization.PrivateFormat.PKCS8
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption())
    )
    settings = _settings(tls_cert_file=str(cert_file), tls_key_file=str(key_file))
    with pytest.raises(ConfigError, match="gRPC's TLS library refuses them") as refused:
        ServerTls.from_settings(settings)
    assert "\n" not in str(refused.value)

    # Serving a good pair from files that are then replaced by the Ed448 one.
    live_cert, live_key = tmp_path / "live.pem", tmp_path / "live.key"
    live_cert.write_bytes(pki.server.pem)
    live_key.write_bytes(pki.server.key_pem)
    tls = ServerTls.from_settings(_settings(tls_cert_file=str(live_cert),
                                            tls_key_file=str(live_key)))  # fmt: skip
    assert tls is not None
    live_cert.write_bytes(cert_file.read_bytes())
    live_key.write_bytes(key_file.read_bytes())
    with caplog.at_level(logging.WARNING, logger="pointsd.tls"):
        assert tls.reload() is False
    assert any("NOT reloaded" in r.getMessage() for r in caplog.records)
