# Stores on both real databases: SQLite files and a fresh PostgreSQL database.

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import MetaData, text

from services.cleanup.store import CleanupTable
from services.license.store import LicenceTable
from services.registry.store import RegistryTable
from services.resource_negotiator.store import NegotiatorTable
from services.scheduler.store import SchedulerTable
from shared.bands import parse_bands
from shared.db import Store, create_db_engine
from shared.migrations import version_table

BANDS = parse_bands({"low": [0, 9], "normal": [10, 99], "high": [100, 1000]})


def _store(request: pytest.FixtureRequest, tmp_path: Path, metadata, name: str) -> Store:
    """A store on a database its migrations built, as a starting service leaves it."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / name}.db"
    else:
        url = request.getfixturevalue("postgres_url")
    store = Store(create_db_engine(url), metadata, migrations=name)
    # The PostgreSQL database lasts the session: start from nothing, version table included.
    metadata.drop_all(store.engine)
    with store.engine.begin() as connection:
        connection.execute(text(f"DROP TABLE IF EXISTS {version_table(name)}"))
    store.migrate()
    return store


def _store_fixture(metadata: MetaData, name: str) -> Callable[..., Iterator[Store]]:
    """A fixture giving a freshly migrated `name` database, once on SQLite, once on PostgreSQL."""

    @pytest.fixture(params=["sqlite", "postgresql"])
    def fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
        store = _store(request, tmp_path, metadata, name)
        yield store
        store.dispose()

    return fixture


scheduler_store = _store_fixture(SchedulerTable.metadata, "scheduler")
registry_store = _store_fixture(RegistryTable.metadata, "registry")
negotiator_store = _store_fixture(NegotiatorTable.metadata, "negotiator")
licence_store = _store_fixture(LicenceTable.metadata, "licence")
cleanup_store = _store_fixture(CleanupTable.metadata, "cleanup")
