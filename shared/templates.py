"""Job specs for common work (a Blender render, an ffmpeg movie, a Python script) from code or a CLI."""

from __future__ import annotations

import argparse
import posixpath
import re
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Any, NoReturn

from shared.errors import InvalidSpec
from shared.frames import parse_frame_range

BLENDER_MAX_FRAME = 1_048_574
"""Highest frame number Blender accepts; it silently clamps larger ones."""

BLENDER_EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "OPEN_EXR": "exr", "OPEN_EXR_MULTILAYER": "exr",
                      "TIFF": "tif", "BMP": "bmp", "TARGA": "tga", "TARGA_RAW": "tga",
                      "JPEG2000": "jp2", "HDR": "hdr", "DPX": "dpx", "CINEON": "cin", "WEBP": "webp"}
"""Blender's still-image formats and the extension it gives their files."""

DEFAULT_CODEC_ARGS: tuple[str, ...] = (
    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18",
    # yuv420p needs even dimensions: pad an odd-sized render by a pixel rather than fail.
    "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2",
)
"""H.264 in yuv420p: the movie plays in every browser and player."""

_HASHES = re.compile(r"#+")


def blender_job(scene: str, frames: str, chunk: int = 1, *, output: str = "//render/frame_####",
                engine: str | None = None, samples: int | None = None,
                resolution: tuple[int, int] | None = None, file_format: str | None = None,
                threads: int | None = None, extra_args: Sequence[str] = (),
                blender: str = "blender", layer: str = "render", name: str | None = None,
                user: str | None = None, pool: str | None = None, priority: int | None = None,
                env: dict[str, str] | None = None, cwd: str | None = None,
                timeout: float | None = None, max_attempts: int | None = None) -> dict[str, Any]:
    """A job with one layer rendering `frames` of a .blend file, `chunk` frames per task.

    Each task runs `blender -b SCENE [-E ENGINE] [-t THREADS] [-F FORMAT -x 1] -o OUTPUT
    [--python-exit-code 1 --python-expr OVERRIDES] [EXTRA_ARGS] -s {start} -e {end} -j {step} -a`.
    Blender applies its arguments in the order given, so everything that changes the scene comes
    after the file and before `-a`, which renders at once with whatever is set by then.

    A task renders exactly its own chunk's frames. Passing only the first frame (`-f {frame}`) renders
    one frame per chunk, as many times as the chunk is long (OpenCue #1334); a stepped range cut
    into chunks needs the step too (`-j`), or a chunk of 1-240x2 renders the in-between frames.
    `-s/-e/-j` describe a chunk only when its frames go up by one constant step; Blender has no
    negative step. So when the whole range goes up by one constant step (`1-240`, `1-240x2`) every
    chunk is rendered with `-s {start} -e {end} -j {step} -a`, and otherwise (reversed,
    `1,5,10`, `1-10,20-30`) with `-f {frames}`, Blender's comma-separated frame list. Deciding on
    the whole range keeps one argv template for the layer, which is filled per chunk.

    Negative frames are refused: Blender reads `-5` as "five before the scene's end frame".
    `samples` and `resolution` override the file's settings through a Python expression; a failing
    expression exits with code 1 instead of rendering with the file's settings.
    """
    frame_list = parse_frame_range(frames)
    for frame in frame_list:
        if not 0 <= frame <= BLENDER_MAX_FRAME:
            raise InvalidSpec(f"frames: frame {frame} is outside Blender's 0-{BLENDER_MAX_FRAME} "
                              "(a leading minus means 'counted from the end' to Blender)")
    command = [blender, "-b", scene]
    if engine is not None:
        command += ["-E", _non_empty("engine", engine)]
    if threads is not None:
        command += ["-t", str(_at_least("threads", threads, 0))]
    if file_format is not None:
        command += ["-F", _non_empty("file_format", file_format), "-x", "1"]
    command += ["-o", _non_empty("output", output)]
    overrides = _override_expression(samples, resolution)
    if overrides:
        command += ["--python-exit-code", "1", "--python-expr", overrides]
    command += list(extra_args)
    if _constant_rising_step(frame_list):
        command += ["-s", "{start}", "-e", "{end}", "-j", "{step}", "-a"]
    else:
        command += ["-f", "{frames}"]
    render = {"name": layer, "command": command, "frames": frames, "chunk": chunk}
    return _job([render], name=name or f"blender {posixpath.basename(scene)} {frames}", user=user,
                pool=pool, priority=priority, env=env, cwd=cwd, timeout=timeout,
                max_attempts=max_attempts)


def ffmpeg_encode_layer(pattern: str, output: str, fps: int = 24, start_number: int | None = None,
                        depends_on: str | dict[str, Any] = "render", *,
                        frame_count: int | None = None,
                        codec_args: Sequence[str] = DEFAULT_CODEC_ARGS, ffmpeg: str = "ffmpeg",
                        layer: str = "encode") -> dict[str, Any]:
    """A layer of one task encoding an image sequence (`frame_%04d.png`) into a movie.

    It waits for the whole of the layer it depends on: one encode reads every frame, so a
    frame-by-frame dependency means nothing here and is refused. `start_number` is the first frame
    (ffmpeg looks only near 0 by default), and `frame_count` stops the encode after that many frames
    so stale frames of an earlier, longer render in the same folder stay out of the movie. ffmpeg
    reads a sequence up to its first missing number, so the frames must be consecutive.
    """
    if isinstance(depends_on, dict):
        if depends_on.get("per_frame"):
            raise InvalidSpec("depends_on: an encode reads every frame, so it waits for the whole "
                              "layer; per_frame is not supported")
        upstream = depends_on.get("layer")
    else:
        upstream = depends_on
    if not isinstance(upstream, str) or not upstream:
        raise InvalidSpec("depends_on: name the layer whose frames are encoded")
    command = [ffmpeg, "-hide_banner", "-nostdin", "-y",
               "-framerate", str(_at_least("fps", fps, 1))]
    if start_number is not None:
        command += ["-start_number", str(start_number)]
    command += ["-i", _non_empty("pattern", pattern)]
    if frame_count is not None:
        command += ["-frames:v", str(_at_least("frame_count", frame_count, 1))]
    command += [*codec_args, _non_empty("output", output)]
    return {"name": layer, "command": command, "depends_on": [upstream]}


def blender_then_ffmpeg(scene: str, frames: str, movie: str, chunk: int = 1, *,
                        output: str = "//render/frame_####", fps: int = 24,
                        file_format: str = "PNG", codec_args: Sequence[str] = DEFAULT_CODEC_ARGS,
                        ffmpeg: str = "ffmpeg", **blender_options: Any) -> dict[str, Any]:
    """A Blender render of consecutive frames and, once all of them are done, an ffmpeg movie of them.

    The frames' file names are worked out from `output` as Blender writes them: `//` is the scene's
    folder, the last run of `#` is the zero-padded frame number (`####` is appended when there is
    none) and `file_format` (forced with `-F`) gives the extension. `blender_options` are
    `blender_job`'s keyword arguments.
    """
    job = blender_job(scene, frames, chunk, output=output, file_format=file_format,
                      **blender_options)
    frame_list = parse_frame_range(frames)
    if any(later - earlier != 1 for earlier, later in pairwise(frame_list)):
        raise InvalidSpec(f"frames: {frames!r}: a movie needs consecutive rising frames "
                          "(ffmpeg stops reading a sequence at its first missing number)")
    extension = BLENDER_EXTENSIONS.get(file_format)
    if extension is None:
        raise InvalidSpec(f"file_format: {file_format!r} is not an image format ffmpeg can "
                          f"read here ({', '.join(sorted(BLENDER_EXTENSIONS))})")
    pattern = _sequence_pattern(scene, output, extension)
    job["layers"].append(ffmpeg_encode_layer(
        pattern, movie, fps, start_number=frame_list[0], depends_on=job["layers"][0]["name"],
        frame_count=len(frame_list), codec_args=codec_args, ffmpeg=ffmpeg))
    return job


def python_script_job(script: str, args: Sequence[str] = (), frames: str | None = None,
                      chunk: int = 1, python: str = "python3", *, layer: str = "script",
                      name: str | None = None, user: str | None = None, pool: str | None = None,
                      priority: int | None = None, env: dict[str, str] | None = None,
                      cwd: str | None = None, timeout: float | None = None,
                      max_attempts: int | None = None) -> dict[str, Any]:
    """A job running `python script args...` once, or once per chunk of `frames`.

    `args` may hold frame tokens ({start}, {end}, {step}, {frames}, {frame:04d}); they are filled
    per chunk inside each argument, never through a shell.
    """
    spec: dict[str, Any] = {"name": layer, "command": [python, _non_empty("script", script),
                                                       *args]}
    if frames is not None:
        parse_frame_range(frames)
        spec.update(frames=frames, chunk=chunk)
    return _job([spec], name=name or f"python {posixpath.basename(script)}", user=user, pool=pool,
                priority=priority, env=env, cwd=cwd, timeout=timeout, max_attempts=max_attempts)


TEMPLATES: dict[str, Callable[..., dict[str, Any]]] = {
    "blender": blender_job,
    "blender-movie": blender_then_ffmpeg,
    "python": python_script_job,
}
"""Template name (as a command line names it) -> the function building its job spec."""


def template_from_args(name: str, argv: Sequence[str], cwd: str | None = None) -> dict[str, Any]:
    """The job spec of template `name` from command-line arguments, or InvalidSpec naming the bad one.

    `blender SCENE --frames 1-240 [--chunk 10] [--engine CYCLES] [--output //out/f_####]
    [--movie out.mp4 [--fps 24]] ...`; `blender-movie` is the same with `--movie` required;
    `python SCRIPT [--frames ...] [--chunk N] [--python python3] [-- ARGS...]`.

    `cwd` is where the command line was typed: the job runs there (unless --cwd says otherwise),
    and the scene, script, output and movie paths given relative are made absolute from the
    job's working directory, so a worker anywhere finds the same files.
    """
    if name not in TEMPLATES:
        raise InvalidSpec(f"template: there is no template {name!r} "
                          f"(known: {', '.join(sorted(TEMPLATES))})")
    parser = _Parser(prog=name, add_help=False)
    options: dict[str, str] = {}
    for flag, settings in (_PYTHON_ARGUMENTS if name == "python"
                           else _blender_arguments(movie_required=name == "blender-movie")):
        action = parser.add_argument(flag, **settings)
        options[action.dest] = action.option_strings[0] if action.option_strings else action.dest
    argv = list(argv)
    # Everything after `--` belongs to the script: split it off here, because argparse would
    # have given the script's positional list away empty before reaching it.
    passed: list[str] = []
    if name == "python" and "--" in argv:
        argv, passed = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    values = vars(parser.parse_intermixed_args(argv))
    if name == "python":
        values["args"] = [*values["args"], *passed]
    if values["env"] is not None:
        values["env"] = dict(values["env"])  # --env arrives as (name, value) pairs
    if values["cwd"] is not None or cwd is not None:
        base = posixpath.normpath(posixpath.join(cwd or "", values["cwd"] or ""))
        values["cwd"] = base
        for key in ("scene", "script", "output", "movie"):
            values[key] = _absolute(values.get(key), base)
    builder: Callable[..., dict[str, Any]]
    if name == "python":
        builder = python_script_job
    elif values["movie"] is not None:
        builder = blender_then_ffmpeg
    else:
        builder = blender_job
        if values["fps"] is not None:
            raise InvalidSpec(f"{name}: argument --fps: only means something with --movie")
        del values["movie"], values["fps"]
    arguments = {key: value for key, value in values.items() if value is not None}
    try:
        return builder(**arguments)
    except InvalidSpec as exc:
        # Builders name their parameter; on a command line the option is what the user typed.
        field, _, rest = exc.message.partition(": ")
        if field in options and rest:
            raise InvalidSpec(f"{name}: argument {options[field]}: {rest}") from None
        raise InvalidSpec(f"{name}: {exc.message}") from None


# --- helpers --------------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse that raises InvalidSpec instead of printing usage and exiting the process."""

    def error(self, message: str) -> NoReturn:
        raise InvalidSpec(f"{self.prog}: {message}")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _frames(text: str) -> str:
    try:
        parse_frame_range(text)
    except InvalidSpec as exc:
        raise argparse.ArgumentTypeError(exc.message.removeprefix("frames: ")) from None
    return text


def _resolution(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"([0-9]+)x([0-9]+)", text.strip())
    if match is None or not all(int(side) >= 1 for side in match.groups()):
        raise argparse.ArgumentTypeError(f"{text!r}: expected WIDTHxHEIGHT, as in 1920x1080")
    return int(match.group(1)), int(match.group(2))


def _env_item(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE")
    return key, value


# (option or positional, keyword arguments for add_argument)
_Argument = tuple[str, dict[str, Any]]

_COMMON_ARGUMENTS: list[_Argument] = [
    ("--name", {}), ("--user", {}), ("--pool", {}), ("--priority", {"type": int}),
    ("--env", {"type": _env_item, "action": "append", "metavar": "NAME=VALUE"}),
    ("--cwd", {}), ("--timeout", {"type": float}),
    ("--max-attempts", {"type": _positive, "dest": "max_attempts"}),
]


def _blender_arguments(movie_required: bool) -> list[_Argument]:
    return [
        ("scene", {}),
        ("--frames", {"type": _frames, "required": True}),
        ("--chunk", {"type": _positive}),
        ("--output", {}), ("--engine", {}),
        ("--samples", {"type": _positive}), ("--resolution", {"type": _resolution}),
        ("--format", {"dest": "file_format"}), ("--threads", {"type": int}),
        ("--blender", {}),
        ("--movie", {"required": movie_required}), ("--fps", {"type": _positive}),
        *_COMMON_ARGUMENTS,
    ]


_PYTHON_ARGUMENTS: list[_Argument] = [
    ("script", {}),
    ("args", {"nargs": "*"}),
    ("--frames", {"type": _frames}),
    ("--chunk", {"type": _positive}),
    ("--python", {}),
    *_COMMON_ARGUMENTS,
]


def _job(layers: list[dict[str, Any]], *, name: str, user: str | None, pool: str | None,
         priority: int | None, env: dict[str, str] | None,
         cwd: str | None, timeout: float | None, max_attempts: int | None) -> dict[str, Any]:
    """A job spec holding only the settings given, so the farm's defaults apply to the rest."""
    # A long frame list must not push a default name past the spec's limit of 200 characters.
    job: dict[str, Any] = {"name": name[:200], "layers": layers}
    optional = {"user": user, "pool": pool, "priority": priority, "cwd": cwd, "timeout": timeout}
    job.update({key: value for key, value in optional.items() if value is not None})
    if env is not None:
        job["env"] = dict(env)
    if max_attempts is not None:
        job["retry"] = {"max_attempts": max_attempts}
    return job


def _constant_rising_step(frames: list[int]) -> bool:
    return len({later - earlier for earlier, later in pairwise(frames)}) <= 1 and all(
        later > earlier for earlier, later in pairwise(frames))


def _override_expression(samples: int | None, resolution: tuple[int, int] | None) -> str:
    """Python run inside Blender after the scene is loaded and before it renders."""
    lines = []
    if samples is not None:
        count = _at_least("samples", samples, 1)
        # Each engine keeps its own sample count; set both so the choice of engine does not matter.
        lines += [f"if hasattr(scene, 'cycles'): scene.cycles.samples = {count}",
                  f"scene.eevee.taa_render_samples = {count}"]
    if resolution is not None:
        if (len(resolution) != 2 or not all(isinstance(side, int) and not isinstance(side, bool)
                                            and side >= 1 for side in resolution)):
            raise InvalidSpec(f"resolution: expected (width, height) in pixels, got {resolution!r}")
        width, height = resolution
        lines += [f"scene.render.resolution_x = {width}",
                  f"scene.render.resolution_y = {height}",
                  "scene.render.resolution_percentage = 100"]
    if not lines:
        return ""
    return "\n".join(["import bpy", "scene = bpy.context.scene", *lines])


def _sequence_pattern(scene: str, output: str, extension: str) -> str:
    """The ffmpeg image2 pattern of the files Blender writes for `output`, by Blender's rules."""
    path = output
    if path.startswith("//"):
        path = posixpath.join(posixpath.dirname(scene), path[2:])
    folder, file_name = posixpath.split(path)
    # ffmpeg reads % as the start of a pattern: a literal one is written %%.
    folder, file_name = folder.replace("%", "%%"), file_name.replace("%", "%%")
    # Blender numbers the last run of # in the file name (# in folder names stay as they are)
    # and appends four digits when there is none; it adds the extension unless already there.
    runs = list(_HASHES.finditer(file_name))
    if runs:
        last = runs[-1]
        file_name = f"{file_name[:last.start()]}%0{len(last.group())}d{file_name[last.end():]}"
    else:
        file_name += "%04d"
    if not file_name.lower().endswith(f".{extension}"):
        file_name += f".{extension}"
    return posixpath.join(folder, file_name)


def _absolute(path: str | None, base: str) -> str | None:
    """`path` from `base` when relative; Blender's `//` (the scene's folder) is left as it is."""
    if not path or path.startswith("//") or posixpath.isabs(path) or not posixpath.isabs(base):
        return path
    return posixpath.normpath(posixpath.join(base, path))


def _non_empty(field: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidSpec(f"{field}: must be a non-empty string")
    return value


def _at_least(field: str, value: int, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidSpec(f"{field}: must be a whole number of at least {low}, got {value!r}")
    return value
