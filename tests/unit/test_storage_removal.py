"""Removal under the storage root never reaches outside it: `..`, absolute paths, planted
symlinks, a folder swapped for a symlink mid-removal, and files that cannot be removed."""

import os
import subprocess
from pathlib import Path

import pytest

from shared import storage
from shared.errors import OutsideStorage
from shared.retention import human_size


@pytest.fixture
def root(tmp_path: Path) -> Path:
    base = tmp_path / "storage"
    (base / "logs" / "7").mkdir(parents=True)
    (base / "logs" / "7" / "12.1.log").write_text("hello\n" * 100)
    return base


def test_a_jobs_folder_is_removed_with_its_size_counted(root: Path) -> None:
    removal = storage.remove(root, "logs/7")
    assert not (root / "logs" / "7").exists()
    assert (removal.files, removal.directories, removal.bytes_freed) == (1, 1, 600)
    assert removal.errors == [] and (root / "logs").is_dir()


@pytest.mark.parametrize("path", ["../precious", "logs/../../precious", "logs/7/../..", "",
                                  "./logs", "logs//7"])
def test_a_path_climbing_out_or_not_plain_is_refused(root: Path, outside: Path, path: str) -> None:
    with pytest.raises(OutsideStorage):
        storage.remove(root, path)
    assert (outside / "keep.txt").exists() and (root / "logs" / "7" / "12.1.log").exists()


def test_an_absolute_path_is_refused(root: Path, outside: Path) -> None:
    with pytest.raises(OutsideStorage, match="absolute"):
        storage.remove(root, str(outside))
    with pytest.raises(OutsideStorage, match="outside the storage root"):
        storage.relative_to_root(root, outside / "keep.txt")
    assert (outside / "keep.txt").exists()


def test_an_absolute_path_inside_the_root_is_made_relative(root: Path) -> None:
    assert storage.relative_to_root(root, root / "logs" / "7" / "12.1.log") == "logs/7/12.1.log"
    with pytest.raises(OutsideStorage):
        storage.relative_to_root(root, root / "logs" / ".." / ".." / "x")


def test_a_symlink_planted_by_a_payload_is_removed_as_a_link_never_followed(
        root: Path, outside: Path) -> None:
    scratch = root / "scratch" / "7" / "12.1"
    scratch.mkdir(parents=True)
    (scratch / "escape").symlink_to(outside)
    (scratch / "file-link").symlink_to(outside / "keep.txt")
    removal = storage.remove(root, "scratch/7")
    assert not (root / "scratch" / "7").exists()
    assert removal.links == 2
    assert (outside / "keep.txt").read_text() == "not Corral's"


def test_a_jobs_folder_that_is_itself_a_symlink_loses_only_the_link(
        root: Path, outside: Path) -> None:
    (root / "results").mkdir()
    (root / "results" / "7").symlink_to(outside)
    storage.remove(root, "results/7")
    assert not os.path.lexists(root / "results" / "7")
    assert (outside / "keep.txt").exists()


def test_a_kind_folder_replaced_by_a_symlink_is_left_alone_and_reported(
        root: Path, outside: Path) -> None:
    (outside / "7").mkdir()
    (outside / "7" / "render.exr").write_text("frame")
    (root / "scratch").symlink_to(outside)
    removal = storage.remove(root, "scratch/7")
    assert (outside / "7" / "render.exr").exists()
    assert removal.left_alone and "left alone" in removal.left_alone[0]


def test_a_folder_swapped_for_a_symlink_between_check_and_delete_cannot_escape(
        root: Path, outside: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = root / "scratch" / "7"
    (job / "deep").mkdir(parents=True)
    (job / "deep" / "a.tmp").write_text("x")
    real_stat = os.stat
    swapped = []

    def stat_then_swap(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        info = real_stat(path, *args, **kwargs)
        if path == "deep" and not swapped:
            # The payload's move, right after the check saw a folder: a link to outside.
            (job / "deep").rename(job / "moved")
            (job / "deep").symlink_to(outside)
            swapped.append(True)
        return info

    monkeypatch.setattr(os, "stat", stat_then_swap)
    first = storage.remove(root, "scratch/7")
    monkeypatch.undo()
    assert swapped and first.links == 1  # the link went, as a link
    assert sorted(os.listdir(outside)) == ["keep.txt"]
    assert (outside / "keep.txt").read_text() == "not Corral's"
    # What the payload moved aside is still Corral's, under the root: the next pass takes it.
    storage.remove(root, "scratch/7")
    assert not (root / "scratch" / "7").exists()


def test_a_file_that_cannot_be_removed_is_reported_and_removed_on_a_later_try(root: Path) -> None:
    stuck = root / "logs" / "7" / "12.1.log"
    if subprocess.run(["chattr", "+i", str(stuck)], capture_output=True).returncode != 0:
        pytest.fail("chattr +i is needed to make a file root cannot remove")
    try:
        first = storage.remove(root, "logs/7")
        assert stuck.exists() and first.errors and "12.1.log" in first.errors[0]
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=True)
    second = storage.remove(root, "logs/7")
    assert second.errors == [] and not (root / "logs" / "7").exists()


def test_a_path_already_gone_is_no_error(root: Path) -> None:
    removal = storage.remove(root, "logs/99")
    assert removal.errors == [] and removal.files == 0


def test_strays_are_what_corral_did_not_put_there(root: Path) -> None:
    (root / "notes.txt").write_text("someone's")
    (root / "logs" / "old-logs").mkdir()
    (root / "hosts" / "render01" / "attempts").mkdir(parents=True)  # the hosts' own: Corral's
    assert storage.strays(root) == ["logs/old-logs", "notes.txt"]
    assert list(storage.job_folders(root)) == [("logs", 7)]


def test_shortage_says_how_much_is_free_against_the_threshold(root: Path) -> None:
    free, reason = storage.shortage(root, 5 * 1024 ** 5)
    assert reason == f"storage root has {human_size(free)} free, below 5120 TB"
    assert storage.shortage(root, 1)[1] is None
    assert storage.shortage(root, 0)[1] is None  # 0 turns the check off


def test_sizes_read_as_people_write_them() -> None:
    assert human_size(int(1.2 * 1024 ** 3)) == "1.2 GB"
    assert human_size(5 * 1024 ** 3) == "5 GB"
    assert human_size(512) == "512 B"
