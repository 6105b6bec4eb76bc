"""What `corral submit` sends for each way of submitting: paths, options over a spec, frames."""

import json
from pathlib import Path
from typing import Any

import pytest

from services.cli.jobs import _progress_fields
from services.cli.submit import build_spec
from shared.templates import template_from_args

NO_OPTIONS: dict[str, Any] = {
    **dict.fromkeys(["name", "user", "pool", "priority", "cwd", "max_attempts", "retry_delay",
                     "timeout", "key", "frames", "chunk", "movie", "fps", "output", "engine",
                     "samples", "resolution", "file_format", "threads", "blender", "python",
                     "cores", "memory", "gpus"]),
    "env": [], "licence": [], "after": [], "shell": False}


def spec_of(args: list[str], template: bool = False, spec: Path | None = None,
            **options: Any) -> dict[str, Any]:
    return build_spec(args, template, spec, {**NO_OPTIONS, **options}, "/studio/shot010")


def test_a_command_runs_where_it_was_submitted_unless_cwd_says_otherwise() -> None:
    assert spec_of(["python", "make_proxies.py"])["cwd"] == "/studio/shot010"
    assert spec_of(["true"], cwd="comp")["cwd"] == "/studio/shot010/comp"
    assert spec_of(["true"], cwd="/mnt/farm")["cwd"] == "/mnt/farm"


def test_templates_honour_cwd_and_make_their_paths_absolute() -> None:
    job = template_from_args("blender", ["scene.blend", "--frames", "1-4", "--movie", "shot.mp4",
                                         "--cwd", "lighting"], cwd="/studio/shot010")
    assert job["cwd"] == "/studio/shot010/lighting"
    render, encode = job["layers"]
    assert render["command"][2] == "/studio/shot010/lighting/scene.blend"
    assert encode["command"][-1] == "/studio/shot010/lighting/shot.mp4"
    assert "-o" in render["command"] and "//render/frame_####" in render["command"]
    script = spec_of(["python", "make_proxies.py", "--fast"], template=True)
    assert script["layers"][0]["command"][1:] == ["/studio/shot010/make_proxies.py", "--fast"]
    assert script["cwd"] == "/studio/shot010"


def test_frames_and_chunks_work_on_a_plain_command() -> None:
    job = spec_of(["sh", "-c", "render {start} {step} {end}"], frames="1-20x3", chunk=2)
    assert job["layers"] == [{"name": "frames", "command": ["sh", "-c", "render {start} {step} {end}"],
                              "shell": False, "frames": "1-20x3", "chunk": 2}]
    with pytest.raises(ValueError, match="--chunk cuts a frame range"):
        spec_of(["true"], chunk=2)
    with pytest.raises(ValueError, match="--movie: only a template takes"):
        spec_of(["true"], movie="out.mp4")


def test_resources_licences_and_dependencies_without_a_spec_file() -> None:
    job = spec_of(["true"], cores=4.0, memory="16G", gpus=0, licence=["nuke=2", "houdini"],
                  after=[7, 9], priority=0)
    assert job["resources"] == {"cores": 4.0, "memory": "16G", "gpus": 0}
    assert job["licences"] == {"nuke": 2, "houdini": 1}
    assert job["depends_on"] == [7, 9] and job["priority"] == 0


def test_options_override_a_spec_file_and_the_user_is_the_login(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"name": "from-file", "priority": 10, "cwd": "plates",
                                "tasks": [{"command": ["true"]}]}))
    job = spec_of([], spec=path, name="override", priority=500, key="k1")
    assert (job["name"], job["priority"], job["submission_key"]) == ("override", 500, "k1")
    assert job["cwd"] == "/studio/shot010/plates"
    assert job["user"] == spec_of(["true"])["user"] != "anonymous"
    with pytest.raises(ValueError, match="--frames cannot be added"):
        spec_of([], spec=path, frames="1-3")


def test_each_submit_gets_its_own_key_unless_one_is_given() -> None:
    assert spec_of(["true"])["submission_key"] != spec_of(["true"])["submission_key"]
    assert spec_of(["true"], key="shot010-v3")["submission_key"] == "shot010-v3"


def test_watch_progress_is_done_plus_running_progress_with_failures_beside_it() -> None:
    job = {"state": "running", "counts": {"failed": 3, "running": 1}, "completed": 0.3,
           "eta_seconds": 70}
    fields = _progress_fields(job)
    assert (fields["completed"], fields["done"], fields["failed"]) == (0.3, 0, " (3 failed)")
    assert fields["eta"] == "eta 1m10s"
