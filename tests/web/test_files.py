"""The monitor's file access stays inside the storage root, whatever path or symlink it is given."""

import io
import os
from pathlib import Path

import pytest
from flask import Flask

from shared.config import load_settings
from shared.identity import Role, issue_token
from tests.web.conftest import FARM_SECRET
from web import create_app, files

ESCAPES = ["../secret.txt", "/etc/passwd", "a/../../secret.txt", "..", "a/./b", "%2e%2e/secret.txt",
           "..%2Fsecret.txt", "a\\..\\..\\secret.txt", "C:/Windows", "a\x00b"]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "secret.txt").write_text("TOP-SECRET")
    storage = tmp_path / "storage"
    (storage / "logs").mkdir(parents=True)
    (storage / "logs" / "ok.log").write_text("inside")
    return storage


@pytest.mark.parametrize("path", ESCAPES)
def test_paths_that_leave_the_root_are_refused(root: Path, path: str) -> None:
    with pytest.raises(files.OutsideStorage):
        files.inside(root, path)


def test_a_symlink_a_payload_planted_is_not_followed(root: Path) -> None:
    (root / "logs" / "planted.log").symlink_to(root.parent / "secret.txt")
    (root / "logs" / "folder").symlink_to(root.parent)
    with pytest.raises(files.OutsideStorage):
        files.tail(root, root / "logs" / "planted.log", 100)
    with pytest.raises(files.OutsideStorage):
        files.inside(root, "logs/folder/secret.txt")


def test_a_file_inside_is_read(root: Path) -> None:
    assert files.tail(root, files.inside(root, "logs/ok.log"), 100)["text"] == "inside"
    assert files.read_range(root, root / "logs" / "ok.log", 2, 3)["text"] == "sid"


def test_an_upload_cannot_land_outside_or_through_a_symlinked_folder(root: Path) -> None:
    (root / "uploads").symlink_to(root.parent)
    with pytest.raises(files.OutsideStorage):
        files.save(root, "uploads/evil.txt", io.BytesIO(b"x"), 100)
    assert not (root.parent / "evil.txt").exists()


def test_an_upload_over_the_limit_leaves_no_file(root: Path) -> None:
    with pytest.raises(files.TooLarge):
        files.save(root, "uploads/ana/big.bin", io.BytesIO(b"x" * 200), 100)
    assert os.listdir(root / "uploads" / "ana") == []


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch, root: Path) -> Flask:
    monkeypatch.setenv("CORRAL_SECRET", FARM_SECRET)
    monkeypatch.setenv("CORRAL_STORAGE_ROOT", str(root))
    monkeypatch.setenv("CORRAL_AMQP_URI", "amqp://guest:guest@127.0.0.1:1/")
    return create_app(load_settings())


@pytest.mark.parametrize("path", ["../secret.txt", "..%2Fsecret.txt", "%2e%2e/secret.txt",
                                  "logs/..%2F..%2Fsecret.txt", "//etc/passwd", "logs/planted.log"])
def test_the_download_endpoint_never_serves_what_is_outside(app: Flask, root: Path,
                                                            path: str) -> None:
    (root / "logs" / "planted.log").symlink_to(root.parent / "secret.txt")
    reply = app.test_client().get(f"/api/v1/files/{path}", follow_redirects=True)
    assert reply.status_code == 404 and b"TOP-SECRET" not in reply.data


def test_the_upload_endpoint_never_writes_outside(app: Flask, root: Path) -> None:
    token = issue_token(FARM_SECRET, "ana", Role.ARTIST, ttl_seconds=600)
    client = app.test_client()
    for path in ["../../escape.txt", "..%2F..%2Fescape.txt", "a/../../../escape.txt"]:
        reply = client.put(f"/api/v1/files/{path}", data=b"x",
                           headers={"Authorization": f"Bearer {token}"})
        assert reply.status_code in (400, 404), (path, reply.status_code)
    assert not list(root.parent.rglob("escape.txt"))
