"""Loads Corral's one YAML config file, with nameko's ${ENV:default} substitution, into typed settings."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.bands import Band, parse_bands
from shared.errors import ConfigError
from shared.licences import LICENCE_NAME

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "deploy" / "config.yaml"
CONFIG_ENV_VAR = "CORRAL_CONFIG"

_ENV_VAR = re.compile(r"\$\{([^}{:]+)(?::([^}]*))?\}")


def substitute_env(text: str, environ: Mapping[str, str]) -> str:
    """Replace ${NAME} and ${NAME:default} the way nameko's config loader does."""

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is None:
            raise ConfigError(f"environment variable {name} is not set and has no default")
        return default

    return _ENV_VAR.sub(replace, text)


def _resolve(node: Any, environ: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        return {key: _resolve(value, environ) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve(value, environ) for value in node]
    if isinstance(node, str) and _ENV_VAR.search(node):
        replaced = substitute_env(node, environ)
        # Like nameko: a whole-value substitution is parsed again so "20" becomes 20.
        return yaml.safe_load(replaced) if replaced.strip() else ""
    return node


class LicencePoolConfig(BaseModel):
    """One licence pool declared in the config: a fixed count, or a licence server to follow.

    `flexlm` or `rlm` is the argv of a status command (`[lmutil, lmstat, -a, -c, 27000@server]`,
    `[rlmutil, rlmstat, -a, -c, 5053@server]`), run without a shell every `interval` seconds and
    given `timeout` seconds; the pool then follows that server's count of `feature` (by default
    the pool's own name). `count` is the total until the first reading (or for good, without a
    command).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    count: int | None = Field(default=None, ge=0, strict=True)
    flexlm: tuple[str, ...] | None = Field(default=None, min_length=1)
    rlm: tuple[str, ...] | None = Field(default=None, min_length=1)
    feature: str | None = Field(default=None, min_length=1)
    interval: float = Field(default=30, gt=0)
    timeout: float = Field(default=20, gt=0)

    @model_validator(mode="after")
    def _one_source(self) -> LicencePoolConfig:
        if self.flexlm is not None and self.rlm is not None:
            raise ValueError("give a flexlm or an rlm command, not both")
        if self.count is None and self.command is None:
            raise ValueError("give a count, or a flexlm or rlm command to read it from")
        return self

    @property
    def command(self) -> tuple[str, ...] | None:
        """The status command's argv, or None when the count is fixed."""
        return self.flexlm if self.flexlm is not None else self.rlm

    @property
    def source(self) -> str:
        """Where the pool's total comes from: "flexlm", "rlm" or "manual"."""
        return "flexlm" if self.flexlm is not None else "rlm" if self.rlm is not None else "manual"


class Settings(BaseModel):
    """Everything a Corral process needs to know, read once at start."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    amqp_uri: str
    data_dir: Path
    storage_root: Path
    scheduler_db: str
    registry_db: str
    negotiator_db: str
    licence_db: str
    bands: tuple[Band, ...]
    lease_seconds: float = Field(gt=0)
    heartbeat_seconds: float = Field(gt=0)
    worker_lost_after: float = Field(gt=0)
    redispatch_seconds: float = Field(gt=0)
    rpc_timeout_seconds: float = Field(gt=0)
    max_env_bytes: int = Field(gt=0)
    max_tasks_per_job: int = Field(gt=0)
    log_tail_bytes: int = Field(ge=0)
    max_queued_per_user: int = Field(gt=0)
    aging_seconds: float = Field(gt=0)
    licences: dict[str, LicencePoolConfig] = Field(default_factory=dict)

    @field_validator("bands", mode="before")
    @classmethod
    def _parse_bands(cls, value: Any) -> tuple[Band, ...]:
        try:
            return parse_bands(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("licences", mode="before")
    @classmethod
    def _check_licence_names(cls, value: Any) -> Any:
        if value is None or value == "":  # `licences:` left empty, or its variable unset
            return {}
        if isinstance(value, Mapping):
            for name in value:
                if not isinstance(name, str) or not LICENCE_NAME.fullmatch(name):
                    raise ValueError(f"{name!r} is not a licence name (a letter or digit, then "
                                     "up to 63 letters, digits or _.+-)")
        return value

    @field_validator("licences", mode="after")
    @classmethod
    def _feature_defaults_to_the_pool_name(
            cls, value: dict[str, LicencePoolConfig]) -> dict[str, LicencePoolConfig]:
        return {name: pool if pool.feature is not None else pool.model_copy(update={"feature": name})
                for name, pool in value.items()}

    @model_validator(mode="after")
    def _heartbeat_fits_in_lease(self) -> Settings:
        if self.heartbeat_seconds * 2 > self.lease_seconds:
            raise ValueError(
                f"heartbeat_seconds ({self.heartbeat_seconds}) must be at most half of "
                f"lease_seconds ({self.lease_seconds}) so one lost heartbeat does not expire a lease"
            )
        return self

    def nameko_config(self) -> dict[str, Any]:
        """The dict nameko's own code reads (AMQP_URI and friends) plus ours under CORRAL."""
        return {"AMQP_URI": self.amqp_uri, "CORRAL": self.model_dump(mode="json")}


def settings_from_mapping(raw: Mapping[str, Any], base_dir: Path | None = None) -> Settings:
    """Build settings from an already-loaded config dict (nameko's, or our own loader's)."""
    corral = dict(raw.get("CORRAL") or {})
    base = base_dir or Path.cwd()
    data_dir = Path(str(corral.pop("data_dir", "./data")))
    if not data_dir.is_absolute():
        data_dir = (base / data_dir).resolve()
    storage_root = Path(str(corral.pop("storage_root", "") or data_dir / "storage"))
    if not storage_root.is_absolute():
        storage_root = (base / storage_root).resolve()
    databases = dict(corral.pop("databases", None) or {})
    values: dict[str, Any] = {
        "amqp_uri": raw.get("AMQP_URI") or "amqp://guest:guest@127.0.0.1:5672/",
        "data_dir": data_dir,
        "storage_root": storage_root,
        "scheduler_db": databases.pop("scheduler", "") or f"sqlite:///{data_dir / 'scheduler.db'}",
        "registry_db": databases.pop("registry", "") or f"sqlite:///{data_dir / 'registry.db'}",
        "negotiator_db": databases.pop("negotiator", "") or f"sqlite:///{data_dir / 'negotiator.db'}",
        "licence_db": databases.pop("licence", "") or f"sqlite:///{data_dir / 'licence.db'}",
    }
    if databases:
        raise ConfigError(f"CORRAL.databases: unknown service {sorted(databases)[0]!r}")
    defaults = {
        "bands": {"low": [0, 9], "normal": [10, 99], "high": [100, 1000]},
        "lease_seconds": 20,
        "heartbeat_seconds": 3,
        "worker_lost_after": 10,
        "redispatch_seconds": 30,
        "rpc_timeout_seconds": 10,
        "max_env_bytes": 32768,
        "max_tasks_per_job": 100000,
        "log_tail_bytes": 4096,
        "max_queued_per_user": 1000,
        "aging_seconds": 300,
    }
    values.update(defaults)
    values.update(corral)
    try:
        return Settings(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "CORRAL"
        raise ConfigError(f"CORRAL.{where}: {error['msg']}") from None


def load_settings(path: str | os.PathLike[str] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Read the config file named by `path`, $CORRAL_CONFIG, or deploy/config.yaml."""
    env = os.environ if environ is None else environ
    config_path = Path(path or env.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_PATH)
    try:
        raw = yaml.safe_load(config_path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {config_path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {config_path} is not valid YAML: {exc}") from None
    return settings_from_mapping(_resolve(raw, env))
