"""The studio deployment: docker-compose.yml and deploy/Dockerfile validate, every long-running service
has a healthcheck, passwords are required, and everything compose runs exists in the image."""

from __future__ import annotations

import fnmatch
import functools
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from services.cli.farm import SERVICES
from services.cli.main import app
from services.pool.main import HAND_BACK_SECONDS, STOP_GRACE_SECONDS
from shared.config import CONFIG_ENV_VAR

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CONFIG_FILE = ROOT / "deploy" / "config.yaml"
DOCKER_DEFAULT_STOP_SECONDS = 10


# Every secret compose needs from .env: the two service passwords, the broker users per role
# (workers, clients) and the farm secret that signs tokens.
PASSWORDS = ("RABBITMQ_PASSWORD", "POSTGRES_PASSWORD", "RABBITMQ_WORKER_PASSWORD",
             "RABBITMQ_CLIENT_PASSWORD", "CORRAL_SECRET")
ENV_EXAMPLE = ROOT / ".env.example"


@functools.cache
def empty_env_file() -> Path:
    """An empty .env (compose wants a file), so a developer's own .env is never read."""
    path = Path(tempfile.mkdtemp(prefix="corral-compose-")) / ".env"
    path.write_text("")
    return path


def compose_config(compose_file: Path, env_file: Path | None = None,
                   variables: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`docker-compose config -q`: the compose schema and references checked, no engine needed.

    Only `variables` and `env_file` are seen by the compose file, never what this shell exports or a
    developer's own .env, so each test says exactly what the file gets.
    """
    validator = shutil.which("docker-compose")
    if validator is None:
        pytest.fail("docker-compose is missing: `bash deploy/test.sh` installs it "
                    "(Debian/Ubuntu: apt-get install docker-compose)")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/"),
           **(variables or {})}
    argv = [validator, "-f", str(compose_file)]
    argv += ["--env-file", str(env_file if env_file is not None else empty_env_file())]
    return subprocess.run([*argv, "config", "-q"], cwd=compose_file.parent, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def passwords_env_file(tmp_path: Path, **overrides: str) -> Path:
    """.env.example with the passwords given, as an operator would fill it in."""
    values = {name: f"test-{name.lower()}" for name in PASSWORDS} | overrides
    lines = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        name = line.partition("=")[0]
        lines.append(f"{name}={values[name]}" if name in values else line)
    env_file = tmp_path / ".env"
    env_file.write_text("\n".join(lines) + "\n")
    return env_file


@functools.cache
def load_compose() -> dict[str, Any]:
    """docker-compose.yml as compose itself renders it (anchors merged, variables filled in)."""
    validator = shutil.which("docker-compose")
    if validator is None:
        pytest.fail("docker-compose is missing: `bash deploy/test.sh` installs it")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/")}
    env |= {name: f"test-{name.lower()}" for name in PASSWORDS}
    done = subprocess.run([validator, "-f", str(COMPOSE_FILE), "--env-file", str(empty_env_file()), "config"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    compose: dict[str, Any] = yaml.safe_load(done.stdout)
    return compose


def long_running(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services compose keeps running (restarts), as against one-shot jobs like migrate."""
    return {name: service for name, service in compose["services"].items()
            if service.get("restart", "no") != "no"}


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
    """What deploy/Dockerfile puts where: enough to find a file the containers are told to use.

    workdir, copies, env, user and entrypoint are the final stage's (the image that runs);
    context_copies are every stage's copies from the build context.
    """

    stages: int = 0
    workdir: PurePosixPath = field(default_factory=lambda: PurePosixPath("/"))
    copies: list[tuple[Path, PurePosixPath]] = field(default_factory=list)
    context_copies: list[Path] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    user: str = "root"
    entrypoint: str = ""

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
        if keyword == "FROM":
            # A new stage starts from its base image: nothing of the previous stage carries over.
            image = Image(stages=image.stages + 1, context_copies=image.context_copies)
        elif keyword == "WORKDIR":
            image.workdir = image.workdir / rest.strip()
        elif keyword == "COPY":
            words = shlex.split(rest)
            if any(word.startswith("--from=") for word in words):
                continue  # from another stage, not from the repository
            parts = [part for part in words if not part.startswith("--")]
            sources, target = parts[:-1], parts[-1]
            destination = image.workdir / target
            for source in sources:
                into_folder = len(sources) > 1 or target.endswith("/")
                image.copies.append((ROOT / source, destination / Path(source).name
                                     if into_folder else destination))
                image.context_copies.append(ROOT / source)
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
        elif keyword == "ENTRYPOINT":
            image.entrypoint = rest.strip()
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

def test_compose_file_is_valid_for_docker_compose(tmp_path: Path) -> None:
    result = compose_config(COMPOSE_FILE, passwords_env_file(tmp_path))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("missing", PASSWORDS)
def test_compose_refuses_to_render_without_each_password(tmp_path: Path, missing: str) -> None:
    result = compose_config(COMPOSE_FILE, passwords_env_file(tmp_path, **{missing: ""}))
    assert result.returncode != 0
    assert f"set {missing} in .env" in result.stderr


def test_compose_refuses_the_env_example_until_its_passwords_are_set() -> None:
    result = compose_config(COMPOSE_FILE, ENV_EXAMPLE)
    assert result.returncode != 0
    assert "PASSWORD in .env" in result.stderr


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


def nameko_module_exists(module: str) -> bool:
    path = ROOT / module.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_every_corral_command_in_compose_names_a_module_or_script_that_exists() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    services = corral_services(load_compose())
    assert services, "no service in docker-compose.yml is built from deploy/Dockerfile"
    for name, service in services.items():
        argv = command_argv(service)
        if argv[:4] == ["python", "-m", "nameko", "run"]:
            assert nameko_module_exists(argv[-1]), \
                f"{name}: {argv[-1]} is not a module of this repository"
        elif argv[:1] == ["corral"]:
            assert "corral" in scripts, f"{name}: pyproject.toml declares no corral script"
            # --help after the options: an unknown command or option still fails to parse.
            result = CliRunner().invoke(app, argv[1:] + ["--help"])
            assert result.exit_code == 0, f"{name}: `{' '.join(argv)}` is refused: {result.output}"
        elif argv[:1] == ["gunicorn"]:
            module, _, factory = argv[-1].partition(":")
            assert factory.endswith("()"), f"{name}: gunicorn should call the app factory: {argv}"
            app_module = importlib.import_module(module)
            assert callable(getattr(app_module, factory[:-2], None)), \
                f"{name}: {module} has no {factory[:-2]}"
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
    for source in image.context_copies:
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


def test_pools_share_one_storage_volume_mounted_at_corral_storage_root() -> None:
    compose = load_compose()
    pool = compose["services"]["pool"]
    image = parse_dockerfile(DOCKERFILE.read_text())
    storage_root = environment(pool).get("CORRAL_STORAGE_ROOT") or image.env["CORRAL_STORAGE_ROOT"]
    mounts = {}
    for volume in pool.get("volumes") or []:
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source"), volume["target"]
        mounts[target] = source
    assert storage_root in mounts, f"no volume is mounted at {storage_root}"
    # A named volume, so every replica writes logs and results to the same place.
    assert mounts[storage_root] in (compose.get("volumes") or {})


def test_stopping_a_pool_gives_its_workers_their_grace_and_the_hand_back_before_docker_kills_it(
) -> None:
    pool = load_compose()["services"]["pool"]
    argv = command_argv(pool)
    stop_grace = float(option_value(argv, "--stop-grace") or STOP_GRACE_SECONDS)
    docker_waits = seconds(pool.get("stop_grace_period", DOCKER_DEFAULT_STOP_SECONDS))
    assert docker_waits > stop_grace + HAND_BACK_SECONDS
    assert stop_grace > DOCKER_DEFAULT_STOP_SECONDS


def test_pool_service_scales_to_several_containers() -> None:
    pool = load_compose()["services"]["pool"]
    assert command_argv(pool)[:2] == ["corral", "pool"]
    assert "replicas" in pool.get("deploy", {})
    # A fixed name or a published host port would stop a second container from starting.
    assert "container_name" not in pool and "hostname" not in pool
    assert not pool.get("ports")


# --- health, order, credentials ------------------------------------------------------------------

def test_every_long_running_service_has_a_healthcheck() -> None:
    services = long_running(load_compose())
    assert {"rabbitmq", "postgres", "registry", "scheduler", "pool"} <= set(services)
    missing = sorted(name for name, service in services.items()
                     if not (service.get("healthcheck") or {}).get("test"))
    assert not missing, f"no healthcheck: {missing}"


def test_each_corral_service_healthcheck_asks_that_service_over_rpc() -> None:
    for name, service in corral_services(load_compose()).items():
        argv = command_argv(service)
        if argv[:4] != ["python", "-m", "nameko", "run"]:
            continue
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD", f"{name}: exec form, so a missing program fails loudly"
        assert test[1:3] == ["corral", "health"], f"{name}: {test}"
        assert test[3] == argv[-1].rsplit(".", 1)[-1], f"{name}'s healthcheck asks {test[3]}"
        result = CliRunner().invoke(app, [*test[2:], "--help"])
        assert result.exit_code == 0, f"{name}: `{' '.join(test[1:])}` is refused: {result.output}"


def test_monitor_healthcheck_asks_its_healthz_page() -> None:
    monitor = load_compose()["services"]["monitor"]
    assert command_argv(monitor)[0] == "gunicorn"
    assert any("/healthz" in part for part in monitor["healthcheck"]["test"])


def test_services_wait_for_healthy_dependencies_and_the_migration() -> None:
    compose = load_compose()
    for name, service in corral_services(compose).items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on without conditions"
        for dependency, rule in depends.items():
            wanted = ("service_completed_successfully"
                      if compose["services"][dependency].get("restart", "no") == "no"
                      else "service_healthy")
            assert rule.get("condition") == wanted, f"{name} -> {dependency}: {rule}"
        if command_argv(service)[:3] == ["python", "-m", "nameko"]:
            assert "migrate" in depends and "rabbitmq" in depends, name


def test_migrate_runs_corral_db_upgrade_once() -> None:
    migrate = load_compose()["services"]["migrate"]
    assert command_argv(migrate) == ["corral", "db", "upgrade"]
    assert migrate.get("restart") == "no"
    assert {"CORRAL_SCHEDULER_DB", "CORRAL_REGISTRY_DB", "CORRAL_NEGOTIATOR_DB",
            "CORRAL_LICENCE_DB"} <= set(environment(migrate))


def test_passwords_come_only_from_the_environment_and_are_required() -> None:
    text = COMPOSE_FILE.read_text()
    for password in PASSWORDS:
        uses = re.findall(r"\$\{" + password + r"([^}]*)\}", text)
        assert uses, f"{password} is not used"
        assert all(use.startswith(":?") for use in uses), f"{password} has a default: {uses}"
    assert {line.partition("=")[0] for line in ENV_EXAMPLE.read_text().splitlines()} >= set(PASSWORDS)


def test_no_guest_account_and_no_published_management_port() -> None:
    compose = load_compose()
    rabbitmq = environment(compose["services"]["rabbitmq"])
    assert rabbitmq.get("RABBITMQ_DEFAULT_USER") not in (None, "", "guest")
    for name, service in compose["services"].items():
        uri = environment(service).get("CORRAL_AMQP_URI", "")
        assert "guest" not in uri, f"{name} connects as guest"
        published = [str(port.get("target") if isinstance(port, dict) else port)
                     for port in service.get("ports") or []]
        assert not any("15672" in port for port in published), f"{name} publishes {published}"


# --- the image -----------------------------------------------------------------------------------

def test_image_runs_as_a_non_root_user() -> None:
    assert parse_dockerfile(DOCKERFILE.read_text()).user not in ("root", "0", "0:0")


def test_image_is_multi_stage_with_tini_as_its_exec_form_entrypoint() -> None:
    image = parse_dockerfile(DOCKERFILE.read_text())
    assert image.stages >= 2
    entrypoint = json.loads(image.entrypoint)  # exec form is a JSON array; shell form is not
    assert Path(entrypoint[0]).name == "tini" and entrypoint[1] == "--"


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    program = Path(sys.executable).with_name("hadolint")
    if not program.is_file():
        pytest.fail("hadolint is missing: it comes with the test extras (pip install -e '.[test]')")
    return subprocess.run([str(program), "--no-color", str(dockerfile)], capture_output=True,
                          text=True, timeout=120, check=False)


def test_dockerfile_passes_hadolint() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_a_dockerfile_with_a_shell_form_entrypoint(tmp_path: Path) -> None:
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM python:3.11-slim\nENTRYPOINT corral up\n")
    result = hadolint(broken)
    assert result.returncode != 0
    assert "DL3025" in result.stdout
