"""Unit tests for pointsd.service.config: Settings read from an environment mapping."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from pointsd.service.config import ConfigError, Settings

FIELDS = [f.name for f in dataclasses.fields(Settings)]

# Fields check() requires to be > 0.
POSITIVE = [
    "workers",
    "shards",
    "event_max_age_s",
    "batch_events_max",
    "request_bytes_max",
    "attributes_max",
    "quantity_max",
    "ledger_page_size_max",
    "ingest_ops_per_call_max",
    "ingest_ops_per_round_trip_max",
    "ingest_inflight_max",
    "ingest_coalesce_ops",
    "stream_inflight_max",
    "flush_interval_ms",
    "flush_batch_rows_max",
    "flush_claim_idle_ms",
    "flush_backoff_max_ms",
    "redis_pool_max",
    "db_pool_size",
]

INT_FIELDS = [
    f.name for f in dataclasses.fields(Settings) if type(getattr(Settings(), f.name)) is int
]
FLOAT_FIELDS = [
    "shutdown_grace_s",
    "redis_timeout_s",
    "db_timeout_s",
    "winners_interval_s",
    "farming_interval_s",
    "redeem_recovery_interval_s",
    "redeem_recovery_after_s",
    "auth_refresh_s",
]
BOOL_FIELDS = ["migrate_on_start", "reuse_port", "redis_cluster"]


def env_var(field: str) -> str:
    """The documented variable name, spelled out independently of the code."""
    if field in ("redis_url", "database_url"):
        return field.upper()
    return "POINTS_" + field.upper()


# ---------------------------------------------------------------------------
# Defaults and names


def test_empty_environment_gives_the_defaults() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.listen == "127.0.0.1:50051"
    assert settings.redis_url == ""
    assert settings.database_url == ""
    assert settings.data_dir == Path(".pointsd")
    assert isinstance(settings.data_dir, Path)
    assert settings.shards == 1
    assert settings.event_max_age_s == 72 * 3600
    assert settings.flusher == "process"
    assert settings.shutdown_grace_s == 10.0
    assert settings.metrics_port == 0


def test_defaults_pass_check() -> None:
    Settings().check()


def test_the_field_lists_of_this_test_cover_every_field() -> None:
    # Guards the tables above: a new field must be classified here.
    covered = set(INT_FIELDS) | set(FLOAT_FIELDS) | set(BOOL_FIELDS)
    others = {"listen", "redis_url", "database_url", "data_dir", "rules_file", "redis_prefix"}
    others.update({"log_level", "log_format", "flusher", "clock_start", "auth", "redis_fsync"})
    others.update({"tls_cert_file", "tls_key_file", "tls_client_ca_file", "tls_client_auth"})
    others.add("tls_client_callers_file")
    assert covered | others == set(FIELDS)
    assert set(POSITIVE) <= set(INT_FIELDS)


def test_urls_have_no_prefix_and_the_rest_do() -> None:
    assert Settings.env_name("redis_url") == "REDIS_URL"
    assert Settings.env_name("database_url") == "DATABASE_URL"
    assert Settings.env_name("shards") == "POINTS_SHARDS"
    assert Settings.env_name("data_dir") == "POINTS_DATA_DIR"
    for field in FIELDS:
        assert Settings.env_name(field) == env_var(field)


def test_urls_are_read_without_prefix() -> None:
    settings = Settings.from_env(
        {
            "REDIS_URL": "redis://cache:6379/0",
            "DATABASE_URL": "postgresql://db/points",
        }
    )
    assert settings.redis_url == "redis://cache:6379/0"
    assert settings.database_url == "postgresql://db/points"


def test_prefixed_urls_and_unprefixed_fields_are_ignored() -> None:
    settings = Settings.from_env(
        {
            "POINTS_REDIS_URL": "redis://wrong",
            "POINTS_DATABASE_URL": "postgresql://wrong",
            "SHARDS": "9",
            "LISTEN": "0.0.0.0:1",
            "POINTS_NOT_A_FIELD": "x",
        }
    )
    assert settings == Settings()


def sample(field: str) -> tuple[str, Any]:
    """A raw value for `field` that differs from its default, and its reading."""
    if field in BOOL_FIELDS:
        return ("false", False) if getattr(Settings(), field) else ("true", True)
    if field in FLOAT_FIELDS:
        return "2.5", 2.5
    if field in INT_FIELDS:
        return "7", 7
    return _STRING_SAMPLES.get(field, ("some-value", "some-value"))


_STRING_SAMPLES: dict[str, tuple[str, Any]] = {
    "listen": ("0.0.0.0:6000", "0.0.0.0:6000"),
    "data_dir": ("/var/lib/pointsd", Path("/var/lib/pointsd")),
    "flusher": ("inline", "inline"),
    "auth": ("off", "off"),
    "redis_fsync": ("always", "always"),
    "tls_client_auth": ("require", "require"),
    "log_level": ("debug", "debug"),
    "log_format": ("json", "json"),
    "clock_start": ("2027-01-01T12:00:00+08:00", "2027-01-01T12:00:00+08:00"),
    "redis_url": ("redis://cache:6379/2", "redis://cache:6379/2"),
    "database_url": ("postgresql://points@db/points", "postgresql://points@db/points"),
}


@pytest.mark.parametrize(
    ("name", "url"),
    [
        ("REDIS_URL", "http://127.0.0.1:6379"),
        ("REDIS_URL", "127.0.0.1:6379"),
        ("DATABASE_URL", "mysql://u:pw@db/points"),
        ("DATABASE_URL", "sqlite:///points.db"),
    ],
)
def test_a_url_of_the_wrong_kind_is_refused_without_echoing_it(name: str, url: str) -> None:
    with pytest.raises(ConfigError, match=f"^{name} must start with") as info:
        Settings.from_env({name: url})
    assert "pw@" not in str(info.value) and "6379" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    ["redis://h:6379/0", "rediss://h:6380", "unix:///tmp/r.sock", "REDIS://h"],
)
def test_every_redis_scheme_is_accepted(url: str) -> None:
    assert Settings.from_env({"REDIS_URL": url}).redis_url == url


# Read together: each needs the ones before it (tests/test_tls.py has the refusals).
TLS_FILES = ["tls_cert_file", "tls_key_file", "tls_client_ca_file", "tls_client_callers_file"]


def test_the_tls_files_are_read_from_their_variables() -> None:
    settings = Settings.from_env(
        {env_var(f): f"/etc/pointsd/{f}.pem" for f in TLS_FILES}
        | {"POINTS_TLS_CLIENT_AUTH": "require"}
    )
    assert [getattr(settings, f) for f in TLS_FILES] == [f"/etc/pointsd/{f}.pem" for f in TLS_FILES]


@pytest.mark.parametrize("field", [f for f in FIELDS if f not in TLS_FILES])
def test_every_field_is_read_from_its_variable(field: str) -> None:
    raw, expected = sample(field)
    assert getattr(Settings(), field) != expected
    settings = Settings.from_env({env_var(field): raw})
    value = getattr(settings, field)
    assert value == expected
    assert type(value) is type(getattr(Settings(), field))
    # Nothing else changed.
    for other in FIELDS:
        if other != field:
            assert getattr(settings, other) == getattr(Settings(), other)


# ---------------------------------------------------------------------------
# Parsing


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("5", 5),
        ("100_000", 100_000),
        ("2_000_000", 2_000_000),
        ("0042", 42),
        ("+8", 8),
    ],
)
def test_ints_are_parsed_with_underscores(raw: str, expected: int) -> None:
    assert Settings.from_env({"POINTS_QUANTITY_MAX": raw}).quantity_max == expected


def test_several_ints_at_once() -> None:
    settings = Settings.from_env(
        {
            "POINTS_SHARDS": "16",
            "POINTS_REQUEST_BYTES_MAX": "8_388_608",
            "POINTS_OUTBOX_ENTRIES_MAX": "0",
            "POINTS_EVENT_FUTURE_SKEW_S": "0",
            "POINTS_METRICS_PORT": "9100",
        }
    )
    assert settings.shards == 16
    assert settings.request_bytes_max == 8_388_608
    assert settings.outbox_entries_max == 0
    assert settings.event_future_skew_s == 0
    assert settings.metrics_port == 9100


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("2.5", 2.5), ("3", 3.0), ("0.25", 0.25), ("1e1", 10.0)],
)
def test_floats_are_parsed(raw: str, expected: float) -> None:
    settings = Settings.from_env({"POINTS_SHUTDOWN_GRACE_S": raw, "POINTS_DB_TIMEOUT_S": raw})
    assert settings.shutdown_grace_s == expected
    assert settings.db_timeout_s == expected
    assert isinstance(settings.shutdown_grace_s, float)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("false", False),
        ("1", True),
        ("0", False),
        ("yes", True),
        ("no", False),
        ("on", True),
        ("off", False),
        ("TRUE", True),
        ("False", False),
        ("Yes", True),
        (" no ", False),
    ],
)
@pytest.mark.parametrize("field", BOOL_FIELDS)
def test_bools_are_parsed(field: str, raw: str, expected: bool) -> None:
    value = getattr(Settings.from_env({env_var(field): raw}), field)
    assert value is expected


def test_strings_are_kept_verbatim() -> None:
    settings = Settings.from_env(
        {
            "POINTS_LISTEN": "[::]:50051",
            "POINTS_RULES_FILE": "/etc/pointsd/rules.yaml",
            "POINTS_REDIS_PREFIX": "pts-staging",
            "POINTS_LOG_LEVEL": "DEBUG",
        }
    )
    assert settings.listen == "[::]:50051"
    assert settings.rules_file == "/etc/pointsd/rules.yaml"
    assert settings.redis_prefix == "pts-staging"
    assert settings.log_level == "DEBUG"


@pytest.mark.parametrize("raw", ["/var/lib/pointsd", "relative/dir", "~/pointsd"])
def test_paths_are_read_as_paths(raw: str) -> None:
    # The default is a PosixPath/WindowsPath, so a parser keyed on `Path`
    # exactly would leave a str here (and EmbeddedRedis calls .resolve() on it).
    data_dir = Settings.from_env({"POINTS_DATA_DIR": raw}).data_dir
    assert isinstance(data_dir, Path)
    assert data_dir == Path(raw)


@pytest.mark.parametrize(
    "field",
    ["shards", "quantity_max", "event_future_skew_s", "shutdown_grace_s", "migrate_on_start"],
)
def test_empty_string_means_default(field: str) -> None:
    settings = Settings.from_env({env_var(field): ""})
    assert getattr(settings, field) == getattr(Settings(), field)


def test_empty_strings_everywhere_mean_defaults() -> None:
    assert Settings.from_env({env_var(field): "" for field in FIELDS}) == Settings()


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("POINTS_SHARDS", "abc"),
        ("POINTS_SHARDS", "1.5"),
        ("POINTS_SHARDS", "0x10"),
        ("POINTS_SHARDS", "4 shards"),
        ("POINTS_QUANTITY_MAX", "1e5"),
        ("POINTS_METRICS_PORT", "none"),
        ("POINTS_SHUTDOWN_GRACE_S", "fast"),
        ("POINTS_REDIS_TIMEOUT_S", "5s"),
        ("POINTS_FLUSHER", "maybe"),
        ("POINTS_FLUSHER", "2"),
        ("POINTS_MIGRATE_ON_START", "y"),
        ("POINTS_MIGRATE_ON_START", "enabled"),
    ],
)
def test_unreadable_values_raise_config_error_naming_the_variable(variable: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({variable: raw})
    message = str(info.value)
    assert message.startswith(variable + ":")
    assert repr(raw) in message


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        Settings.from_env({"POINTS_SHARDS": "many"})


# ---------------------------------------------------------------------------
# check()


@pytest.mark.parametrize("field", POSITIVE)
@pytest.mark.parametrize("raw", ["0", "-1"])
def test_non_positive_limits_are_refused(field: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=env_var(field) + " must be > 0, got " + raw):
        Settings.from_env({env_var(field): raw})


@pytest.mark.parametrize("field", POSITIVE)
def test_check_refuses_a_non_positive_field(field: str) -> None:
    zero: dict[str, Any] = {field: 0}
    one: dict[str, Any] = {field: 1}
    settings = dataclasses.replace(Settings(), **zero)
    with pytest.raises(ConfigError, match=env_var(field)):
        settings.check()
    dataclasses.replace(Settings(), **one).check()


@pytest.mark.parametrize("field", ["event_future_skew_s", "outbox_entries_max"])
def test_zero_is_allowed_but_negative_is_not(field: str) -> None:
    assert getattr(Settings.from_env({env_var(field): "0"}), field) == 0
    with pytest.raises(ConfigError, match=env_var(field)):
        Settings.from_env({env_var(field): "-1"})


def test_metrics_port_zero_means_off_and_is_accepted() -> None:
    assert Settings.from_env({"POINTS_METRICS_PORT": "0"}).metrics_port == 0


@pytest.mark.parametrize("listen", ["localhost", "50051", "unix-socket"])
def test_listen_needs_host_and_port(listen: str) -> None:
    with pytest.raises(ConfigError, match="POINTS_LISTEN"):
        Settings.from_env({"POINTS_LISTEN": listen})


# ---------------------------------------------------------------------------
# Overrides and os.environ


def test_overrides_win_over_the_environment() -> None:
    settings = Settings.from_env({"POINTS_SHARDS": "4"}, shards=8, redis_url="redis://x")
    assert settings.shards == 8
    assert settings.redis_url == "redis://x"


def test_overrides_are_checked() -> None:
    with pytest.raises(ConfigError, match="POINTS_SHARDS"):
        Settings.from_env({}, shards=0)


def test_an_invalid_environment_value_fails_even_when_overridden() -> None:
    # Parsing happens before overrides apply.
    with pytest.raises(ConfigError, match="POINTS_SHARDS"):
        Settings.from_env({"POINTS_SHARDS": "x"}, shards=2)


def test_none_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for field in FIELDS:
        monkeypatch.delenv(env_var(field), raising=False)
    monkeypatch.setenv("POINTS_SHARDS", "3")
    monkeypatch.setenv("REDIS_URL", "redis://env:6379")
    settings = Settings.from_env()
    assert settings.shards == 3
    assert settings.redis_url == "redis://env:6379"
    assert settings.batch_events_max == Settings().batch_events_max


def test_an_explicit_mapping_ignores_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POINTS_SHARDS", "3")
    assert Settings.from_env({}).shards == 1


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.shards = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("POINTS_SHUTDOWN_GRACE_S", "0"),
        ("POINTS_SHUTDOWN_GRACE_S", "nan"),
        ("POINTS_WINNERS_INTERVAL_S", "0"),
        ("POINTS_FARMING_INTERVAL_S", "0.5"),
        ("POINTS_FARMING_INTERVAL_S", "3601"),
        ("POINTS_FARMING_INTERVAL_S", "nan"),
        ("POINTS_REDEEM_RECOVERY_INTERVAL_S", "-5"),
        ("POINTS_DB_TIMEOUT_S", "0"),
        ("POINTS_LOG_LEVEL", "verbose"),
        ("POINTS_LISTEN", "127.0.0.1:abc"),
        ("POINTS_LISTEN", "127.0.0.1:70000"),
        ("POINTS_METRICS_PORT", "70000"),
        ("POINTS_METRICS_PORT", "65535"),  # the flusher would need 65536
    ],
)
def test_settings_that_would_misbehave_are_refused_by_name(variable: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env({variable: raw})


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("POINTS_LOG_LEVEL", "warn"),
        ("POINTS_LOG_LEVEL", "fatal"),
        ("POINTS_LISTEN", "unix:/tmp/p"),
        ("POINTS_FARMING_INTERVAL_S", "1"),
        ("POINTS_FARMING_INTERVAL_S", "3600"),
    ],
)
def test_settings_python_and_grpc_accept_stay_accepted(variable: str, raw: str) -> None:
    Settings.from_env({variable: raw})
