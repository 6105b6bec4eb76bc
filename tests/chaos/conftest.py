# The chaos suite's fixtures: each scenario's seed and folder. Its RabbitMQ node is
# tests/conftest.py's `node`, one per module, each scenario on its own vhost of it.

from pathlib import Path

import pytest


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """A seed from the scenario's name: each run of a scenario is the same run, and printed."""
    import zlib

    return zlib.crc32(request.node.name.encode())


@pytest.fixture
def chaos_dir(tmp_path: Path) -> Path:
    return tmp_path
