"""Job templates: valid specs whose chunks make Blender render each frame once, and a movie after."""

from __future__ import annotations

from collections import Counter
from itertools import chain
from typing import Any

import pytest

from shared.bands import parse_bands
from shared.errors import InvalidSpec
from shared.frames import parse_frame_range
from shared.spec import JobPlan, TaskPlan, validate_job_spec
from shared.templates import (
    TEMPLATES,
    blender_job,
    blender_then_ffmpeg,
    ffmpeg_encode_layer,
    python_script_job,
    template_from_args,
)

BANDS = parse_bands({"low": [0, 9], "normal": [10, 99], "high": [100, 1000]})


def plan(spec: dict[str, Any]) -> JobPlan:
    return validate_job_spec(spec, BANDS, max_env_bytes=32768, max_tasks=100000)


def layer_tasks(spec: dict[str, Any], layer: str = "render") -> list[TaskPlan]:
    return [task for task in plan(spec).tasks if task.layer == layer]


def option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def frames_blender_renders(command: list[str]) -> list[int]:
    """The frames Blender renders for this argv, read the way Blender reads -s/-e/-j/-a and -f."""
    if command[-1] == "-a":
        start, end, step = (int(option(command, flag)) for flag in ("-s", "-e", "-j"))
        assert step >= 1, "Blender has no negative or zero frame step"
        return list(range(start, end + 1, step))
    assert command[-2] == "-f"
    return [int(frame) for frame in command[-1].split(",")]


# --- the Blender layer ----------------------------------------------------------------------------

def test_chunks_of_1_240_by_10_each_render_their_own_ten_frames_with_start_end_and_step() -> None:
    tasks = layer_tasks(blender_job("shot.blend", "1-240", chunk=10))

    assert len(tasks) == 24
    for number, task in enumerate(tasks):
        assert task.command[-7:] == ["-s", str(number * 10 + 1), "-e", str(number * 10 + 10),
                                     "-j", "1", "-a"]


def test_stepped_range_passes_its_step_so_chunks_skip_the_in_between_frames() -> None:
    tasks = layer_tasks(blender_job("shot.blend", "1-240x2", chunk=10))

    assert len(tasks) == 12
    assert tasks[0].command[-7:] == ["-s", "1", "-e", "19", "-j", "2", "-a"]
    assert tasks[-1].command[-7:] == ["-s", "221", "-e", "239", "-j", "2", "-a"]
    assert frames_blender_renders(tasks[0].command) == list(range(1, 20, 2))


def test_reversed_range_renders_each_chunk_as_a_frame_list_in_its_order() -> None:
    tasks = layer_tasks(blender_job("shot.blend", "10-1", chunk=4))

    assert [task.command[-2:] for task in tasks] == [["-f", "10,9,8,7"], ["-f", "6,5,4,3"],
                                                     ["-f", "2,1"]]


def test_irregular_range_renders_every_chunk_as_a_frame_list() -> None:
    tasks = layer_tasks(blender_job("shot.blend", "1,5,10,11,12", chunk=2))

    # 10,11 alone would fit -s/-e, but one rule for the whole layer is as exact and simpler.
    assert [task.command[-2:] for task in tasks] == [["-f", "1,5"], ["-f", "10,11"], ["-f", "12"]]


@pytest.mark.parametrize(("frames", "chunk"), [
    ("1-240", 10), ("1-240", 7), ("1-240x2", 10), ("1-241x3", 4), ("240-1", 9),
    ("0", 1), ("1001-1100", 100), ("1,5,10", 2), ("1-10,20-30x5,12", 3), ("50-1x-7", 2),
])
def test_every_frame_is_rendered_exactly_once_across_the_chunks(frames: str, chunk: int) -> None:
    tasks = layer_tasks(blender_job("shot.blend", frames, chunk=chunk))

    rendered = list(chain.from_iterable(frames_blender_renders(task.command) for task in tasks))
    assert Counter(rendered) == Counter(parse_frame_range(frames))
    for task in tasks:
        assert frames_blender_renders(task.command) == list(task.frames or ())


def test_scene_settings_come_after_the_file_and_before_the_render_flag() -> None:
    spec = blender_job("shot.blend", "1-8", engine="CYCLES", samples=4, resolution=(64, 48),
                       file_format="PNG", threads=2, extra_args=["--debug-cycles"],
                       output="/renders/shot/f_####")
    (task,) = layer_tasks(spec)[:1]
    command = task.command

    assert command[:3] == ["blender", "-b", "shot.blend"]
    assert command[-1] == "-a"
    assert option(command, "-E") == "CYCLES"
    assert option(command, "-t") == "2"
    assert option(command, "-F") == "PNG" and option(command, "-x") == "1"
    assert option(command, "-o") == "/renders/shot/f_####"
    for setting in ("-E", "-t", "-F", "-o", "--python-expr", "--debug-cycles"):
        assert 2 < command.index(setting) < command.index("-s")


def test_samples_and_resolution_are_set_by_python_that_fails_the_task_when_it_breaks() -> None:
    (task, *_) = layer_tasks(blender_job("shot.blend", "1-8", samples=3, resolution=(640, 360)))
    command = task.command
    expression = option(command, "--python-expr")

    assert command.index("--python-exit-code") < command.index("--python-expr")
    assert option(command, "--python-exit-code") == "1"
    compile(expression, "<override>", "exec")  # Blender runs it as a module body
    assert "scene.cycles.samples = 3" in expression
    assert "scene.eevee.taa_render_samples = 3" in expression
    assert "scene.render.resolution_x = 640" in expression
    assert "scene.render.resolution_y = 360" in expression
    assert "scene.render.resolution_percentage = 100" in expression


def test_without_overrides_blender_is_run_with_the_files_own_settings() -> None:
    command = layer_tasks(blender_job("shot.blend", "1"))[0].command

    assert command == ["blender", "-b", "shot.blend", "-o", "//render/frame_####",
                       "-s", "1", "-e", "1", "-j", "1", "-a"]


@pytest.mark.parametrize("frames", ["-5--1", "-1-3", "1048575"])
def test_frames_blender_cannot_name_are_refused(frames: str) -> None:
    with pytest.raises(InvalidSpec) as refused:
        blender_job("shot.blend", frames)

    assert str(refused.value).startswith("frames: frame ")


@pytest.mark.parametrize(("options", "field"), [
    ({"samples": 0}, "samples"),
    ({"resolution": (64, 0)}, "resolution"),
    ({"threads": -1}, "threads"),
    ({"output": ""}, "output"),
])
def test_bad_blender_settings_are_refused_naming_the_setting(options: dict[str, Any],
                                                             field: str) -> None:
    with pytest.raises(InvalidSpec) as refused:
        blender_job("shot.blend", "1-8", **options)

    assert str(refused.value).startswith(f"{field}: ")


def test_job_settings_pass_through_to_every_task() -> None:
    spec = blender_job("shot.blend", "1-4", chunk=2, name="shot 10", user="ana", pool="gpu",
                       priority=200, env={"OCIO": "/studio/ocio.config"}, cwd="/studio/shot",
                       timeout=3600, max_attempts=3)

    job = plan(spec)
    assert (job.name, job.user, job.pool, job.priority, job.band) == ("shot 10", "ana", "gpu",
                                                                      200, "high")
    for task in job.tasks:
        assert task.env == {"OCIO": "/studio/ocio.config"} and task.cwd == "/studio/shot"
        assert task.timeout == 3600 and task.max_attempts == 3


def test_unset_job_settings_are_left_to_the_farms_defaults() -> None:
    spec = blender_job("shot.blend", "1-4")

    assert set(spec) == {"name", "layers"}


# --- the ffmpeg layer -----------------------------------------------------------------------------

def test_encode_waits_for_the_whole_render_layer() -> None:
    job = plan(blender_then_ffmpeg("shot.blend", "1-8", "shot.mp4", chunk=2))

    (encode,) = [task for task in job.tasks if task.layer == "encode"]
    assert encode.depends_on_layers == ("render",) and encode.depends_on == ()
    assert encode.frames is None


def test_encode_reads_exactly_the_rendered_frames_from_the_first_one() -> None:
    spec = blender_then_ffmpeg("/shots/010/shot.blend", "1001-1100", "/shots/010/shot.mp4",
                               chunk=10, fps=25)
    command = layer_tasks(spec, "encode")[0].command

    assert command == ["ffmpeg", "-hide_banner", "-nostdin", "-y", "-framerate", "25",
                       "-start_number", "1001", "-i", "/shots/010/render/frame_%04d.png",
                       "-frames:v", "100", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                       "-crf", "18", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2",
                       "/shots/010/shot.mp4"]


@pytest.mark.parametrize(("scene", "output", "pattern"), [
    ("shots/a.blend", "//render/frame_####", "shots/render/frame_%04d.png"),
    ("a.blend", "//f_##", "f_%02d.png"),
    ("a.blend", "/out/d#/a##_b###", "/out/d#/a##_b%03d.png"),
    ("a.blend", "/out/plain", "/out/plain%04d.png"),
    ("a.blend", "/out/x_####.png", "/out/x_%04d.png"),
    ("a.blend", "/out/p%_##", "/out/p%%_%02d.png"),
])
def test_encode_reads_the_file_names_blender_writes(scene: str, output: str,
                                                    pattern: str) -> None:
    spec = blender_then_ffmpeg(scene, "1-8", "movie.mp4", output=output)

    assert option(spec["layers"][1]["command"], "-i") == pattern


def test_blender_is_told_the_format_the_encode_expects() -> None:
    spec = blender_then_ffmpeg("shot.blend", "1-8", "movie.mp4", file_format="JPEG")

    render, encode = spec["layers"]
    assert option(render["command"], "-F") == "JPEG" and option(render["command"], "-x") == "1"
    assert option(encode["command"], "-i") == "render/frame_%04d.jpg"


@pytest.mark.parametrize("frames", ["1-240x2", "10-1", "1-4,6-8"])
def test_movie_of_frames_with_gaps_or_reversed_is_refused(frames: str) -> None:
    with pytest.raises(InvalidSpec) as refused:
        blender_then_ffmpeg("shot.blend", frames, "movie.mp4")

    assert str(refused.value).startswith(f"frames: {frames!r}: a movie needs consecutive")


def test_encode_can_wait_for_a_layer_the_caller_names() -> None:
    spec = blender_job("shot.blend", "1-8", layer="beauty")
    spec["layers"].append(ffmpeg_encode_layer("render/frame_%04d.png", "movie.mp4", 24, 1,
                                              depends_on={"layer": "beauty"}))

    encode = layer_tasks(spec, "encode")[0]
    assert encode.depends_on_layers == ("beauty",)


def test_frame_by_frame_encode_is_refused() -> None:
    with pytest.raises(InvalidSpec) as refused:
        ffmpeg_encode_layer("f_%04d.png", "movie.mp4", depends_on={"layer": "render",
                                                                    "per_frame": True})

    assert str(refused.value).startswith("depends_on: ")


def test_encode_with_own_codec_arguments_uses_only_those() -> None:
    layer = ffmpeg_encode_layer("f_%04d.exr", "movie.mov", 24,
                                codec_args=["-c:v", "prores_ks", "-profile:v", "3"])

    assert layer["command"][-5:] == ["-c:v", "prores_ks", "-profile:v", "3", "movie.mov"]
    assert "-start_number" not in layer["command"] and "libx264" not in layer["command"]


# --- the Python script layer ----------------------------------------------------------------------

def test_script_job_fills_frame_tokens_per_chunk() -> None:
    spec = python_script_job("cache.py", ["--from", "{start}", "--to", "{end}", "--frames",
                                          "{frames}"], frames="1-5", chunk=2)

    assert [task.command for task in layer_tasks(spec, "script")] == [
        ["python3", "cache.py", "--from", "1", "--to", "2", "--frames", "1,2"],
        ["python3", "cache.py", "--from", "3", "--to", "4", "--frames", "3,4"],
        ["python3", "cache.py", "--from", "5", "--to", "5", "--frames", "5"],
    ]


def test_script_job_without_frames_runs_once() -> None:
    spec = python_script_job("publish.py", ["--shot", "010"], python="/usr/bin/python3.11")

    (task,) = plan(spec).tasks
    assert task.command == ["/usr/bin/python3.11", "publish.py", "--shot", "010"]
    assert task.frames is None


# --- templates from command-line arguments --------------------------------------------------------

def test_command_line_builds_the_same_job_as_the_function() -> None:
    spec = template_from_args("blender", [
        "scene.blend", "--frames", "1-240", "--chunk", "10", "--engine", "CYCLES",
        "--output", "//out/f_####", "--movie", "out.mp4", "--fps", "24", "--user", "ana",
        "--env", "OCIO=/studio/ocio.config", "--samples", "16", "--resolution", "1920x1080"])

    assert spec == blender_then_ffmpeg("scene.blend", "1-240", "out.mp4", 10, engine="CYCLES",
                                       output="//out/f_####", fps=24, user="ana",
                                       env={"OCIO": "/studio/ocio.config"}, samples=16,
                                       resolution=(1920, 1080))
    plan(spec)


def test_command_line_without_movie_is_a_render_only() -> None:
    spec = template_from_args("blender", ["scene.blend", "--frames", "1-240x2", "--chunk", "10"])

    assert spec == blender_job("scene.blend", "1-240x2", 10)


def test_python_template_takes_the_script_arguments_after_a_double_dash() -> None:
    spec = template_from_args("python", ["sim.py", "--frames", "1-4", "--chunk", "2", "--",
                                         "--cache", "{start}-{end}"])

    assert spec == python_script_job("sim.py", ["--cache", "{start}-{end}"], "1-4", 2)


def test_every_template_builds_a_valid_job_from_the_command_line() -> None:
    arguments = {"blender": ["a.blend", "--frames", "1-8"],
                 "blender-movie": ["a.blend", "--frames", "1-8", "--movie", "a.mp4"],
                 "python": ["a.py"]}

    assert set(arguments) == set(TEMPLATES)
    for name, argv in arguments.items():
        plan(template_from_args(name, argv))


@pytest.mark.parametrize(("name", "argv", "named"), [
    ("blender", ["a.blend", "--frames", "1-x"], "argument --frames: '1-x'"),
    ("blender", ["a.blend", "--frames=-5-1"], "argument --frames: frame -5"),
    ("blender", ["a.blend", "--frames", "1-8", "--chunk", "0"], "argument --chunk: must be"),
    ("blender", ["a.blend", "--frames", "1-8", "--chunk", "ten"], "argument --chunk: 'ten'"),
    ("blender", ["a.blend", "--frames", "1-8", "--resolution", "big"], "argument --resolution"),
    ("blender", ["a.blend", "--frames", "1-8", "--env", "OCIO"], "argument --env: 'OCIO'"),
    ("blender", ["a.blend", "--frames", "1-8", "--fps", "24"], "argument --fps"),
    ("blender", ["a.blend", "--frames", "1-8", "--threads", "-3"], "argument --threads"),
    ("blender", ["a.blend", "--frames", "1-8x2", "--movie", "m.mp4"], "argument --frames"),
    ("blender", ["a.blend", "--frames", "1-8", "--bogus"], "unrecognized arguments: --bogus"),
    ("blender", ["a.blend"], "required: --frames"),
    ("blender", ["--frames", "1-8"], "required: scene"),
    ("blender-movie", ["a.blend", "--frames", "1-8"], "required: --movie"),
    ("python", ["a.py", "--chunk", "2", "--frames", "1-4,3"], "argument --frames"),
])
def test_bad_command_line_is_refused_naming_the_option(name: str, argv: list[str],
                                                       named: str) -> None:
    with pytest.raises(InvalidSpec) as refused:
        template_from_args(name, argv)

    assert str(refused.value).startswith(f"{name}: ")
    assert named in str(refused.value)


def test_unknown_template_is_refused_listing_the_known_ones() -> None:
    with pytest.raises(InvalidSpec) as refused:
        template_from_args("maya", ["scene.ma"])

    assert str(refused.value) == ("template: there is no template 'maya' "
                                  "(known: blender, blender-movie, python)")
