"""deploy/systemd/corral-pool.service: systemd accepts it, it stops the pool the way Corral's stop
expects (only the pool signalled, time for its grace and hand-back), and it runs a `corral pool`
command that parses with the example settings."""

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli.main import app
from services.pool.main import HAND_BACK_SECONDS
from tests.farm import ROOT

UNIT = ROOT / "deploy" / "systemd" / "corral-pool.service"
ENV_EXAMPLE = ROOT / "deploy" / "systemd" / "corral-pool.env"
INSTALLED_CORRAL = "/opt/corral/bin/corral"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def example_env() -> dict[str, str]:
    pairs = [line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return {name: value for name, value in pairs}


def systemd_seconds(text: str) -> float:
    units = {"min": 60.0, "s": 1.0, "h": 3600.0, "ms": 0.001}
    parts = re.findall(r"(\d+)\s*(min|ms|s|h)", text)
    assert parts, f"not a systemd time span: {text}"
    return sum(float(number) * units[unit] for number, unit in parts)


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: `bash deploy/test.sh` installs it (apt-get install "
                    "systemd)")
    # verify wants ExecStart's program to exist: this checkout's corral stands in for the install.
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace(INSTALLED_CORRAL, str(Path(sys.executable).parent /
                                                                   "corral")))
    done = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True,
                          timeout=60, check=False)
    # verify exits 0 on directives it ignores; what it says about them is the failure.
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_stopping_signals_only_the_pool_and_waits_past_its_grace_and_hand_back() -> None:
    service = unit()["Service"]
    assert service["KillMode"] == "mixed"
    grace = float(example_env()["POOL_STOP_GRACE"])
    assert systemd_seconds(service["TimeoutStopSec"]) > grace + HAND_BACK_SECONDS


def test_the_unit_runs_corral_pool_with_options_that_parse() -> None:
    service = unit()["Service"]
    env = example_env()
    argv = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)] or '""', service["ExecStart"]).split()
    assert argv[:2] == [INSTALLED_CORRAL, "pool"]
    args = [arg.strip('"') for arg in argv[1:]]
    result = CliRunner().invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output


def test_the_unit_waits_for_the_shared_storage_the_example_names() -> None:
    assert unit()["Unit"]["RequiresMountsFor"] == example_env()["CORRAL_STORAGE_ROOT"]
