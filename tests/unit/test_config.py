"""The config file: ${ENV:default} substitution and clear errors."""

from pathlib import Path

import pytest

from shared.config import DEFAULT_CONFIG_PATH, load_settings
from shared.errors import ConfigError


def test_shipped_config_loads_with_defaults() -> None:
    settings = load_settings(DEFAULT_CONFIG_PATH, environ={})
    assert settings.amqp_uri == "amqp://guest:guest@127.0.0.1:5672/"
    assert [b.name for b in settings.bands] == ["low", "normal", "high"]
    assert settings.scheduler_db.startswith("sqlite:///") and settings.lease_seconds == 20


def test_environment_overrides_defaults_with_types() -> None:
    settings = load_settings(DEFAULT_CONFIG_PATH, environ={
        "CORRAL_LEASE_SECONDS": "7", "CORRAL_SCHEDULER_DB": "postgresql://db/corral",
        "CORRAL_DATA_DIR": "/srv/corral"})
    assert settings.lease_seconds == 7
    assert settings.scheduler_db == "postgresql://db/corral"
    assert settings.registry_db == "sqlite:////srv/corral/registry.db"
    assert settings.negotiator_db == "sqlite:////srv/corral/negotiator.db"
    assert settings.storage_root == Path("/srv/corral/storage")


def test_heartbeat_longer_than_half_a_lease_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="heartbeat_seconds"):
        load_settings(DEFAULT_CONFIG_PATH, environ={"CORRAL_HEARTBEAT_SECONDS": "15"})


def test_overlapping_bands_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("CORRAL:\n  bands: {a: [0, 10], b: [10, 20]}\n")
    with pytest.raises(ConfigError, match="overlap"):
        load_settings(path, environ={})


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml", environ={})


def test_negotiator_database_comes_from_its_own_variable() -> None:
    settings = load_settings(DEFAULT_CONFIG_PATH, environ={
        "CORRAL_NEGOTIATOR_DB": "postgresql://db/corral_negotiator"})
    assert settings.negotiator_db == "postgresql://db/corral_negotiator"
    assert settings.registry_db.startswith("sqlite:///")
