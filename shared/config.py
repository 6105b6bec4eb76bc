"""Loads Corral's one YAML config file, with nameko's ${ENV:default} substitution, into typed settings."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.bands import Band, parse_bands
from shared.errors import ConfigError, CorralError
from shared.licences import LICENCE_NAME
from shared.notify import StudioHook
from shared.pathmap import PathMapEntry, check_entries
from shared.resources import parse_size

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

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    count: int | None = Field(default=None, ge=0, strict=True)
    """The pool's total: for good, or until the first reading of its licence server."""
    flexlm: tuple[str, ...] | None = Field(default=None, min_length=1)
    """A FlexLM status command's argv (`[lmutil, lmstat, -a, -c, 27000@server]`), run without a
    shell."""
    rlm: tuple[str, ...] | None = Field(default=None, min_length=1)
    """An RLM status command's argv (`[rlmutil, rlmstat, -a, -c, 5053@server]`), run without a
    shell."""
    feature: str | None = Field(default=None, min_length=1)
    """The licence server's feature to count. Default: the pool's name."""
    interval: float = Field(default=30, gt=0)
    """Seconds between two runs of the status command."""
    timeout: float = Field(default=20, gt=0)
    """Seconds the status command may take before it is killed (the pool keeps its last counts)."""
    per_host: bool = False
    """Count one seat per host (a node-locked licence, Tractor's BladeMax): every task on a host
    holding a seat shares it. Applied at each start, to a pool made earlier too."""

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


class WebSettings(BaseModel):
    """The monitor's own settings (`CORRAL.web`): where it listens, its limits, its cookies."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    bind: str = "127.0.0.1:8480"
    """The address the monitor listens on (`corral web`, `corral up`)."""
    workers: int = Field(default=2, gt=0)
    """gunicorn worker processes."""
    threads: int = Field(default=8, gt=0)
    """Threads in each gunicorn worker."""
    rpc_timeout_seconds: float = Field(default=2.0, gt=0)
    """A service or the broker silent this long gets a 503 naming it, never a hang."""
    upload_limit_bytes: int = Field(default=1 << 30, gt=0)
    """Largest file upload into the storage root; larger ones get 413."""
    session_seconds: float = Field(default=43200, gt=0)
    """How long a page login lasts."""
    secure_cookies: bool = False
    """Cookies only over HTTPS."""
    behind_proxy: bool = False
    """Trust one proxy's X-Forwarded-Proto/-For (cookies are then Secure whenever it says https)."""
    public_read: bool = True
    """Anonymous people may read the pages, the API's reads and /metrics; nobody changes anything
    without logging in, whatever this says."""


class NotificationSettings(BaseModel):
    """How the scheduler tells of jobs' ends (`CORRAL.notifications`): webhooks and e-mail."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    secret: str = ""
    """The key of the HMAC-SHA256 signature (header X-Corral-Signature) of every webhook body;
    give it to receivers so they can check it. Empty: webhooks are sent unsigned."""
    monitor_url: str = ""
    """The monitor's address as receivers reach it, for the link to a job's page. Empty:
    `http://` and `CORRAL.web.bind`."""
    hooks: tuple[StudioHook, ...] = ()
    """Studio-wide hooks added to every job submitted: `{url: ..., events: [failed]}` or
    `{email: ..., events: [...]}` (events: done, failed, cancelled, first_failed_task)."""
    timeout_seconds: float = Field(default=10, gt=0)
    """One try of one delivery (connect, send, answer) gives up after this long."""
    backoff_seconds: float = Field(default=5, gt=0)
    """The pause after a delivery's first failed try; it doubles after each one after."""
    backoff_max_seconds: float = Field(default=300, gt=0)
    """The longest pause between two tries of one delivery."""
    give_up_seconds: float = Field(default=86400, gt=0)
    """A delivery still failing this long after its event is given up (state `failed`)."""
    concurrency: int = Field(default=8, gt=0)
    """Deliveries under way at once."""
    smtp_host: str = ""
    """The SMTP server e-mails go through. Empty: no e-mail (a spec naming an address is
    refused at submit)."""
    smtp_port: int = Field(default=25, gt=0, lt=65536)
    """The SMTP server's port."""
    smtp_sender: str = "corral@localhost"
    """The From address of notification e-mails."""
    smtp_starttls: bool = False
    """Upgrade the SMTP connection with STARTTLS before sending."""
    smtp_username: str = ""
    """Log in to the SMTP server as this user (empty: no login)."""
    smtp_password: str = ""
    """The SMTP user's password."""

    @model_validator(mode="after")
    def _mail_needs_a_server(self) -> NotificationSettings:
        if not self.smtp_host and any(hook.email is not None for hook in self.hooks):
            raise ValueError("a hook mails an address, but no smtp_host is configured")
        return self

    @field_validator("hooks", mode="before")
    @classmethod
    def _none_means_no_hooks(cls, value: Any) -> Any:
        return () if value is None or value == "" else value

    @field_validator("secret", "monitor_url", "smtp_host", "smtp_username", "smtp_password",
                     mode="before")
    @classmethod
    def _always_text(cls, value: Any) -> Any:
        # nameko's loader reads an unset variable's empty default as None; digits stay text.
        return "" if value is None else str(value) if isinstance(value, int | float) else value


BROKER_SCHEMES = ("amqp://", "amqps://")


def split_broker_uris(value: str) -> tuple[str, ...]:
    """The URLs of `amqp_uri`, one per broker node, `;` between them (kombu's failover form)."""
    uris = tuple(part.strip() for part in value.split(";"))
    for uri in uris:
        shown = uri.split("@")[-1] or "an empty one"  # never the password
        if uri.count("://") > 1:
            raise ValueError(f"{shown!r} holds more than one URL: separate several brokers "
                             "with ';'")
        if not uri.startswith(BROKER_SCHEMES):
            raise ValueError(f"{shown!r} is not an AMQP URL: each broker is amqp://user:password"
                             "@host:port/vhost or amqps://...")
    return uris


class Settings(BaseModel):
    """Everything a Corral process needs to know, read once at start.

    Each field's docstring is its entry in docs/configuration.md (`python -m shared.config_reference`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    amqp_uri: str
    """The RabbitMQ broker every part connects to, as an AMQP URL with user, password and vhost;
    on a cluster, one URL per node separated by `;` (each part connects to the first that
    answers and fails over to the others)."""
    queue_type: Literal["classic", "quorum"] = "classic"
    """The kind of Corral's durable queues (the bands, the finish reports, each service's RPC
    and event queues): `quorum` on a RabbitMQ cluster, so they survive the loss of a node.
    Every part of a farm must say the same; changing it needs the farm's queues deleted first."""
    data_dir: Path
    """Folder of the SQLite databases of services given no database URL (relative: to the folder
    the process starts in)."""
    storage_root: Path
    """Task logs and result files: a path every worker and the monitor reach (a share on a studio
    farm). Empty: `storage` in the data folder."""
    scheduler_db: str
    """The scheduler's database (jobs, tasks, attempts, leases): a SQLAlchemy URL such as
    `postgresql://user:password@host/corral_scheduler`. Empty: `scheduler.db` in the data folder."""
    registry_db: str
    """The registry's database (workers, hosts, service heartbeats). Empty: `registry.db` in the
    data folder."""
    negotiator_db: str
    """The resource negotiator's database (hosts' totals and reservations). Empty:
    `negotiator.db` in the data folder."""
    licence_db: str
    """The license service's database (licence pools and leases). Empty: `licence.db` in the data
    folder."""
    cleanup_db: str
    """The cleanup service's database (retention clocks of finished jobs). Empty: `cleanup.db`
    in the data folder."""
    bands: tuple[Band, ...]
    """Priority bands, `name: [low, high]` inclusive and not overlapping; a job whose priority is
    outside every band is refused, and each pool has one queue per band."""
    lease_seconds: float = Field(gt=0)
    """How long a running task's lease lasts; workers renew it every heartbeat, and one that
    expires puts the task back at the head of its band without charging a retry."""
    leader_lease_seconds: float = Field(default=10, gt=0)
    """With several scheduler instances on one farm, how long the leader's lease in the scheduler's
    database lasts: the leader renews it every quarter of this and stops acting a quarter before
    its end, and a standby takes over once it has run out (a killed leader is replaced within
    1.25 times this)."""
    instance_name: str = ""
    """This scheduler instance's name in the leader lease and its health answer (followed by its
    pid). Empty: the host's name, and a leader on this host whose process is gone is replaced at
    once rather than when its lease runs out."""
    heartbeat_seconds: float = Field(gt=0)
    """How often workers renew their leases and report to the registry: at most half of
    `lease_seconds`."""
    worker_lost_after: float = Field(gt=0)
    """A worker silent this long is marked lost, and its reservations and licences are freed."""
    redispatch_seconds: float = Field(gt=0)
    """A task message not claimed after this long is published again (a duplicate is harmless)."""
    rpc_timeout_seconds: float = Field(gt=0)
    """How long a call from one part to another waits for its answer."""
    max_env_bytes: int = Field(gt=0)
    """Most bytes of environment variables a job spec may give a task."""
    max_tasks_per_job: int = Field(gt=0)
    """Most tasks one job may have (its frame ranges and chunks included)."""
    log_tail_bytes: int = Field(ge=0)
    """How much of the end of a failed task's log is kept with its attempt."""
    log_max_bytes: int = Field(ge=0)
    """Most bytes of one attempt's log (0: no cap). Past it, and half its tail again, the
    middle is cut out: the first `log_head_bytes`, a line saying how much was cut, and the
    latest output are kept."""
    log_head_bytes: int = Field(ge=0)
    """How much of the start of a capped log is kept (at most half of `log_max_bytes`)."""
    max_queued_per_user: int = Field(gt=0)
    """Most tasks one user may have waiting; a submit that would pass it is refused."""
    aging_seconds: float = Field(gt=0)
    """Every this many seconds a waiting task's priority rises by one, up to its band's top."""
    licences: dict[str, LicencePoolConfig] = Field(default_factory=dict)
    """Licence pools the license service creates at start if missing, by name (see the licence
    pool settings below)."""
    secret: str = ""
    """The farm's signing secret (at least 32 characters, the same on every service): it signs
    every token. Empty: the local farm's own, made by `corral up` in the data folder."""
    worker_token: str = ""
    """The token workers and pools present (role `worker`). Empty: the local farm's worker
    credential in the data folder."""
    token: str = ""
    """The token the CLI presents. Empty: `corral login`'s, else the local farm's administrator
    credential."""
    revocation_refresh_seconds: float = Field(default=10, gt=0)
    """How often every service re-reads the list of revoked token ids from the registry."""
    login_ttl_seconds: float = Field(default=43200, gt=0)
    """How long a token made by `corral login` lasts."""
    licence_refusal_exit_codes: tuple[int, ...] = ()
    """Exit codes by which a task says it found no licence (OpenCue's 330): it goes back to its
    queue uncharged, after `licence_refusal_delay_seconds`, growing with each refusal."""
    licence_refusal_patterns: tuple[str, ...] = ()
    """Regular expressions, any of which found in a failed task's log tail means it found no
    licence, as an exit code of `licence_refusal_exit_codes` does."""
    licence_refusal_delay_seconds: float = Field(default=30, ge=0)
    """How long a task that found no licence waits before it runs again; doubled at each refusal
    in a row, up to `licence_refusal_max_delay_seconds`."""
    licence_refusal_max_delay_seconds: float = Field(default=600, ge=0)
    """The longest wait between two tries of a task that keeps finding no licence."""
    licence_refusal_limit: int = Field(default=20, ge=1)
    """Refusals in a row after which one more counts as an ordinary failure (the task's retry
    policy decides), so a task that always says so, for whatever reason, cannot loop for ever."""
    path_map: tuple[PathMapEntry, ...] = ()
    """How the paths artists' Windows and macOS machines give are found on the Linux nodes: one
    entry per share, `{windows: 'P:\\', macos: /Volumes/projects, linux: /mnt/projects}`. Workers
    rewrite a task's argv, working directory and environment through it before the task starts
    (see the path map section below)."""
    web: WebSettings = Field(default_factory=WebSettings)
    """The monitor's own settings (`CORRAL.web`): see the monitor's section of the README."""
    notifications: NotificationSettings = Field(default_factory=NotificationSettings)
    """Webhooks and e-mail when jobs end (`CORRAL.notifications`): see the README's
    Notifications."""
    # --- the cleanup service: retention, each measured from when the thing ended --------------
    cleanup_interval_seconds: float = Field(gt=0)
    """How often the cleanup service makes a removal pass."""
    retention_logs_seconds: float | None = Field(ge=0)
    """Seconds after a job ended before its logs are removed (`off`: kept for ever)."""
    retention_scratch_seconds: float | None = Field(ge=0)
    """Seconds after a job ended before its scratch folders are removed (`off`: kept)."""
    retention_results_seconds: float | None = Field(ge=0)
    """Seconds after a job ended before results nobody collected are removed (`off`: kept)."""
    retention_collected_seconds: float = Field(ge=0)
    """Seconds after a result was collected before it is removed (pyLoadBalancer's 60 s)."""
    retention_records_seconds: float | None = Field(ge=0)
    """Seconds after a job ended before its records are purged from the scheduler (`off`: kept)."""
    forget_workers_after_seconds: float | None = Field(ge=0)
    """Workers, and hosts with none left, gone this long are forgotten (`off`: kept)."""
    storage_min_free_bytes: int = Field(ge=0)
    """Below this much free space on the storage root (e.g. 5G) workers start nothing new."""

    @field_validator("amqp_uri", mode="after")
    @classmethod
    def _every_uri_is_amqp(cls, value: str) -> str:
        split_broker_uris(value)
        return value

    @property
    def amqp_uris(self) -> tuple[str, ...]:
        """Each broker node's URL, in the order given (one, unless on a cluster)."""
        return split_broker_uris(self.amqp_uri)

    @field_validator("retention_logs_seconds", "retention_scratch_seconds",
                     "retention_results_seconds", "retention_records_seconds",
                     "forget_workers_after_seconds", mode="before")
    @classmethod
    def _off_means_none(cls, value: Any) -> Any:
        # `off` (YAML reads it as False), `never` or empty: keep for ever.
        return None if value is False or value in ("", "off", "never", None) else value

    @field_validator("storage_min_free_bytes", mode="before")
    @classmethod
    def _parse_size(cls, value: Any) -> Any:
        # A size such as 5G or 500M, or a plain number of bytes.
        if isinstance(value, str):
            try:
                return parse_size(value, field_path="storage_min_free_bytes") * 1024 * 1024
            except CorralError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("bands", mode="before")
    @classmethod
    def _parse_bands(cls, value: Any) -> tuple[Band, ...]:
        try:
            return parse_bands(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("secret", "worker_token", "token", "instance_name", mode="before")
    @classmethod
    def _always_text(cls, value: Any) -> Any:
        # A substituted variable is parsed as YAML again: a secret of digits must stay text.
        return "" if value is None else str(value) if isinstance(value, int | float) else value

    @field_validator("licence_refusal_exit_codes", "licence_refusal_patterns", "path_map",
                     mode="before")
    @classmethod
    def _empty_means_none(cls, value: Any) -> Any:
        # Left empty, or its variable unset: no codes, no patterns.
        return () if value is None or value == "" else value

    @field_validator("licence_refusal_patterns", mode="after")
    @classmethod
    def _patterns_compile(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from None
        return value

    @field_validator("path_map", mode="after")
    @classmethod
    def _one_entry_per_prefix(cls, value: tuple[PathMapEntry, ...]) -> tuple[PathMapEntry, ...]:
        check_entries(value)
        return value

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
    def _log_head_fits_in_the_cap(self) -> Settings:
        if self.log_max_bytes and self.log_head_bytes * 2 > self.log_max_bytes:
            raise ValueError(f"log_head_bytes ({self.log_head_bytes}) must be at most half of "
                             f"log_max_bytes ({self.log_max_bytes}), so a capped log keeps its "
                             "latest output too")
        if self.log_max_bytes and self.log_max_bytes < 4096:
            raise ValueError(f"log_max_bytes ({self.log_max_bytes}) must be 0 (no cap) or at "
                             "least 4096")
        return self

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
        "cleanup_db": databases.pop("cleanup", "") or f"sqlite:///{data_dir / 'cleanup.db'}",
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
        "log_max_bytes": 256 * 1024 * 1024,
        "log_head_bytes": 1024 * 1024,
        "max_queued_per_user": 1000,
        "aging_seconds": 300,
        # Cleanup: logs two weeks after their job ended, scratch an hour, results a week
        # (60 s once collected), job records 90 days, workers gone a week; 5 GB kept free.
        "cleanup_interval_seconds": 60,
        "retention_logs_seconds": 14 * 86400,
        "retention_scratch_seconds": 3600,
        "retention_results_seconds": 7 * 86400,
        "retention_collected_seconds": 60,
        "retention_records_seconds": 90 * 86400,
        "forget_workers_after_seconds": 7 * 86400,
        "storage_min_free_bytes": 5 * 1024 ** 3,
    }
    values.update(defaults)
    values.update(corral)
    try:
        return Settings(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "CORRAL"
        message = str(error["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"CORRAL.{where}: {message}") from None


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
