"""Database engines for the services' own tables: SQLite by default, PostgreSQL by URL, one clock."""

from __future__ import annotations

import sqlite3
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import MetaData, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from sqlmodel import create_engine

if TYPE_CHECKING:
    from shared.migrations import Upgrade


def create_db_engine(url: str) -> Engine:
    """An engine tuned for one writer process: WAL and a busy timeout on SQLite."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            _use_wal(cursor)
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    if url.startswith(("postgresql://", "postgres://")):
        # The driver Corral installs; SQLAlchemy 2.1 would otherwise look for psycopg 3.
        url = "postgresql+psycopg2://" + url.split("://", 1)[1]
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5,
                         hide_parameters=True)


def _use_wal(cursor: Any, patience: float = 30.0) -> None:
    """Put a SQLite database in WAL mode, waiting while another connection holds it.

    Switching a new database to WAL needs it to itself, and SQLite answers "database is locked"
    at once rather than through its busy timeout: two processes opening one new database together
    (services starting side by side) would otherwise see one of them fail.
    """
    if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return  # the mode is stored in the database: every later connection finds it set
    deadline = time.monotonic() + patience
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def clock_query(engine: Engine) -> str:
    """SQL giving the database's time as epoch seconds: every service agrees on one clock."""
    if engine.dialect.name == "sqlite":
        return "SELECT (julianday('now') - 2440587.5) * 86400.0"
    return "SELECT extract(epoch from clock_timestamp())"


def writer_lock_query(engine: Engine, name: str) -> str:
    """SQL that makes the transaction it starts the only writer of a store's tables until it ends.

    SQLite: BEGIN IMMEDIATE, the database's own write lock taken before the first read (a
    deferred transaction would read, then find another process had written meanwhile).
    PostgreSQL: a transaction-level advisory lock on a key named after the store, so services
    sharing one database do not wait on each other.
    """
    if engine.dialect.name == "sqlite":
        return "BEGIN IMMEDIATE"
    key = zlib.crc32(f"corral.store.{name}".encode())
    return f"SELECT pg_advisory_xact_lock({key})"


class Store:
    """A service's handle on its own database: its schema, sessions, one writer at a time, the clock.

    `migrations` names the Alembic tree of the database (services/migrations/<name>): `migrate()`
    brings the database to the newest schema with it.
    """

    def __init__(self, engine: Engine, metadata: MetaData, migrations: str | None = None) -> None:
        self.engine = engine
        self.metadata = metadata
        self.migrations = migrations
        self._clock_sql = text(clock_query(engine))
        # SQLite runs inside this process, so its clock is this host's clock: reading it with
        # time.time() gives the same answer without a query (several per task on the hot path).
        self._local_clock = engine.dialect.name == "sqlite"
        # One writer at a time: SQLite allows no more, and a green thread must never wait on a
        # database lock held by another green thread of the same process.
        self._write_lock = threading.RLock()
        self._writer_sql = text(writer_lock_query(engine, migrations or ",".join(
            sorted(metadata.tables))))

    def migrate(self) -> Upgrade:
        """Bring the database to the newest schema, once even if several processes start together.

        An empty database gets every revision; one made before Corral had migrations is recognised
        and upgraded; a current one is left alone (see shared.migrations).
        """
        if self.migrations is None:
            raise ValueError("this store was opened without migrations")
        # Imported here: only the processes that own a database load Alembic.
        from shared.migrations import upgrade

        return upgrade(self.engine, self.migrations)

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A session in one transaction, committed on success; never do broker I/O inside it.

        The transaction first takes the database's writer lock for this store (see
        writer_lock_query): it runs alone among every process writing these tables, so what it
        read is still so when it commits, however many instances of a service share them.
        """
        with self._write_lock:
            with Session(self.engine, expire_on_commit=False) as session:
                with session.begin():
                    session.execute(self._writer_sql)
                    yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    def now(self, session: Session) -> float:
        """The database's time in epoch seconds: one clock for every service sharing it."""
        if self._local_clock:
            return time.time()
        return float(session.execute(self._clock_sql).scalar_one())

    def dispose(self) -> None:
        self.engine.dispose()
