"""docs/configuration.md is generated from the settings model and deploy/config.yaml, and cannot
drift from them: every setting is described, and each is found where the reference says."""

from pathlib import Path

import pytest

from shared import config_reference
from shared.config import LicencePoolConfig, Settings, settings_from_mapping


def test_configuration_reference_is_up_to_date() -> None:
    assert config_reference.REFERENCE_PATH.read_text() == config_reference.render_reference(), \
        "docs/configuration.md is out of date: run `python -m shared.config_reference`"


@pytest.mark.parametrize("model", [Settings, LicencePoolConfig])
def test_every_setting_has_a_description(model: type[Settings] | type[LicencePoolConfig]) -> None:
    undescribed = [name for name, field in model.model_fields.items() if not field.description]
    assert not undescribed, f"give these a docstring in shared/config.py: {undescribed}"


def test_every_setting_and_variable_of_the_config_file_is_in_the_reference() -> None:
    reference = config_reference.render_reference()
    for name in Settings.model_fields:
        assert f"`{config_reference.yaml_path(name)}`" in reference
    entries = config_reference.config_file_entries(
        config_reference.DEFAULT_CONFIG_PATH.read_text())
    variables = {variable for variable, _ in entries.values() if variable}
    assert "CORRAL_AMQP_URI" in variables
    for variable in variables:
        assert f"`{variable}`" in reference


@pytest.mark.parametrize("field", sorted(config_reference.YAML_PATHS))
def test_each_setting_is_read_from_the_path_the_reference_gives(field: str) -> None:
    raw: dict[str, object] = {}
    *parents, leaf = config_reference.yaml_path(field).split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})  # type: ignore[assignment]
    # A value of the setting's own kind: the broker's is an AMQP URL, the others database URLs.
    marked = "amqp://marked@amqp_uri/" if field == "amqp_uri" else f"sqlite:///marked-{field}.db"
    node[leaf] = marked
    settings = settings_from_mapping(raw, base_dir=Path("/"))
    assert getattr(settings, field) == marked


def test_check_fails_on_an_outdated_reference_and_passes_on_a_current_one(tmp_path: Path) -> None:
    outdated = tmp_path / "configuration.md"
    outdated.write_text("# Configuration reference\n")
    assert config_reference.main(["--check", "--output", str(outdated)]) == 1
    assert config_reference.main(["--output", str(outdated)]) == 0
    assert config_reference.main(["--check", "--output", str(outdated)]) == 0
