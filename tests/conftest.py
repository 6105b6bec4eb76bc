import eventlet

eventlet.monkey_patch()  # noqa: E402  (nameko's standalone client runs green, as in a service)

# Fixtures shared by every test: the real broker's vhosts and the real databases.

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.farm import AMQP_HOST, ROOT, create_vhost, delete_vhost, rabbitmqctl  # noqa: F401
from tests.rabbit import RabbitNode

FARM_DATABASES = ("sqlite", "postgresql")
"""What an integration test's farm can run on; the suite runs every such test on each."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--farm-databases", default="sqlite",
        help="the databases every integration test's farm runs on, comma-separated "
             "(default: sqlite; sqlite,postgresql runs the whole integration suite on each)")



POSTGRES_ADMIN_URL = os.environ.get("CORRAL_TEST_POSTGRES",
                                    "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def vhost() -> Iterator[str]:
    """A fresh RabbitMQ vhost for one test, deleted afterwards: no test sees another's messages."""
    name = create_vhost()
    yield name
    delete_vhost(name)


@pytest.fixture
def amqp_uri(vhost: str) -> str:
    return f"amqp://guest:guest@{AMQP_HOST}/{vhost}"


@contextmanager
def _postgres_database() -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped afterwards."""
    name = f"corral_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for the session, dropped afterwards."""
    with _postgres_database() as url:
        yield url


@pytest.fixture
def new_postgres_database() -> Iterator[Callable[[], str]]:
    """Makes empty PostgreSQL databases for one test (each call a new one), dropped afterwards."""
    with ExitStack() as stack:
        yield lambda: stack.enter_context(_postgres_database())


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside the storage root that a payload tries to get removed."""
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("not Corral's")
    return precious


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    """A RabbitMQ node of the module's own (own name, ports and data folder), for tests that
    restart, stop or cut their broker: never the machine's. Each test takes a vhost of it."""
    instance = RabbitNode(tmp_path_factory.mktemp("rabbit")).start()
    yield instance
    instance.stop()
