"""What a new user meets in the first hour, through the real `corral` command on a real farm."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.errors import InvalidArgument
from shared.rpc import farm_rpc
from tests.farm import CONFIG, ROOT, Farm


def corral(farm: Farm, *args: str, cwd: Path = ROOT, timeout: float = 120,
           **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**farm.env, "CORRAL_CONFIG": str(CONFIG), **env}
    environment.pop("PYTHONWARNINGS")  # what a user's terminal has: no filter of ours
    return subprocess.run([sys.executable, "-m", "services.cli", *args], env=environment,
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_a_mistyped_option_is_an_error_naming_it_and_the_close_one(farm: Farm) -> None:
    done = corral(farm, "submit", "--prority", "500", "--", "echo", "hi")
    assert done.returncode == 2
    assert "No such option: --prority" in done.stderr and "--priority" in done.stderr
    assert "Traceback" not in done.stderr


def test_with_the_services_down_a_command_says_which_and_how_to_start_it_at_once(
        farm: Farm) -> None:
    started = time.monotonic()
    done = corral(farm, "submit", "--", "true")
    assert time.monotonic() - started < 15
    assert done.returncode == 3
    assert "the scheduler service is not running" in done.stderr
    assert "corral up" in done.stderr
    assert "Traceback" not in done.stderr and "EventletDeprecationWarning" not in done.stderr
    farm.start_service("registry")
    assert "the registry service" not in corral(farm, "workers").stderr


def test_a_request_nobody_took_in_time_never_runs_later(farm: Farm) -> None:
    farm.start_service("scheduler")
    farm.kill("scheduler")  # its request queue stays, with nobody taking from it
    try:
        with farm_rpc(farm.amqp_uri, timeout=1) as rpc:
            # Straight to the client, past the check for a consumer, as a request sent just
            # before a service died would be.
            rpc._client.scheduler.submit_job({"tasks": [{"command": ["true"]}]})
        raise AssertionError("the call should have timed out")
    except Exception as exc:
        assert "did not answer within 1 s" in str(exc)
    time.sleep(1.5)
    farm.start_service("scheduler")
    time.sleep(2)
    assert farm.rpc.scheduler.list_jobs()["total"] == 0


def test_a_submit_repeated_under_its_key_returns_the_first_job(farm: Farm) -> None:
    farm.start_service("scheduler")
    first = corral(farm, "submit", "--json", "--key", "shot010-comp-v3", "--", "true")
    again = corral(farm, "submit", "--key", "shot010-comp-v3", "--", "true")
    job = json.loads(first.stdout)
    assert f"submitted job {job['id']}" in again.stdout
    assert "already submitted under this key" in again.stdout
    assert farm.rpc.scheduler.list_jobs()["total"] == 1


def test_paths_are_the_submitters_and_frames_work_on_any_command(farm: Farm,
                                                                   tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "make_proxies.py").write_text(
        "import sys, pathlib\n"
        "pathlib.Path(f'proxy_{sys.argv[1]}_{sys.argv[2]}.txt').write_text('ok')\n")
    farm.start(workers=1)
    done = corral(farm, "submit", "--wait", "--frames", "1-4", "--chunk", "2", "--",
                  "python3", "make_proxies.py", "{start}", "{end}", cwd=project)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in project.glob("proxy_*")) == ["proxy_1_2.txt", "proxy_3_4.txt"]
    done = corral(farm, "submit", "--wait", "python", "make_proxies.py", "--", "9", "9",
                  cwd=project)
    assert done.returncode == 0, done.stderr
    assert (project / "proxy_9_9.txt").exists()
    done = corral(farm, "submit", "--wait", "--shell", "--", "echo", "hi", ">", "out.txt",
                  cwd=project)
    assert done.returncode == 0, done.stderr
    assert (project / "out.txt").read_text() == "hi\n"
    assert not (ROOT / "out.txt").exists()


def test_a_job_no_host_may_serve_ends_failed_and_why_names_the_exclusion(farm: Farm,
                                                                          tmp_path: Path) -> None:
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps({"name": "bad-host", "tasks": [
        {"command": ["false"]}, {"command": ["false"]}, {"command": ["false"]},
        {"command": ["true"]}, {"command": ["true"]}]}))
    farm.start(workers=1)
    done = corral(farm, "submit", "--wait", "--json", "--spec", str(spec), timeout=90)
    assert done.returncode == 1, done.stderr
    job = json.loads(done.stdout)
    assert job["state"] == "failed"
    fourth = job["tasks"][3]
    assert fourth["state"] == "failed"
    assert "is excluded from this job after 3 failures; no other host serves pool cpu" \
        in fourth["reason"]
    why = corral(farm, "why", str(fourth["id"]))
    assert "excluded from this job after 3 failures" in why.stdout
    retried = corral(farm, "retry", str(job["id"]), "--json")
    assert json.loads(retried.stdout)["retried_tasks"] == 5


def test_small_things_that_misled(farm: Farm, tmp_path: Path) -> None:
    farm.start_service("scheduler")
    assert "--task" not in corral(farm, "pause", "--help").stdout
    helped = corral(farm, "submit", "--help").stdout
    for option in ("--frames", "--chunk", "--movie", "--cores", "--memory", "--gpus",
                   "--licence", "--after", "--key"):
        assert option in helped, option
    bogus = corral(farm, "jobs", "--state", "bogus")
    assert bogus.returncode == 1 and "'bogus' is not a job state" in bogus.stderr
    job = json.loads(corral(farm, "submit", "--json", "--pool", "nowhere", "--", "true").stdout)
    (task_id,) = [t["id"] for t in farm.rpc.scheduler.get_job(job["id"])["tasks"]]
    why = corral(farm, "why", str(task_id))
    assert f"task {task_id} is queued [no_worker]: no worker serves pool nowhere" in why.stdout
    other = json.loads(corral(farm, "submit", "--json", "--pool", "nowhere", "--", "true").stdout)
    (last,) = [t["id"] for t in farm.rpc.scheduler.get_job(other["id"])["tasks"]]
    assert corral(farm, "requeue", str(last)).stdout.strip() == \
        f"task {last}: queued, first in its band"
    listed = json.loads(corral(farm, "jobs", "--json").stdout)["jobs"]
    assert all(isinstance(j["depends_on"], list) for j in listed)
    corral(farm, "pause", str(job["id"]))
    table = corral(farm, "jobs").stdout
    assert any(line.split("│")[4].strip() == "paused" for line in table.splitlines()
               if f"│ {job['id']} " in line)


def test_broker_advice_fits_the_failure_and_db_current_says_where_it_looked(
        farm: Farm, tmp_path: Path) -> None:
    wrong = farm.amqp_uri.replace("guest:guest@", "guest:wrong@")
    done = corral(farm, "jobs", CORRAL_AMQP_URI=wrong)
    assert done.returncode == 3
    assert "refused the login" in done.stderr and "rabbitmq-server -detached" not in done.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {key: value for key, value in farm.env.items() if key != "CORRAL_DATA_DIR"}
    done = subprocess.run([sys.executable, "-m", "services.cli", "db", "current"],
                          env={**env, "CORRAL_CONFIG": str(CONFIG)}, cwd=elsewhere,
                          capture_output=True, text=True, timeout=60)
    assert f"no database file at {elsewhere.resolve() / 'data' / 'scheduler.db'}" in \
        done.stderr.replace("\n", " ") or f"{elsewhere.resolve()}/data/scheduler.db" in \
        done.stderr.replace("\n", "")


def test_a_refused_request_is_one_line_in_the_farm_log(farm: Farm) -> None:
    farm.start_service("scheduler")
    done = corral(farm, "submit", "--priority", "5000", "--", "true")
    assert done.returncode == 1
    time.sleep(1)
    log = (farm.directory / "scheduler.log").read_text()
    assert "refused scheduler.submit_job: priority: 5000 is outside every band" in log
    assert "Traceback" not in log
    assert "Connected to amqp" not in log
    assert os.environ.get("CORRAL_NEVER_SET") is None


def test_status_shows_the_backlog_and_hosts_show_who_is_there(farm: Farm) -> None:
    for service in ("registry", "scheduler", "resource_negotiator"):
        farm.start_service(service)
    farm.start_worker("--host", "vm1", "--cores", "2", "--memory", "4G", name="first")
    second = farm.start_worker("--host", "vm1", "--cores", "4", "--memory", "8G", name="second")
    farm.wait_for(lambda: "had been reported with 2 cores, 4G" in
                  (farm.directory / "second.log").read_text(), 15, "the replaced-totals warning")
    assert "now 4 cores, 8G, 0 GPUs hold for every worker on vm1" in \
        (farm.directory / "second.log").read_text()
    waiting = json.loads(corral(farm, "submit", "--json", "--pool", "gpu", "--priority", "200",
                                "--", "true").stdout)
    json.loads(corral(farm, "submit", "--json", "--pool", "gpu", "--after", str(waiting["id"]),
                      "--", "true").stdout)
    grid = farm.rpc.scheduler.get_job(waiting["id"], 10, 0, ["id", "state"])
    assert [set(task) for task in grid["tasks"]] == [{"id", "state"}]
    with pytest.raises(InvalidArgument, match="task_fields: 'env' is not a task field"):
        farm.rpc.scheduler.get_job(waiting["id"], 10, 0, ["env"])
    status = corral(farm, "status", "--json")
    backlog = json.loads(status.stdout)["backlog"]
    assert {"pool": "gpu", "band": "high", "waiting": 0, "queued": 1, "paused": 0,
            "dispatched": 0} in backlog
    assert any(row["pool"] == "gpu" and row["band"] == "normal" and row["waiting"] == 1
               for row in backlog)
    rows = [[cell.strip() for cell in line.split("│")[1:-1]]
            for line in corral(farm, "status").stdout.splitlines() if "│" in line]
    assert ["gpu", "high", "0", "1", "0", "0", "0"] in rows
    assert ["gpu", "normal", "1", "0", "0", "0", "0"] in rows
    hosts = json.loads(corral(farm, "hosts", "--json").stdout)
    assert [(h["host"], h["live_workers"]) for h in hosts] == [("vm1", 2)]
    farm.kill("first", signal.SIGTERM)
    farm.kill("second", signal.SIGTERM)
    farm.wait_for(lambda: not farm.rpc.registry.list_workers(alive=True), 30, "workers to leave")
    assert json.loads(corral(farm, "hosts", "--json").stdout)[0]["live_workers"] == 0
    rows = [[cell.strip() for cell in line.split("│")[1:-1]]
            for line in corral(farm, "hosts").stdout.splitlines() if "│" in line]
    assert rows[0][:2] == ["vm1", "none"] and rows[0][2].endswith("ago")
    assert second
