"""The studio deployment: docker-compose.yml validates, and everything it runs exists in the image."""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from services.cli import app
from services.farm import SERVICES
from shared.config import CONFIG_ENV_VAR

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CONFIG_FILE = ROOT / "deploy" / "config.yaml"
DOCKER_DEFAULT_STOP_SECONDS = 10


def compose_config(compose_file: Path) -> subprocess.CompletedProcess[str]:
    """`docker-compose config -q`: the compose schema and references checked, no engine needed."""
    validator = shutil.which("docker-compose")
    if validator is None:
        pytest.fail("docker-compose is missing: `bash deploy/test.sh` installs it "
                    "(Debian/Ubuntu: apt-get install docker-compose)")
    # The file's own defaults, not whatever this shell happens to export, are what is validated.
    env = {key: value for key, value in os.environ.items() if not key.startswith("COMPOSE_")}
    return subprocess.run([validator, "-f", str(compose_file), "config", "-q"],
                          cwd=compose_file.parent, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def load_compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return compose


def corral_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services built from this repository's image, by name."""
    return {name: service for name, service in compose["services"].items() if "build" in service}


def command_argv(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def environment(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {str(key): "" if value is None else str(value) for key, value in raw.items()}


def option_value(argv: list[str], option: str) -> str | None:
    for index, part in enumerate(argv):
        if part == option and index + 1 < len(argv):
            return argv[index + 1]
        if part.startswith(option + "="):
            return part.split("=", 1)[1]
    return None


def config_variables() -> set[str]:
    """Every environment variable deploy/config.yaml reads (`${NAME:default}` or `${NAME}`)."""
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)[:}]", CONFIG_FILE.read_text()))


@dataclass
class Image:
    """What deploy/Dockerfile puts where: enough to find a file the containers are told to use."""

    workdir: PurePosixPath = field(default_factory=lambda: PurePosixPath("/"))
    copies: list[tuple[Path, PurePosixPath]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    user: str = "root"

    def repo_file(self, image_path: PurePosixPath) -> Path | None:
        """The repository file that ends up at image_path, or None if nothing is copied there."""
        for source, destination in reversed(self.copies):
            if image_path == destination or destination in image_path.parents:
                return source / image_path.relative_to(destination)
        return None


def parse_dockerfile(text: str) -> Image:
    image = Image()
    instructions = re.sub(r"\\\n", " ", text).splitlines()
    for line in instructions:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "WORKDIR":
            image.workdir = image.workdir / rest.strip()
        elif keyword == "COPY":
            parts = [part for part in shlex.split(rest) if not part.startswith("--")]
            sources, target = parts[:-1], parts[-1]
            destination = image.workdir / target
            for source in sources:
                into_folder = len(sources) > 1 or target.endswith("/")
                image.copies.append((ROOT / source, destination / Path(source).name
                                     if into_folder else destination))
        elif keyword == "ENV":
            parts = shlex.split(rest)
            if parts and "=" not in parts[0]:
                image.env[parts[0]] = " ".join(parts[1:])
            else:
                for part in parts:
                    name, _, value = part.partition("=")
                    image.env[name] = value
        elif keyword == "USER":
            image.user = rest.strip()
    return image


def seconds(duration: str | float) -> float:
    """A compose duration ("1h30m", "90s", "500ms") in seconds."""
    if isinstance(duration, (int, float)):
        return float(duration)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


# --- the validator ------------------------------------------------------------------------------

def test_compose_file_is_valid_for_docker_compose() -> None:
    result = compose_config(COMPOSE_FILE)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("compose_text", "complaint"), [
    ('services: {x: {image: 1, ports: "nope"}}\n', "services.x.ports"),
    ("services: {x: {image: busybox}}\nnetwork: {}\n", "network"),
    ("services: {x: {image: busybox, depends_on: {y: {condition: service_healthy}}}}\n", "'y'"),
], ids=["wrong-types", "unknown-top-level-key", "depends-on-a-missing-service"])
def test_compose_validator_rejects_a_broken_compose_file(tmp_path: Path, compose_text: str,
                                                         complaint: str) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(compose_text)
    result = compose_config(broken)
    assert result.returncode != 0
    assert complaint in result.stderr


# --- what the compose file runs -----------------------------------------------------------------

def test_compose_runs_every_service_that_corral_up_starts() -> None:
    modules = {command_argv(service)[-1] for service in corral_services(load_compose()).values()
               if command_argv(service)[:3] == ["python", "-m", "nameko"]}
    assert set(SERVICES) <= modules


def test_every_corral_command_in_compose_names_a_module_or_script_that_exists() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    services = corral_services(load_compose())
    assert services, "no service in docker-compose.yml is built from deploy/Dockerfile"
    for name, service in services.items():
        argv = command_argv(service)
        if argv[:4] == ["python", "-m", "nameko", "run"]:
            module_file = ROOT / (argv[-1].replace(".", "/") + ".py")
            assert module_file.is_file(), f"{name}: {argv[-1]} is not a module of this repository"
        elif argv[:1] == ["corral"]:
            assert "corral" in scripts, f"{name}: pyproject.toml declares no corral script"
            # --help after the options: an unknown command or option still fails to parse.
            result = CliRunner().invoke(app, argv[1:] + ["--help"])
            assert result.exit_code == 0, f"{name}: `{' '.join(argv)}` is refused: {result.output}"
        else:
            pytest.fail(f"{name}: {argv} runs neither a Corral service nor the corral command")


def test_config_file_the_services_are_started_with_is_in_the_image() -> None:
    image = parse_dockerfile(DOCKERFILE.read_text())
    # The services run in the image's working directory, so a relative --config starts there.
    config_paths = {PurePosixPath(image.env[CONFIG_ENV_VAR])}
    for service in corral_services(load_compose()).values():
        config = option_value(command_argv(service), "--config")
        if config is not None:
            config_paths.add(image.workdir / config)
    for image_path in config_paths:
        assert image.repo_file(image_path) == CONFIG_FILE, f"{image_path} is not deploy/config.yaml"


def test_dockerignore_keeps_everything_the_image_copies() -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    image = parse_dockerfile(DOCKERFILE.read_text())
    for source, _ in image.copies:
        relative = source.relative_to(ROOT).as_posix()
        ignored_by = [p for p in patterns if fnmatch.fnmatch(relative, p.rstrip("/"))]
        assert not ignored_by, f"{relative} is copied into the image but ignored by {ignored_by}"


# --- settings and storage ------------------------------------------------------------------------

def test_compose_sets_only_corral_variables_that_config_yaml_reads() -> None:
    known = config_variables() | {CONFIG_ENV_VAR}
    set_by_compose = {(name, variable) for name, service in load_compose()["services"].items()
                      for variable in environment(service) if variable.startswith("CORRAL_")}
    assert "CORRAL_AMQP_URI" in {variable for _, variable in set_by_compose}
    unknown = sorted(pair for pair in set_by_compose if pair[1] not in known)
    assert not unknown, f"set in docker-compose.yml but read by nothing: {unknown}"


def test_image_sets_only_corral_variables_that_corral_reads() -> None:
    image = parse_dockerfile(DOCKERFILE.read_text())
    corral_variables = {name for name in image.env if name.startswith("CORRAL_")}
    assert {"CORRAL_DATA_DIR", "CORRAL_STORAGE_ROOT"} <= corral_variables
    assert corral_variables <= config_variables() | {CONFIG_ENV_VAR}


def test_workers_share_one_storage_volume_mounted_at_corral_storage_root() -> None:
    compose = load_compose()
    worker = compose["services"]["worker"]
    image = parse_dockerfile(DOCKERFILE.read_text())
    storage_root = environment(worker).get("CORRAL_STORAGE_ROOT") or image.env["CORRAL_STORAGE_ROOT"]
    mounts = {}
    for volume in worker.get("volumes") or []:
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source"), volume["target"]
        mounts[target] = source
    assert storage_root in mounts, f"no volume is mounted at {storage_root}"
    # A named volume, so every replica writes logs and results to the same place.
    assert mounts[storage_root] in (compose.get("volumes") or {})


def test_image_runs_as_a_non_root_user() -> None:
    assert parse_dockerfile(DOCKERFILE.read_text()).user not in ("root", "0", "0:0")


def test_stopping_a_worker_allows_longer_than_dockers_default_to_finish_its_task() -> None:
    worker = load_compose()["services"]["worker"]
    assert seconds(worker.get("stop_grace_period", DOCKER_DEFAULT_STOP_SECONDS)) \
        > DOCKER_DEFAULT_STOP_SECONDS
