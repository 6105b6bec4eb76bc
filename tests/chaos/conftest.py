# The chaos suite's RabbitMQ node: one per module, each scenario on its own vhost of it.

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.rabbit import RabbitNode


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    instance = RabbitNode(tmp_path_factory.mktemp("rabbit")).start()
    yield instance
    instance.stop()


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """A seed from the scenario's name: each run of a scenario is the same run, and printed."""
    import zlib

    return zlib.crc32(request.node.name.encode())


@pytest.fixture
def chaos_dir(tmp_path: Path) -> Path:
    return tmp_path
