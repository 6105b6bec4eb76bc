# The monitor against a real farm: services and a worker as processes, gunicorn in front.

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from shared.identity import Role, issue_token
from tests.farm import AMQP_HOST, Farm, create_vhost, delete_vhost

FARM_SECRET = "tests-" + "0123456789abcdef" * 3
"""A signing secret for monitors started inside a test, without a farm."""


@dataclass
class Monitor:
    """A running monitor and a way to call it as anyone."""

    farm: Farm
    url: str

    def token(self, user: str, role: Role) -> str:
        return issue_token(self.farm.credentials.secret, user, role, ttl_seconds=3600)

    def as_(self, user: str, role: Role) -> requests.Session:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.token(user, role)}"
        return session

    def call(self, session: requests.Session | None, method: str, path: str,
             **kwargs: Any) -> requests.Response:
        return (session or requests).request(method, self.url + path, timeout=10, **kwargs)


def start_farm_and_monitor(directory: Path, vhost: str,
                           **env: str) -> tuple[Farm, Monitor]:
    farm = Farm(directory, f"amqp://guest:guest@{AMQP_HOST}/{vhost}", vhost)
    farm.env.update(env)
    try:
        farm.start(workers=1)
        farm.start_service("resource_negotiator")
        farm.start_service("license")
        return farm, Monitor(farm, farm.start_monitor())
    except BaseException:
        farm.stop()
        raise


@pytest.fixture
def monitor(tmp_path: Path, vhost: str) -> Iterator[Monitor]:
    """A farm of its own for a test that stops parts of it."""
    farm, instance = start_farm_and_monitor(tmp_path, vhost)
    yield instance
    farm.stop()


@pytest.fixture(scope="module")
def shared_monitor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitor]:
    """One farm for a module's tests that only add jobs of their own to it."""
    vhost = create_vhost()
    farm, instance = start_farm_and_monitor(tmp_path_factory.mktemp("farm"), vhost)
    yield instance
    farm.stop()
    delete_vhost(vhost)
