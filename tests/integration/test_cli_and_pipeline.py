"""What a newcomer and a pipeline script do: `corral up`, `corral submit`, the README's script."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.farm import CONFIG, ROOT, Farm

EXAMPLE = ROOT / "deploy" / "examples" / "pipeline_submit.py"


def corral(farm: Farm, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args],
                          env={**farm.env, "CORRAL_CONFIG": str(CONFIG)}, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_readme_pipeline_script_submits_and_sees_its_job_finish(farm: Farm) -> None:
    script = EXAMPLE.read_text()
    assert script.strip() in (ROOT / "README.md").read_text()  # the README shows this very script
    assert len(script.strip().splitlines()) <= 12
    farm.start(workers=1)
    farm.rpc.registry.create_user("pipeline", "artist")
    token = farm.rpc.registry.create_token("pipeline", "nightly")["token"]
    done = subprocess.run([sys.executable, str(EXAMPLE)], env={**farm.env, "CORRAL_TOKEN": token},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("done {'done': 4} as pipeline")


def test_submit_wait_reports_the_finished_job(farm: Farm) -> None:
    farm.start(workers=1)
    done = corral(farm, "submit", "--wait", "--json", "--name", "echo", "--", "echo", "hi there")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["state"] == "done" and job["name"] == "echo"
    assert job["tasks"][0]["command"] == ["echo", "hi there"]
    listing = json.loads(corral(farm, "jobs", "--json").stdout)
    assert [j["id"] for j in listing["jobs"]] == [job["id"]]
    workers = json.loads(corral(farm, "workers", "--json").stdout)
    assert len(workers) == 1 and workers[0]["state"] in ("idle", "busy")


def test_submit_of_a_bad_spec_names_the_field(farm: Farm) -> None:
    farm.start_service("scheduler")
    done = corral(farm, "submit", "--priority", "5000", "--", "true")
    assert done.returncode == 1
    assert "priority: 5000 is outside every band" in done.stderr


def test_up_without_a_broker_says_how_to_start_one(farm: Farm) -> None:
    farm.env["CORRAL_AMQP_URI"] = "amqp://guest:guest@127.0.0.1:1/"
    done = corral(farm, "up")
    assert done.returncode == 3
    assert "rabbitmq-server -detached" in done.stderr


def test_up_runs_the_whole_farm_and_stops_cleanly_on_ctrl_c(farm: Farm) -> None:
    # corral up runs a pool of at most --workers; --min-idle 2 has it start both at once.
    up = subprocess.Popen([sys.executable, "-m", "services.cli", "up", "--workers", "2",
                           "--min-idle", "2", "--config", str(CONFIG)], env=farm.env, cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)
    try:
        farm.wait_for(lambda: len(farm.rpc.registry.list_workers(alive=True)) == 2, 60,
                      "corral up to start two workers")
        done = corral(farm, "submit", "--wait", "--json", "--", "true")
        assert json.loads(done.stdout)["state"] == "done"
    finally:
        os.killpg(up.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        output, _ = up.communicate(timeout=60)
    assert up.returncode == 0, output
    assert "stopped" in output
    time.sleep(0.5)
    leftovers = subprocess.run(["pgrep", "-g", str(up.pid)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == ""


def test_submit_of_a_python_template_runs_one_task_per_chunk(farm: Farm, tmp_path: Path) -> None:
    farm.start(workers=2)
    ledger = tmp_path / "ledger"
    script = tmp_path / "frames.py"
    script.write_text(f"import sys\nopen({str(ledger)!r}, 'a').write(sys.argv[1] + '\\n')\n")
    done = corral(farm, "submit", "--wait", "--json", "python", str(script), "--frames", "1-5",
                  "--chunk", "2", "--", "{frames}")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert [t["name"] for t in job["tasks"]] == ["script.1-2", "script.3-4", "script.5"]
    assert sorted(ledger.read_text().split()) == ["1,2", "3,4", "5"]


def test_plain_command_named_like_a_template_still_runs_as_a_command(farm: Farm) -> None:
    farm.start(workers=1)
    done = corral(farm, "submit", "--wait", "--json", "--", "python", "-c", "print('plain')")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tasks"][0]["command"] == ["python", "-c", "print('plain')"]
