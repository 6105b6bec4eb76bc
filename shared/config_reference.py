"""Writes docs/configuration.md, the reference of every setting, from the settings model's fields and
docstrings and the variables and defaults deploy/config.yaml gives them.

    python -m shared.config_reference           # rewrite docs/configuration.md
    python -m shared.config_reference --check   # exit 1 when it is out of date
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic.fields import FieldInfo

from shared.config import (
    _ENV_VAR,
    CONFIG_ENV_VAR,
    DEFAULT_CONFIG_PATH,
    LicencePoolConfig,
    NotificationSettings,
    Settings,
    WebSettings,
)
from shared.pathmap import RULES, PathMapEntry

REFERENCE_PATH = DEFAULT_CONFIG_PATH.parent.parent / "docs" / "configuration.md"
# Where each setting sits in the config file, when not at CORRAL.<field name>
# (settings_from_mapping reads them from there; a test checks each path reaches its field).
YAML_PATHS = {
    "amqp_uri": "AMQP_URI",
    "scheduler_db": "CORRAL.databases.scheduler",
    "registry_db": "CORRAL.databases.registry",
    "negotiator_db": "CORRAL.databases.negotiator",
    "licence_db": "CORRAL.databases.licence",
    "cleanup_db": "CORRAL.databases.cleanup",
}

SECTIONS: dict[str, type[WebSettings] | type[NotificationSettings]] = {
    "web": WebSettings, "notifications": NotificationSettings}
"""Settings that are sections of their own in the file, each setting in them a row."""


def yaml_path(field: str) -> str:
    """The dotted path of a Settings field in the config file."""
    return YAML_PATHS.get(field, f"CORRAL.{field}")


def _walk(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            yield path, value
            yield from _walk(value, path)


def config_file_entries(text: str) -> dict[str, tuple[str | None, str]]:
    """Each setting the config file gives, by path: its environment variable (or None) and the
    default it takes when that variable is unset, as written in the file."""
    entries: dict[str, tuple[str | None, str]] = {}
    for path, value in _walk(yaml.safe_load(text) or {}):
        match = _ENV_VAR.fullmatch(value) if isinstance(value, str) else None
        if match is not None:
            entries[path] = (match.group(1), match.group(2) or "")
        elif not isinstance(value, dict) or path.endswith(".bands"):
            entries[path] = (None, _literal(value))
    return entries


def _literal(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{key} {_literal(item)}" for key, item in value.items())
    if isinstance(value, list):
        return "-".join(str(item) for item in value)
    return "" if value is None else str(value)


def _constraint(field: FieldInfo) -> str:
    """What a value must be, from the field's type and bounds."""
    words = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}
    bounds = [f"{words[name]} {getattr(item, name)}" for item in field.metadata
              for name in words if getattr(item, name, None) is not None]
    annotation = field.annotation
    if get_origin(annotation) is Literal:  # one of a few words
        return " or ".join(f"`{choice}`" for choice in get_args(annotation))
    kind = getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
    kind = {"float": "number", "int": "integer", "str": "text", "Path": "path",
            "tuple[str, ...] | None": "argv list", "int | None": "integer",
            "str | None": "text"}.get(kind, kind)
    return " ".join([kind, *bounds])


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def render_reference(config_text: str | None = None) -> str:
    """docs/configuration.md's text."""
    entries = config_file_entries(config_text if config_text is not None
                                  else DEFAULT_CONFIG_PATH.read_text())
    rows = []
    for name, field in Settings.model_fields.items():
        if name in SECTIONS:  # a section of its own, then one row per setting in it
            rows.append([_code(f"CORRAL.{name}"), "", "(section)", "see the rows below",
                         _one_line(field.description)])
            for inner_name, inner_field in SECTIONS[name].model_fields.items():
                path = f"CORRAL.{name}.{inner_name}"
                variable, default = entries.get(path, (None, ""))
                rows.append([_code(path), _code(variable or ""),
                             _code(default) if default else "(empty)",
                             _constraint(inner_field) if inner_name != "hooks" else "see meaning",
                             _one_line(inner_field.description)])
            continue
        path = yaml_path(name)
        variable, default = entries.get(path, (None, ""))
        if name == "licences":
            default = default or "none"
        rows.append([_code(path), _code(variable or ""), _code(default) if default else "(empty)",
                     _constraint(field) if name not in ("bands", "licences", "path_map")
                     else "see meaning",
                     _one_line(field.description)])
    pool_rows = [[_code(name), _code(str(field.default)) if field.default is not None else "",
                  _constraint(field), _one_line(field.description)]
                 for name, field in LicencePoolConfig.model_fields.items()]
    path_rows = [[_code(name), "yes" if field.is_required() else "", _one_line(field.description)]
                 for name, field in PathMapEntry.model_fields.items()]
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python -m shared.config_reference` from shared/config.py and "
        "deploy/config.yaml; the test suite fails when it is out of date. -->",
        "",
        "Every Corral process (the services, workers, pools, the monitor and the `corral` command) "
        "reads one YAML file: `deploy/config.yaml`, or the file named by "
        f"`{CONFIG_ENV_VAR}` or `--config`. In it, `${{NAME:default}}` takes the environment "
        "variable `NAME`, or `default` when it is unset, so a container or a systemd unit sets "
        "the variables below rather than editing the file. A setting the file does not mention "
        "takes Corral's built-in default. Settings are read once, when a process starts; a wrong "
        "one stops it with an error naming the setting (`CORRAL.lease_seconds: Input should be "
        "greater than 0`).",
        "",
        "## Settings",
        "",
        *_table(rows, ["setting", "variable", "default in deploy/config.yaml",
                                 "value", "meaning"]),
        "",
        "`CORRAL.bands` is a mapping of band name to `[low, high]`, e.g. "
        "`{low: [0, 9], normal: [10, 99], high: [100, 1000]}`.",
        "",
        "## Licence pool settings",
        "",
        "Each entry of `CORRAL.licences` (or of the YAML mapping in `CORRAL_LICENCES`) is a pool "
        "by name, e.g. `houdini: {count: 5}` or "
        "`nuke: {flexlm: [lmutil, lmstat, -a, -c, 27000@licserver], feature: nuke_i}`. Give a "
        "`count`, or a `flexlm` or `rlm` command (not both) to follow a licence server.",
        "",
        *_table(pool_rows, ["setting", "default", "value", "meaning"]),
        "",
        "## Path map",
        "",
        "`CORRAL.path_map` (or the same YAML list in `CORRAL_PATH_MAP`) lists the shared folders "
        "artists' machines and the Linux render nodes name differently, one entry per share, "
        "with `linux` and at least one of `windows` and `macos`:",
        "",
        "```yaml",
        "  path_map:",
        "    - {windows: 'P:\\', macos: /Volumes/projects, linux: /mnt/projects}",
        "    - {windows: '\\\\fileserver\\library', linux: /mnt/library}",
        "```",
        "",
        "On a node with that map, `P:\\shot010\\shot.blend` and "
        "`/Volumes/projects/shot010/shot.blend` both run as `/mnt/projects/shot010/shot.blend`. "
        "An entry that is not one of these forms, or two entries giving the same client prefix, "
        "stop the process with an error naming the entry "
        "(`CORRAL.path_map.1.windows: 'P' is not a Windows path prefix ...`).",
        "",
        *_table(path_rows, ["key", "required", "meaning"]),
        "",
        *[f"- {rule}" for rule in RULES],
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write docs/configuration.md from the settings.")
    parser.add_argument("--check", action="store_true",
                        help="Exit 1 when docs/configuration.md is out of date; write nothing.")
    parser.add_argument("--output", type=Path, default=REFERENCE_PATH)
    options = parser.parse_args(argv)
    text = render_reference()
    if options.check:
        current = options.output.read_text() if options.output.exists() else ""
        if current != text:
            print(f"{options.output} is out of date: run python -m shared.config_reference",
                  file=sys.stderr)
            return 1
        return 0
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(text)
    print(f"wrote {options.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
