# A real farm for each integration test, on the test's own fresh vhost.

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.farm import Farm


@pytest.fixture
def farm(tmp_path: Path, amqp_uri: str, vhost: str) -> Iterator[Farm]:
    instance = Farm(tmp_path, amqp_uri, vhost)
    yield instance
    instance.stop()
