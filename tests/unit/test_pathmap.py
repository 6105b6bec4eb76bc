"""The path map: client prefixes found at component boundaries in argv, cwd and env, longest
first, Windows ones in any case with their backslashes turned, and clear errors in the config."""

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.config import DEFAULT_CONFIG_PATH, load_settings
from shared.errors import ConfigError
from shared.pathmap import PathMap, PathMapEntry

PROJECTS = PathMapEntry(windows="P:\\", macos="/Volumes/projects", linux="/mnt/projects")
LIBRARY = PathMapEntry(windows="\\\\fileserver\\library", linux="/mnt/library")
NESTED = PathMapEntry(windows="P:\\shared\\cache", linux="/mnt/cache")
MAP = PathMap([PROJECTS, LIBRARY, NESTED])

# Names of folders and files as all three systems accept them (docs/render-nodes.md).
NAMES = st.text(st.characters(whitelist_categories=("Lu", "Ll", "Nd"), whitelist_characters="_-.# "),
                min_size=1, max_size=12).filter(lambda name: name.strip(". ") == name)


@pytest.mark.parametrize(("given_text", "mapped"), [
    ("P:\\renders\\f_####.exr", "/mnt/projects/renders/f_####.exr"),
    ("p:\\renders\\f.exr", "/mnt/projects/renders/f.exr"),          # drive letter in any case
    ("P:/renders/f.exr", "/mnt/projects/renders/f.exr"),            # forward slashes too
    ("P:\\", "/mnt/projects/"),
    ("P:", "/mnt/projects"),
    ("/Volumes/projects/shot010/shot.blend", "/mnt/projects/shot010/shot.blend"),
    ("/Volumes/projects", "/mnt/projects"),
    ("\\\\FileServer\\Library\\tex\\wood.png", "/mnt/library/tex/wood.png"),
    ("//fileserver/library/tex", "/mnt/library/tex"),
    ("P:\\shared\\cache\\sim.vdb", "/mnt/cache/sim.vdb"),           # the longest prefix wins
    ("P:\\shared\\cachex\\sim.vdb", "/mnt/projects/shared/cachex/sim.vdb"),
    ("P:\\my shot\\a.blend", "/mnt/projects/my shot/a.blend"),      # a space is part of a name
])
def test_a_whole_path_maps(given_text: str, mapped: str) -> None:
    assert MAP.map_text(given_text) == mapped


@pytest.mark.parametrize("untouched", [
    "/Volumes/projects2/a", "/Volumes/projectsX", "/data/Volumes/projects/a", "XP:\\a",
    "-oP:\\out", "C:\\Windows\\temp", "\\\\fileserver\\libraryold\\a", "https://P:/x",
    "/mnt/projects/shot.blend", "frame 12 of 240", "",
])
def test_what_is_not_a_mapped_path_at_a_boundary_stays(untouched: str) -> None:
    assert MAP.map_text(untouched) == untouched


@pytest.mark.parametrize(("given_text", "mapped"), [
    ("--output=P:\\renders\\f_####.exr", "--output=/mnt/projects/renders/f_####.exr"),
    ("P:\\bin;\\\\fileserver\\library\\bin;C:\\tools",
     "/mnt/projects/bin;/mnt/library/bin;C:\\tools"),
    ("/Volumes/projects/bin:/usr/bin", "/mnt/projects/bin:/usr/bin"),
    ("P:\\a,P:\\b", "/mnt/projects/a,/mnt/projects/b"),          # up to the next mapped path
    ("'P:\\it''s\\a'", "'/mnt/projects/it''s\\a'"),               # up to its closing quote
    ('"P:\\x\\y"', '"/mnt/projects/x/y"'),
    ("ls P:\\a > P:\\logs\\ls.txt", "ls /mnt/projects/a > /mnt/projects/logs/ls.txt"),
])
def test_paths_inside_text_map(given_text: str, mapped: str) -> None:
    assert MAP.map_text(given_text) == mapped


def test_a_shell_command_ends_an_unquoted_path_at_a_space() -> None:
    command = 'render "P:\\my shot\\a.blend" -o P:\\out\\f.exr 2>&1 | tee P:\\log.txt'
    assert MAP.map_text(command, shell=True) == (
        'render "/mnt/projects/my shot/a.blend" -o /mnt/projects/out/f.exr 2>&1 '
        "| tee /mnt/projects/log.txt")


@given(st.lists(NAMES, max_size=5), st.sampled_from(["P:", "p:"]), st.sampled_from("\\/"))
def test_any_windows_path_under_a_share_maps_to_the_linux_one(
        parts: list[str], drive: str, slash: str) -> None:
    windows = slash.join([drive, *parts])
    assert MAP.map_text(windows) == "/".join(["/mnt/projects", *parts])
    assert MAP.map_text(f"--scene={windows}") == "--scene=" + "/".join(["/mnt/projects", *parts])


@given(st.lists(NAMES, min_size=1, max_size=5))
def test_mapping_twice_changes_nothing_more(parts: list[str]) -> None:
    once = MAP.map_text("\\".join(["P:", *parts]))
    assert MAP.map_text(once) == once


@given(st.text(st.characters(blacklist_characters=":/\\")))
def test_text_without_a_drive_or_a_slash_is_never_changed(text: str) -> None:
    assert MAP.map_text(text) == text


def test_an_empty_map_changes_nothing() -> None:
    assert PathMap().map_task(["ls", "P:\\"], "P:\\", {"A": "P:\\"}) is None
    assert not PathMap()


def test_a_task_maps_argv_cwd_and_env_and_says_what_changed() -> None:
    mapped = MAP.map_task(["blender", "-b", "P:\\shot010\\shot.blend", "-o", "P:\\out\\f_####"],
                          "P:\\shot010", {"TEXTURES": "\\\\fileserver\\library\\tex;P:\\tex",
                                          "USER": "ana"})
    assert mapped is not None
    assert mapped.command == ["blender", "-b", "/mnt/projects/shot010/shot.blend", "-o",
                              "/mnt/projects/out/f_####"]
    assert mapped.cwd == "/mnt/projects/shot010"
    assert mapped.env == {"TEXTURES": "/mnt/library/tex;/mnt/projects/tex", "USER": "ana"}
    assert mapped.log_line() == (
        "paths mapped for this node: argv blender -b /mnt/projects/shot010/shot.blend -o "
        "'/mnt/projects/out/f_####'; cwd /mnt/projects/shot010; "
        "TEXTURES=/mnt/library/tex;/mnt/projects/tex")
    assert MAP.map_task(["true"], None, {"USER": "ana"}) is None


# --- the setting --------------------------------------------------------------------------------

def write_config(tmp_path: Path, path_map: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"CORRAL:\n  path_map: {path_map}\n")
    return path


def test_the_shipped_config_has_no_path_map_and_the_reference_example_loads(
        tmp_path: Path) -> None:
    assert load_settings(DEFAULT_CONFIG_PATH, environ={}).path_map == ()
    path = tmp_path / "config.yaml"
    path.write_text("CORRAL:\n  path_map:\n"
                    "    - {windows: 'P:\\', macos: /Volumes/projects, linux: /mnt/projects}\n"
                    "    - {windows: '\\\\fileserver\\library', linux: /mnt/library}\n")
    entries = load_settings(path, environ={}).path_map
    assert PathMap(entries).map_text("\\\\FILESERVER\\library\\a") == "/mnt/library/a"
    assert entries[0].linux == "/mnt/projects" and entries[0].macos == "/Volumes/projects"


def test_the_path_map_comes_from_its_variable() -> None:
    settings = load_settings(DEFAULT_CONFIG_PATH, environ={
        "CORRAL_PATH_MAP": "[{windows: 'P:\\', linux: /mnt/projects/}]"})
    assert PathMap(settings.path_map).map_text("P:\\a\\b") == "/mnt/projects/a/b"


@pytest.mark.parametrize(("path_map", "error"), [
    ("[{windows: 'P', linux: /mnt/p}]",
     r"CORRAL\.path_map\.0\.windows: 'P' is not a Windows path prefix"),
    ("[{windows: 'P:\\', linux: /mnt/p}, {macos: Volumes/x, linux: /mnt/x}]",
     r"CORRAL\.path_map\.1\.macos: 'Volumes/x' is not an absolute path"),
    ("[{windows: 'P:\\', linux: 'C:\\mnt'}]", r"CORRAL\.path_map\.0\.linux: 'C:\\\\mnt' is not"),
    ("[{linux: /mnt/p}]", r"CORRAL\.path_map\.0: give the prefix clients use"),
    ("[{windows: 'P:', linux: /mnt/p, mac: /Volumes/p}]", r"CORRAL\.path_map\.0\.mac: "),
    ("[{macos: /, linux: /mnt/p}]", r"CORRAL\.path_map\.0: macos: '/' would map every path"),
    ("[{windows: 'P:\\', linux: /mnt/a}, {windows: 'p:/', linux: /mnt/b}]",
     r"CORRAL\.path_map: entries 0 and 1 both give the client prefix 'p:'"),
    ("{windows: 'P:', linux: /mnt/p}", r"CORRAL\.path_map: "),
])
def test_a_bad_entry_is_refused_naming_it(tmp_path: Path, path_map: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        load_settings(write_config(tmp_path, path_map), environ={})


@pytest.mark.parametrize("document", ["docs/render-nodes.md", "deploy/systemd/corral-pool.env"])
def test_the_render_node_example_maps_what_the_guide_says(document: str) -> None:
    text = (DEFAULT_CONFIG_PATH.parent.parent / document).read_text()
    line = next(line for line in text.splitlines() if "CORRAL_PATH_MAP=" in line)
    value = line.split("CORRAL_PATH_MAP=", 1)[1]
    path_map = PathMap(load_settings(DEFAULT_CONFIG_PATH,
                                     environ={"CORRAL_PATH_MAP": value}).path_map)
    for artists in ("P:\\shot010\\shot.blend", "/Volumes/projects/shot010/shot.blend"):
        assert path_map.map_text(artists) == "/mnt/projects/shot010/shot.blend"
