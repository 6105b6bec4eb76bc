"""A real Blender render and ffmpeg encode through the farm: every frame once, then a movie of all."""

from __future__ import annotations

import os
import re
import struct
import subprocess
from pathlib import Path

import pytest

from shared.templates import blender_then_ffmpeg
from tests.farm import ROOT, Farm

FRAMES = range(1, 9)

# A cube turning half a revolution over frames 1-8, seen by a camera and lit by a sun; Cycles on
# the CPU at 64x48 with 2 samples, so each frame renders in well under a second.
SCENE_SCRIPT = """
import sys
import bpy

path = sys.argv[sys.argv.index("--") + 1]
for obj in list(bpy.data.objects):
    bpy.data.objects.remove(obj)
bpy.ops.mesh.primitive_cube_add(size=2)
cube = bpy.context.active_object
cube.rotation_euler = (0, 0, 0)
cube.keyframe_insert("rotation_euler", frame=1)
cube.rotation_euler = (0, 0, 3.14159)
cube.keyframe_insert("rotation_euler", frame=8)
bpy.ops.object.camera_add(location=(6, -6, 4), rotation=(1.1, 0, 0.785))
scene = bpy.context.scene
scene.camera = bpy.context.active_object
bpy.ops.object.light_add(type="SUN", location=(0, 0, 5))
scene.render.engine = "CYCLES"
scene.cycles.device = "CPU"
scene.cycles.samples = 4
scene.cycles.use_denoising = False
scene.render.resolution_x = 320
scene.render.resolution_y = 240
scene.render.resolution_percentage = 100
scene.frame_start = 1
scene.frame_end = 250
bpy.ops.wm.save_as_mainfile(filepath=path)
"""


@pytest.fixture(scope="session")
def renderers() -> None:
    """Blender and ffmpeg from the distribution's packages; a failed install fails the test."""
    done = subprocess.run(["bash", str(ROOT / "deploy" / "install-renderers.sh")],
                          capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        pytest.fail(f"installing blender and ffmpeg failed (exit {done.returncode}):\n"
                    f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}", pytrace=False)


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def saved_frames(log: str) -> list[int]:
    """Frames Blender says it wrote, in the order it wrote them."""
    return [int(number) for number in re.findall(r"^Saved: '.*frame_(\d+)\.png'", log, re.M)]


# The install alone may take minutes on a slow mirror; the render itself takes seconds.
@pytest.mark.timeout(1500)
def test_blender_chunks_render_each_frame_once_and_ffmpeg_encodes_all_of_them(
        renderers: None, farm: Farm, tmp_path: Path) -> None:
    home = tmp_path / "home"  # Blender writes its config and caches under $HOME
    home.mkdir()
    scene = tmp_path / "shot" / "scene.blend"
    scene.parent.mkdir()
    subprocess.run(["blender", "-b", "--factory-startup", "--python-exit-code", "1",
                    "--python-expr", SCENE_SCRIPT, "--", str(scene)],
                   env={**os.environ, "HOME": str(home)}, check=True,
                   capture_output=True, timeout=120)
    movie = tmp_path / "shot" / "movie.mp4"
    # Samples and resolution are overridden on the command line, so the frames show they took.
    spec = blender_then_ffmpeg(str(scene), "1-8", str(movie), chunk=2, output="//frames/frame_####",
                               engine="CYCLES", samples=2, resolution=(64, 48),
                               env={"HOME": str(home)}, timeout=600, name="real render")

    farm.start(workers=2)
    job = farm.rpc.scheduler.submit_job(spec)
    done = farm.wait_for_job(job["id"], timeout=600)

    tasks = [farm.rpc.scheduler.get_task(summary["id"]) for summary in done["tasks"]]
    assert done["state"] == "done", "\n".join(
        f"{task['name']}: {task['reason']}\n{task['log_tail']}" for task in tasks)
    renders = [task for task in tasks if task["layer"] == "render"]
    (encode,) = [task for task in tasks if task["layer"] == "encode"]
    assert [(task["frame_start"], task["frame_end"]) for task in renders] == [
        (1, 2), (3, 4), (5, 6), (7, 8)]
    for task in renders:
        (attempt,) = task["attempts"]
        assert attempt["exit_code"] == 0
        assert saved_frames(Path(task["log_path"]).read_text()) == list(
            range(task["frame_start"], task["frame_end"] + 1))
    render_ended = max(task["attempts"][0]["process_ended_at"] for task in renders)
    assert encode["attempts"][0]["process_started_at"] >= render_ended

    frames = scene.parent / "frames"
    assert sorted(path.name for path in frames.iterdir()) == [
        f"frame_{frame:04d}.png" for frame in FRAMES]
    assert {png_size(path) for path in frames.iterdir()} == {(64, 48)}
    probe = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
                            "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0",
                            str(movie)], capture_output=True, text=True, check=True, timeout=60)
    assert probe.stdout.strip() == "8"
