"""`bash deploy/farm.sh`, the README's one command, starts a farm that runs a job and stops cleanly
on Ctrl-C (here on the test's own vhost and data folder; its RabbitMQ install step is exercised with
stand-ins in tests/unit/test_setup_script.py)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.farm import ROOT, Farm

pytestmark = pytest.mark.integration


def test_farm_script_starts_a_farm_that_runs_a_job(farm: Farm) -> None:
    env = {**farm.env, "CORRAL_VENV": sys.prefix}
    script = subprocess.Popen(["bash", str(ROOT / "deploy" / "farm.sh"), "--workers", "1"],
                              env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        farm.wait_for(lambda: len(farm.rpc.registry.list_workers(alive=True)) == 1, 120,
                      "deploy/farm.sh to start a worker")
        done = subprocess.run([sys.executable, "-m", "services.cli", "submit", "--wait", "--json",
                               "--", "echo", "from farm.sh"], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["state"] == "done"
    finally:
        os.killpg(script.pid, signal.SIGINT)  # Ctrl-C in its terminal
        output, _ = script.communicate(timeout=90)
    assert script.returncode == 0, output
    # Its SQLite files went where the environment said, not into the checkout.
    assert any(Path(farm.env["CORRAL_DATA_DIR"]).glob("*.db"))
