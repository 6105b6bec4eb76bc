"""A job submitted from a Windows machine runs on a Linux worker with a path map: its argv, cwd
and environment name the node's paths, while the stored task keeps what was submitted."""

import json
import sys
from pathlib import Path

from shared.storage import task_log_path
from tests.farm import Farm

SEES = ("import json, os, sys; json.dump({'argv': sys.argv[1:], 'cwd': os.getcwd(), "
        "'scene': os.environ['SCENE_PATH']}, open(os.environ['CORRAL_RESULT'], 'w'))")


def test_a_windows_job_sees_the_linux_paths_of_the_node(farm: Farm, tmp_path: Path) -> None:
    projects = tmp_path / "projects"
    (projects / "shot010").mkdir(parents=True)
    farm.start_service("registry")
    farm.start_service("scheduler")
    path_map = json.dumps([{"windows": "P:\\", "macos": "/Volumes/projects",
                            "linux": str(projects)}])
    farm.start_worker(env={"CORRAL_PATH_MAP": path_map})
    command = [sys.executable, "-c", SEES, "P:\\shot010\\shot.blend",
               "--output=p:\\renders\\f_####.exr", "/Volumes/projects/shot010/cache"]
    job = farm.submit([{"command": command}], name="from-windows", cwd="P:\\shot010",
                      env={"SCENE_PATH": "P:\\shot010;\\\\other\\share\\x"})
    finished = farm.wait_for_job(job["id"])
    assert finished["state"] == "done", finished
    task = farm.rpc.scheduler.get_task(finished["tasks"][0]["id"])
    assert task["result"] == {
        "argv": [f"{projects}/shot010/shot.blend", f"--output={projects}/renders/f_####.exr",
                 f"{projects}/shot010/cache"],
        "cwd": str(projects / "shot010"),
        "scene": f"{projects}/shot010;\\\\other\\share\\x"}
    # What the artist submitted is what the farm keeps; the log says what ran on the node.
    assert task["command"] == command and task["cwd"] == "P:\\shot010"
    log = task_log_path(tmp_path / "storage", job["id"], task["id"], 1).read_text()
    first_line = log.splitlines()[0]
    assert first_line.startswith("corral: paths mapped for this node: argv ")
    assert f"cwd {projects}/shot010" in first_line
    assert f"SCENE_PATH={projects}/shot010;" in first_line
