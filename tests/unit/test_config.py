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


def test_licence_database_comes_from_its_own_variable_or_is_a_file_in_data_dir() -> None:
    settings = load_settings(DEFAULT_CONFIG_PATH, environ={"CORRAL_DATA_DIR": "/srv/corral"})
    assert settings.licence_db == "sqlite:////srv/corral/licence.db"
    settings = load_settings(DEFAULT_CONFIG_PATH, environ={
        "CORRAL_LICENCE_DB": "postgresql://db/corral_licence"})
    assert settings.licence_db == "postgresql://db/corral_licence"


def test_shipped_config_declares_no_licence_pools() -> None:
    assert load_settings(DEFAULT_CONFIG_PATH, environ={}).licences == {}


def test_licence_pools_are_read_with_their_defaults(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("CORRAL:\n"
                    "  licences:\n"
                    "    houdini: {count: 5}\n"
                    "    nuke: {flexlm: [lmutil, lmstat, -a, -c, 27000@licserver], feature: nuke_i}\n"
                    "    katana: {rlm: [rlmutil, rlmstat, -a], interval: 60, timeout: 5, count: 2}\n")
    pools = load_settings(path, environ={}).licences
    assert (pools["houdini"].count, pools["houdini"].source, pools["houdini"].command,
            pools["houdini"].feature) == (5, "manual", None, "houdini")
    assert pools["nuke"].command == ("lmutil", "lmstat", "-a", "-c", "27000@licserver")
    assert (pools["nuke"].source, pools["nuke"].feature, pools["nuke"].interval,
            pools["nuke"].timeout, pools["nuke"].count) == ("flexlm", "nuke_i", 30, 20, None)
    assert (pools["katana"].source, pools["katana"].feature, pools["katana"].interval,
            pools["katana"].count) == ("rlm", "katana", 60, 2)


def test_licence_pools_can_come_from_their_variable_as_yaml() -> None:
    settings = load_settings(DEFAULT_CONFIG_PATH, environ={
        "CORRAL_LICENCES": "{houdini: {count: 3}, nuke: {rlm: [rlmutil, rlmstat, -a]}}"})
    assert sorted(settings.licences) == ["houdini", "nuke"]
    assert settings.licences["houdini"].count == 3


@pytest.mark.parametrize(("pools", "complaint"), [
    ("{houdini: {count: -1}}", r"CORRAL\.licences\.houdini\.count: "),
    ("{houdini: {count: yes}}", r"CORRAL\.licences\.houdini\.count: "),
    ("{houdini: {}}", r"CORRAL\.licences\.houdini: .*give a count"),
    ("{houdini: {count: 2, colour: red}}", r"CORRAL\.licences\.houdini\.colour: "),
    ("{nuke: {flexlm: [lmutil], rlm: [rlmutil]}}", r"CORRAL\.licences\.nuke: .*not both"),
    ("{nuke: {flexlm: []}}", r"CORRAL\.licences\.nuke\.flexlm: "),
    ("{nuke: {flexlm: lmutil lmstat}}", r"CORRAL\.licences\.nuke\.flexlm: "),
    ("{nuke: {rlm: [rlmutil], interval: 0}}", r"CORRAL\.licences\.nuke\.interval: "),
    ("{'two words': {count: 1}}", r"CORRAL\.licences: .*'two words' is not a licence name"),
    ("[houdini]", r"CORRAL\.licences: "),
])
def test_bad_licence_pool_is_refused_naming_the_pool_and_field(tmp_path: Path, pools: str,
                                                               complaint: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"CORRAL:\n  licences: {pools}\n")
    with pytest.raises(ConfigError, match=complaint):
        load_settings(path, environ={})
