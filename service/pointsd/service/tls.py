"""Server TLS, mutual TLS and client certificates standing for callers.

Files named by settings (POINTS_TLS_*) are read and checked at start: a
missing, unreadable or non-PEM file, a key that is not the certificate's, or
a server certificate outside its validity is a ConfigError naming the
setting and what to fix. `reload()` (SIGHUP) reads them again; a bad file
then keeps the old ones. The credentials come from
`grpc.dynamic_ssl_server_credentials`: gRPC asks `ServerTls` for the
current configuration at every handshake, so a reload applies to new
connections (open ones keep theirs) without a restart.

Client certificates: gRPC's Python server either requires a verified client
certificate or asks for none (there is no "request, verify if presented":
grpc/_cython/_cygrpc/credentials.pyx.pxi maps require_client_auth=False to
GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE). So a client CA works only with
POINTS_TLS_CLIENT_AUTH=require; "optional" with a client CA is refused at
start rather than silently verifying nothing.

Subjects: gRPC puts the verified certificate's subject in the call's
auth_context under "x509_subject", as OpenSSL's RFC 2253 one-line form
(what `openssl x509 -noout -subject -nameopt RFC2253` prints): last RDN
first, ',' between RDNs, `\\,` `\\+` escapes, bytes >= 0x80 of UTF-8 as
`\\XX`, emailAddress by name. A caller entry matches that string exactly;
non-ASCII characters written in the file are escaped the same way first.
A mapped subject stands for its caller (`caller_of`, the gate's
`certificates`, set by server.start_server when a callers file is named);
an unmapped one leaves the decision to the bearer token.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import grpc
import yaml

from pointsd.service.auth import Caller, check_grant
from pointsd.service.config import ConfigError, Settings
from pointsd.service.errors import InvalidArgument, clip

__all__ = ["SUBJECT_KEY", "ServerTls", "load_callers", "subject_key"]

log = logging.getLogger("pointsd.tls")

# Where gRPC puts a verified client certificate's subject.
SUBJECT_KEY = "x509_subject"
# Bounds: PEM bundles and the callers file are small; a huge file is a mistake.
_PEM_BYTES_MAX = 1024 * 1024
_CALLERS_BYTES_MAX = 4 * 1024 * 1024
_SUBJECT_CHARS_MAX = 1024
_CALLER_KEYS = ("subject", "name", "roles", "tenants")
# Unmapped subjects logged (once each): enough to copy one into the file,
# never a log line per call.
_UNMAPPED_LOGGED_MAX = 64

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\s*(.+?)\s*-----END CERTIFICATE-----", re.S)
_PEM_KEY = re.compile(rb"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----")
# Spaces around '=' or after an unescaped ',': never in RFC 2253 output.
_SPACED = re.compile(r"\s=|=\s|(?:^|[^\\]),\s")


@dataclass(frozen=True, slots=True)
class _Material:
    """One consistent set of what the files said."""

    config: grpc.ServerCertificateConfiguration
    not_after: datetime
    callers: Mapping[bytes, Caller]


class ServerTls:
    """The server's certificates and client callers; reloadable."""

    def __init__(
        self, settings: Settings, material: _Material, wall_clock: Callable[[], float]
    ) -> None:
        self._settings = settings
        self._wall_clock = wall_clock
        self._material = material
        # Bumped by a reload; each credentials() fetcher remembers what it served.
        self._generation = 0
        self._lock = threading.Lock()  # the fetcher runs on a gRPC core thread
        self._unmapped: set[bytes] = set()
        self.require_client_cert = bool(settings.tls_client_ca_file)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, wall_clock: Callable[[], float] = time.time
    ) -> ServerTls | None:
        """None without POINTS_TLS_CERT_FILE; else the checked files, or a
        ConfigError. `wall_clock` (epoch seconds) is the system time, not the
        service clock: peers check certificates against the system time."""
        if settings.tls_client_auth == "require" and not settings.tls_client_ca_file:
            raise ConfigError(
                "POINTS_TLS_CLIENT_AUTH=require needs POINTS_TLS_CLIENT_CA_FILE (the CA client "
                "certificates must chain to) and server TLS (POINTS_TLS_CERT_FILE, "
                "POINTS_TLS_KEY_FILE)"
            )
        if not settings.tls_cert_file:
            return None
        if settings.tls_client_ca_file and settings.tls_client_auth != "require":
            raise ConfigError(
                "POINTS_TLS_CLIENT_AUTH=optional cannot be honoured with "
                "POINTS_TLS_CLIENT_CA_FILE: gRPC's Python server either requires a verified client "
                "certificate or asks for "
                "none. Set POINTS_TLS_CLIENT_AUTH=require for mutual TLS, or unset "
                "POINTS_TLS_CLIENT_CA_FILE (callers then use bearer tokens over TLS)"
            )
        return cls(settings, _load(settings, wall_clock()), wall_clock)

    @property
    def not_after(self) -> datetime:
        """When the server certificate in use expires (UTC)."""
        return self._material.not_after

    def describe(self) -> str:
        """One line for the log: what a client meets."""
        said = f"TLS, server certificate valid until {self.not_after.isoformat()}"
        if not self.require_client_cert:
            return f"{said}; no client certificates (callers use bearer tokens)"
        mapped = len(self._material.callers)
        return (
            f"{said}; a client certificate of POINTS_TLS_CLIENT_CA_FILE is required, "
            f"{mapped} subject(s) stand for callers, others need a bearer token"
        )

    def credentials(self) -> grpc.ServerCredentials:
        """Credentials for add_secure_port that follow `reload()`."""
        with self._lock:
            served = [self._generation]
            initial = self._material.config

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            # Called by gRPC at every handshake: None keeps the current one.
            with self._lock:
                if served[0] == self._generation:
                    return None
                served[0] = self._generation
                return self._material.config

        # The stubs say the fetcher returns a configuration; gRPC documents None.
        fetcher = cast(Callable[[], grpc.ServerCertificateConfiguration], fetch)
        return grpc.dynamic_ssl_server_credentials(
            initial, fetcher, require_client_authentication=self.require_client_cert
        )

    def reload(self) -> bool:
        """Read every file again. On any problem keep all the old ones, log
        one WARNING line saying which file and what, and return False."""
        try:
            material = _load(self._settings, self._wall_clock())
        except ConfigError as exc:
            log.warning("certificates NOT reloaded, the old ones stay in use: %s", exc)
            return False
        except Exception as exc:  # e.g. a callers file nested too deep to parse
            log.warning(
                "certificates NOT reloaded, the old ones stay in use: %s: %s",
                type(exc).__name__,
                str(exc)[:200],
            )
            return False
        with self._lock:
            self._material = material
            self._generation += 1
            self._unmapped.clear()
        log.info("certificates reloaded for new connections: %s", self.describe())
        return True

    def caller_of(self, auth_context: Mapping[str, Sequence[bytes]]) -> Caller | None:
        """The caller a verified client certificate stands for, or None (no
        certificate, or its subject is not mapped: the bearer token decides).
        Runs on every call: one dict lookup."""
        subjects = auth_context.get(SUBJECT_KEY)
        if not subjects:
            return None
        material = self._material
        caller = material.callers.get(subjects[0])
        if caller is None and self._settings.tls_client_callers_file:
            self._note_unmapped(subjects[0])
        return caller

    def _note_unmapped(self, subject: bytes) -> None:
        if subject in self._unmapped or len(self._unmapped) >= _UNMAPPED_LOGGED_MAX:
            return
        self._unmapped.add(subject)
        log.info(
            "client certificate %r is not in POINTS_TLS_CLIENT_CALLERS_FILE: its calls need a "
            "bearer token",
            subject.decode("ascii", "backslashreplace"),
        )


# -- reading and checking the files -----------------------------------------


def _load(settings: Settings, now_s: float) -> _Material:
    cert_path, key_path = settings.tls_cert_file, settings.tls_key_file
    chain = _read("POINTS_TLS_CERT_FILE", cert_path, _PEM_BYTES_MAX)
    key = _read("POINTS_TLS_KEY_FILE", key_path, _PEM_BYTES_MAX)
    first = _first_certificate("POINTS_TLS_CERT_FILE", cert_path, chain)
    _check_key("POINTS_TLS_KEY_FILE", key_path, key)
    _check_pair(cert_path, key_path, chain, key)
    not_after = _check_validity(cert_path, first, now_s)
    client_ca: bytes | None = None
    if settings.tls_client_ca_file:
        client_ca = _read("POINTS_TLS_CLIENT_CA_FILE", settings.tls_client_ca_file, _PEM_BYTES_MAX)
        _check_ca(settings.tls_client_ca_file, client_ca)
    callers: dict[bytes, Caller] = {}
    if settings.tls_client_callers_file:
        callers = load_callers(settings.tls_client_callers_file)
    _check_with_grpc(cert_path, key_path, key, chain, client_ca)
    config = grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=client_ca)
    return _Material(config, not_after, callers)


def _check_with_grpc(
    cert_path: str, key_path: str, key: bytes, chain: bytes, client_ca: bytes | None
) -> None:
    """What the checks above accept, gRPC's own TLS library may still refuse
    (a key type it does not support): try the pair on a server that is
    never started, so a bad file is one clear line, at start and at SIGHUP."""
    from concurrent import futures

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    try:
        creds = grpc.ssl_server_credentials([(key, chain)], root_certificates=client_ca)
        server.add_secure_port("127.0.0.1:0", creds)
    except RuntimeError as exc:
        raise ConfigError(
            f"POINTS_TLS_CERT_FILE / POINTS_TLS_KEY_FILE: {cert_path} with {key_path}: gRPC's "
            f"TLS library refuses them ({str(exc)[:120]}); use an RSA or ECDSA P-256/P-384 "
            "certificate and key"
        ) from None
    finally:
        server.stop(None)


def _read(setting: str, path: str, limit: int) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise ConfigError(f"{setting}: {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{setting}: {path} is a folder; name the file") from None
    except PermissionError:
        raise ConfigError(
            f"{setting}: {path} cannot be read by this user (permission denied)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{setting}: {path} cannot be read ({exc.strerror})") from None
    if len(data) > limit:
        raise ConfigError(f"{setting}: {path} is larger than {limit} bytes; is it the right file?")
    return data


def _first_certificate(setting: str, path: str, pem: bytes) -> bytes:
    """The DER of the first certificate (the server's own) of a PEM chain."""
    found = _PEM_CERT.search(pem)
    if found is None:
        raise ConfigError(
            f"{setting}: {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----); "
            f"convert a DER file with: openssl x509 -inform der -in {path} -out cert.pem"
        )
    try:
        return base64.b64decode(found.group(1), validate=False)
    except binascii.Error:
        raise ConfigError(f"{setting}: {path}: the first certificate is not valid PEM") from None


def _check_key(setting: str, path: str, pem: bytes) -> None:
    if _PEM_KEY.search(pem) is None:
        raise ConfigError(
            f"{setting}: {path} holds no PEM private key (-----BEGIN PRIVATE KEY-----)"
        )
    if b"ENCRYPTED" in pem:
        raise ConfigError(
            f"{setting}: {path} is encrypted, which gRPC cannot read; decrypt it: "
            f"openssl pkey -in {path} -out key.pem (and keep that file private)"
        )


def _no_password() -> bytes:
    raise ValueError("encrypted")  # never prompt on a terminal


def _check_pair(cert_path: str, key_path: str, chain: bytes, key: bytes) -> None:
    """The key belongs to the certificate (OpenSSL checks it). Reads the
    paths again: if the files changed meanwhile, says so rather than
    approving bytes it did not check."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert_path, key_path, password=_no_password)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "KEY_VALUES_MISMATCH" in str(exc) or reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f"POINTS_TLS_KEY_FILE: {key_path} is not the private key of the certificate in "
                f"POINTS_TLS_CERT_FILE ({cert_path}); name the matching pair"
            ) from None
        raise ConfigError(
            f"POINTS_TLS_CERT_FILE / POINTS_TLS_KEY_FILE: {cert_path}, {key_path} cannot be "
            f"used ({clip(str(reason))}); check both are PEM and belong together"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"POINTS_TLS_CERT_FILE / POINTS_TLS_KEY_FILE: {cert_path}, {key_path} cannot be "
            f"read ({clip(str(exc))})"
        ) from None
    if (
        _read("POINTS_TLS_CERT_FILE", cert_path, _PEM_BYTES_MAX) != chain
        or _read("POINTS_TLS_KEY_FILE", key_path, _PEM_BYTES_MAX) != key
    ):
        raise ConfigError(
            f"POINTS_TLS_CERT_FILE / POINTS_TLS_KEY_FILE: {cert_path}, {key_path} changed while "
            "being read; try again once both are written"
        )


def _check_validity(path: str, der: bytes, now_s: float) -> datetime:
    try:
        not_before, not_after = _validity(der)
    except ValueError:
        raise ConfigError(
            f"POINTS_TLS_CERT_FILE: {path}: the first certificate cannot be parsed (DER)"
        ) from None
    now = datetime.fromtimestamp(now_s, UTC)
    if now >= not_after:
        raise ConfigError(
            f"POINTS_TLS_CERT_FILE: {path} expired on {not_after.isoformat()}; renew it"
        )
    if now < not_before:
        raise ConfigError(
            f"POINTS_TLS_CERT_FILE: {path} is valid only from {not_before.isoformat()} "
            "(is this machine's clock right?)"
        )
    return not_after


def _check_ca(path: str, pem: bytes) -> None:
    if _PEM_CERT.search(pem) is None:
        raise ConfigError(
            f"POINTS_TLS_CLIENT_CA_FILE: {path} holds no PEM certificate "
            "(-----BEGIN CERTIFICATE-----)"
        )
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(
            cadata=pem.decode("ascii", "replace")
        )
    except ssl.SSLError as exc:
        raise ConfigError(
            f"POINTS_TLS_CLIENT_CA_FILE: {path} cannot be read as PEM certificates "
            f"({clip(str(exc.reason or exc))})"
        ) from None


# -- the validity of a DER certificate (RFC 5280 4.1) -------------------------
# The stdlib has no public certificate parser and `cryptography` is not a
# runtime dependency; the validity sits at a fixed place in the structure.


def _tlv(buf: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at `pos`."""
    if pos + 2 > len(buf):
        raise ValueError("truncated")
    tag, first = buf[pos], buf[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if not 1 <= count <= 4 or pos + count > len(buf):
            raise ValueError("bad length")
        length = int.from_bytes(buf[pos : pos + count], "big")
        pos += count
    if pos + length > len(buf):
        raise ValueError("truncated")
    return tag, pos, pos + length


def _validity(der: bytes) -> tuple[datetime, datetime]:
    _, cert, _ = _tlv(der, 0)  # Certificate SEQUENCE
    _, pos, _ = _tlv(der, cert)  # tbsCertificate SEQUENCE
    tag, _, end = _tlv(der, pos)
    if tag == 0xA0:  # [0] version
        pos = end
    for _ in range(3):  # serialNumber, signature, issuer
        _, _, pos = _tlv(der, pos)
    _, pos, _ = _tlv(der, pos)  # validity SEQUENCE
    times = []
    for _ in range(2):
        tag, start, end = _tlv(der, pos)
        times.append(_asn1_time(tag, der[start:end]))
        pos = end
    return times[0], times[1]


def _asn1_time(tag: int, raw: bytes) -> datetime:
    text = raw.decode("ascii")
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ: 50-99 are 19xx (RFC 5280 4.1.2.5.1)
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
        raise ValueError("not a time")
    return datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC)


# -- the callers file ----------------------------------------------------------


def subject_key(subject: str) -> bytes:
    """A subject as written in the file, as gRPC reports it: characters
    beyond ASCII become `\\XX` escapes of their UTF-8 bytes."""
    return "".join(
        c if ord(c) < 0x80 else "".join(f"\\{b:02X}" for b in c.encode()) for c in subject
    ).encode("ascii")


def load_callers(path: str) -> dict[bytes, Caller]:
    """Subject -> Caller from the YAML file at `path` (docs/security.md,
    "Client certificates"); ConfigError naming the file and the entry."""
    setting = "POINTS_TLS_CLIENT_CALLERS_FILE"
    raw = _read(setting, path, _CALLERS_BYTES_MAX)
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{setting}: {path}: {problem}{where}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("callers"), list):
        raise ConfigError(
            f"{setting}: {path} must be a mapping with a list 'callers' "
            "(each: subject, name, roles, tenants)"
        )
    unknown = sorted(set(doc) - {"callers"})
    if unknown:
        raise ConfigError(f"{setting}: {path}: unknown key {clip(str(unknown[0]))!r}")
    callers: dict[bytes, Caller] = {}
    for i, entry in enumerate(doc["callers"]):
        caller, key = _caller(entry, f"{setting}: {path}: callers[{i}]")
        if key in callers:
            subject = caller.credential.removeprefix("cert ")
            raise ConfigError(
                f"{setting}: {path}: callers[{i}]: subject {clip(subject)!r} is listed twice"
            )
        callers[key] = caller
    return callers


def _caller(entry: Any, where: str) -> tuple[Caller, bytes]:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a mapping of {', '.join(_CALLER_KEYS)}")
    extra = sorted(str(k) for k in set(entry) - set(_CALLER_KEYS))
    missing = [k for k in _CALLER_KEYS if k not in entry]
    if extra or missing:
        what = f"unknown key {clip(extra[0])!r}" if extra else f"{missing[0]} is missing"
        raise ConfigError(f"{where}: {what} (each entry has {', '.join(_CALLER_KEYS)})")
    subject = entry["subject"]
    if not isinstance(subject, str) or "=" not in subject or len(subject) > _SUBJECT_CHARS_MAX:
        raise ConfigError(
            f"{where}: subject must be a certificate subject in RFC 2253 form "
            "(e.g. 'CN=im-gateway-1,O=Acme'), at most "
            f"{_SUBJECT_CHARS_MAX} characters"
        )
    subject = subject.strip()
    if subject.startswith("/") or _SPACED.search(subject):
        # OpenSSL's default forms ('/O=b/CN=a', 'O = b, CN = a') would never
        # match, silently: refuse them and say which form is meant.
        raise ConfigError(
            f"{where}: subject {clip(subject)!r} is not in RFC 2253 form; write it as "
            "openssl x509 -noout -subject -nameopt RFC2253 prints it (e.g. 'CN=a,O=b')"
        )
    name, roles, tenants = entry["name"], entry["roles"], entry["tenants"]
    if isinstance(roles, str):
        roles = [roles]
    if tenants == "all":
        tenants = None
    elif isinstance(tenants, str):
        tenants = [tenants]
    if (
        not isinstance(name, str)
        or not isinstance(roles, list)
        or not (tenants is None or isinstance(tenants, list))
    ):
        raise ConfigError(
            f"{where}: name is a string, roles a list, tenants a list of tenant ids or 'all'"
        )
    try:
        name, granted, scope = check_grant(
            name, [str(r) for r in roles], None if tenants is None else [str(t) for t in tenants]
        )
    except InvalidArgument as exc:
        raise ConfigError(f"{where} (subject {clip(subject)!r}): {exc}") from None
    caller = Caller(
        name, frozenset(granted), None if scope is None else frozenset(scope), f"cert {subject}"
    )
    return caller, subject_key(subject)
