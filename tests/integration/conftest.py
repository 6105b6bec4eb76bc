# A real farm for each integration test, on the test's own fresh vhost, once per farm database.

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import FARM_DATABASES
from tests.farm import Farm

SERVICE_DATABASES = ("SCHEDULER", "REGISTRY", "NEGOTIATOR", "LICENCE")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "farm_database" in metafunc.fixturenames:
        chosen = [name.strip() for name in
                  metafunc.config.getoption("--farm-databases").split(",") if name.strip()]
        unknown = sorted(set(chosen) - set(FARM_DATABASES))
        if unknown:
            raise pytest.UsageError(f"--farm-databases: unknown database {unknown[0]!r}; "
                                    f"choose from {', '.join(FARM_DATABASES)}")
        metafunc.parametrize("farm_database", chosen, scope="function")


@pytest.fixture
def farm(tmp_path: Path, amqp_uri: str, vhost: str, farm_database: str,
         new_postgres_database: Callable[[], str]) -> Iterator[Farm]:
    instance = Farm(tmp_path, amqp_uri, vhost)
    if farm_database == "postgresql":
        # Each service in a PostgreSQL database of its own, as the studio's compose file has it.
        for service in SERVICE_DATABASES:
            instance.env[f"CORRAL_{service}_DB"] = new_postgres_database()
    yield instance
    instance.stop()
