"""Configuration: defaults, then an optional TOML file, then environment variables.

Every limit and timeout of the switch is a named setting here, validated by pydantic.
A bad value is reported by `load_settings` as a `ConfigError` naming the setting; the CLI
turns that into exit status 2. Environment variables are `LOYALTY_<NAME>` (upper case), plus
the conventional `DATABASE_URL`. The TOML file is named by `--config` or `LOYALTY_CONFIG`.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ENV_PREFIX = "LOYALTY_"


class ConfigError(Exception):
    """A setting has a bad value, or the config file cannot be read."""


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Database. None means: start (or reuse) the embedded Postgres under `data_dir`.
    database_url: str | None = None
    data_dir: Path = Path(".loyalty")
    db_pool_size_min: int = Field(default=2, ge=1, le=100)
    db_pool_size_max: int = Field(default=16, ge=1, le=500)
    db_connect_timeout_s: float = Field(default=5.0, gt=0, le=120)
    db_statement_timeout_s: float = Field(default=5.0, gt=0, le=600)
    # Deadlocks and serialisation failures are retried this many times before answering 91.
    db_retries_max: int = Field(default=3, ge=0, le=20)

    # Keys: BDKs and the PAN hashing key live in this file, never in the database.
    key_file: Path = Path(".loyalty/keys.json")

    # Network.
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=8583, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9583, ge=0, le=65535)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    # Operations: log level (JSON lines on stderr); the pending-holds gauge counts at most
    # this many rows per refresh, so a huge backlog cannot make the count expensive.
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    metrics_holds_pending_max: int = Field(default=100_000, ge=1, le=10_000_000)

    # Limits (each enforced and tested at its bound by the switch).
    frame_bytes_max: int = Field(default=2048, ge=64, le=2048)
    connections_max: int = Field(default=1024, ge=1, le=100_000)
    connections_per_ip_max: int = Field(default=64, ge=1, le=100_000)
    in_flight_per_connection_max: int = Field(default=32, ge=1, le=10_000)

    # Timeouts.
    idle_timeout_s: float = Field(default=300.0, gt=0, le=86_400)
    frame_timeout_s: float = Field(default=10.0, gt=0, le=600)
    write_timeout_s: float = Field(default=10.0, gt=0, le=600)
    shutdown_grace_s: float = Field(default=10.0, ge=0, le=600)
    clock_skew_max_s: int = Field(default=300, ge=1, le=86_400)
    hold_timeout_s: int = Field(default=120, ge=1, le=86_400)
    hold_sweep_interval_s: float = Field(default=5.0, gt=0, le=3_600)
    hold_sweep_batch_max: int = Field(default=500, ge=1, le=100_000)
    # The sweeper's other two jobs, each in batches of its own bound (one transaction each).
    lot_expiry_batch_max: int = Field(default=500, ge=1, le=100_000)
    tier_review_batch_max: int = Field(default=500, ge=1, le=100_000)
    # An idle member's tier is reviewed (down one step) at most once per this many days.
    tier_review_interval_days: int = Field(default=30, ge=1, le=365)

    # Campaigns: points granted by a rule (which names no expiry) last this long.
    points_expiry_days: int = Field(default=365, ge=1, le=3_650)
    # Points are spent as store credit (switch/points.py): the most one point may be worth,
    # so a mistyped value cannot turn points into a fortune, and the most store credit one
    # redemption may create (a call-centre slip is bounded; at most field 4's n12).
    points_value_max_rial: int = Field(default=10_000, ge=1, le=1_000_000)
    points_redeem_max_rial: int = Field(default=100_000_000, ge=1, le=999_999_999_999)

    # Shaparak fee defaults (rials; basis points), used when pricing bank-card purchases.
    shaparak_fee_fixed_rial: int = Field(default=1_200, ge=0)
    shaparak_fee_threshold_rial: int = Field(default=6_000_000, ge=0)
    shaparak_fee_bp: int = Field(default=2, ge=0, le=10_000)
    shaparak_fee_cap_rial: int = Field(default=40_000, ge=0)

    # Settlement (settlement/; docs/settlement.md). Times of day are Tehran local, HH:MM.
    settlement_cutoffs: str = "10:00,14:00"   # window cut-offs on working days, comma-separated
    settlement_work_start: str = "08:00"
    settlement_work_end: str = "16:00"
    settlement_thursday: str = "half"          # full | half | none
    settlement_half_day_end: str = "12:00"     # end of a half-day Thursday
    # From a cut-off until the money is on the merchant's account (the bank batch).
    settlement_payout_lag_s: int = Field(default=3_600, ge=0, le=86_400)
    settlement_metrics_host: str = "127.0.0.1"
    settlement_metrics_port: int = Field(default=9584, ge=0, le=65535)
    settlement_metrics_refresh_s: float = Field(default=30.0, gt=0, le=3_600)

    @field_validator("settlement_work_start", "settlement_work_end", "settlement_half_day_end")
    @classmethod
    def _time_of_day(cls, value: str) -> str:
        _hhmm(value)
        return value

    @field_validator("settlement_cutoffs")
    @classmethod
    def _cutoffs(cls, value: str) -> str:
        parts = [part.strip() for part in value.split(",")]
        if not parts or any(not part for part in parts):
            raise ValueError("a comma-separated list of HH:MM times")
        for part in parts:
            _hhmm(part)
        return ",".join(parts)

    @field_validator("settlement_thursday")
    @classmethod
    def _thursday(cls, value: str) -> str:
        if value not in ("full", "half", "none"):
            raise ValueError("must be full, half or none")
        return value

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("postgres://", "postgresql://")):
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_any_case(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("db_pool_size_max")
    @classmethod
    def _pool_bounds(cls, value: int, info: Any) -> int:
        low = info.data.get("db_pool_size_min", 1)
        if value < low:
            raise ValueError(f"must be at least db_pool_size_min ({low})")
        return value

    @field_validator("tls_key_file")
    @classmethod
    def _key_needs_cert(cls, value: Path | None, info: Any) -> Path | None:
        if value is not None and info.data.get("tls_cert_file") is None:
            raise ValueError("needs tls_cert_file as well")
        return value

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert_file is not None


def _hhmm(text: str) -> None:
    if not re.fullmatch(r"([01][0-9]|2[0-3]):[0-5][0-9]", text):
        raise ValueError(f"{text!r} is not a time of day HH:MM (00:00 to 23:59)")


def _env_values(environ: Mapping[str, str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for name in Settings.model_fields:
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = raw
    if environ.get("DATABASE_URL"):
        values["database_url"] = environ["DATABASE_URL"]
    return values


def _file_values(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from exc
    # Accept either top-level keys or a [switch] table, so one file can hold other sections.
    table = data.get("switch", data)
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [switch] must be a table")
    return table


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Merge defaults < file < environment < explicit overrides, and validate."""
    environ = os.environ if environ is None else environ
    if config_file is None and environ.get(ENV_PREFIX + "CONFIG"):
        config_file = Path(environ[ENV_PREFIX + "CONFIG"])
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(_file_values(config_file))
    values.update(_env_values(environ))
    values.update(overrides)
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        name = ".".join(str(part) for part in err["loc"]) or "settings"
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown setting {name!r}")
        else:
            env = ENV_PREFIX + name.upper() if name != "database_url" else "DATABASE_URL"
            lines.append(f"setting {name} ({env}): {err['msg']}")
    return "; ".join(lines)
