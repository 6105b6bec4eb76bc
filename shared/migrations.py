"""Brings a service's database to its newest schema with the service's own Alembic tree, once.

Each service database has a tree of revisions under `services/migrations/<tree>` and its own version
table, `alembic_version_<tree>`, so two services could even share one database. `upgrade` meets
three kinds of database:

- empty: every revision runs, from nothing to the newest (the head);
- made by `create_all` before Corral had migrations (the tree's tables, no version table): it is
  recognised as the oldest revision whose tables and columns it has exactly (revisions that only
  add an index leave them alike, and such a database predates them all), recorded as that
  revision, and upgraded from there; tables matching no revision are refused with SchemaError;
- versioned: upgraded from its revision, which is nothing to do at the head.

All of it is one transaction under a lock, so that two processes of one service starting together
migrate once and the second finds the work done: on PostgreSQL `pg_advisory_xact_lock`, keyed by the
tree, is held until the commit, and its DDL is transactional; on SQLite `BEGIN IMMEDIATE` takes the
database's write lock first (a second process waits for it, up to the engine's busy timeout), foreign
key enforcement is off meanwhile as SQLite asks for table rebuilds, and the keys are checked before
the commit. A migration that fails leaves the database as it was. Downgrades are not supported in
production: `downgrade()` functions are kept only where they are trivial.
"""

from __future__ import annotations

import logging

# Alembic logs every plugin it loads at INFO while it is imported: noise in a service's log.
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from logging.config import fileConfig
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext, MigrationInfo
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, MetaData, TextClause, create_engine, inspect, make_url, text
from sqlalchemy.engine import Engine
from sqlmodel.sql.sqltypes import AutoString

from shared.errors import SchemaError

if TYPE_CHECKING:
    from alembic.autogenerate.api import AutogenContext
    from alembic.operations.ops import MigrationScript

    from shared.config import Settings

TREES = ("scheduler", "registry", "negotiator", "licence", "cleanup")
"""The service databases, each with its migration tree (and a `<tree>_db` setting)."""

log = logging.getLogger("corral.migrations")

Shape = dict[str, frozenset[str]]
"""A schema as table name -> column names: what `create_all` could have left behind."""


@dataclass(frozen=True)
class Upgrade:
    """What `upgrade` found and left in one database."""

    before: str | None
    """The revision recorded before; None for an empty database or one made before migrations."""
    after: str
    """The revision now recorded: the head."""
    recognised: str | None = None
    """For a database made before migrations: the revision its tables were recognised as."""


def tree_directory(tree: str) -> Path:
    """The folder of a service database's migration tree, inside the installed `services` package."""
    if tree not in TREES:
        raise ValueError(f"no migration tree named {tree!r} (expected one of {', '.join(TREES)})")
    return Path(str(files("services").joinpath("migrations", tree)))


def version_table(tree: str) -> str:
    return f"alembic_version_{tree}"


def database_url(settings: Settings, tree: str) -> str:
    """The configured URL of a service database."""
    urls = {"scheduler": settings.scheduler_db, "registry": settings.registry_db,
            "negotiator": settings.negotiator_db, "licence": settings.licence_db,
            "cleanup": settings.cleanup_db}
    return urls[tree]


def alembic_config(tree: str, connection: Connection | None = None) -> Config:
    """Alembic's config for `tree`; its env.py migrates on `connection` when one is given."""
    config = Config()
    config.set_main_option("script_location", str(tree_directory(tree)))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision(tree: str) -> str:
    head = ScriptDirectory.from_config(alembic_config(tree)).get_current_head()
    if head is None:
        raise SchemaError(f"the {tree} migration tree has no revisions")
    return head


def current_revision(connection: Connection, tree: str) -> str | None:
    """The revision recorded in the database, or None when it has no version table (or no row)."""
    context = MigrationContext.configure(connection, opts={"version_table": version_table(tree)})
    return context.get_current_revision()


def upgrade(engine: Engine, tree: str) -> Upgrade:
    """Bring the database of `tree` to the head, whatever it was (see the module's docstring)."""
    with _quiet_alembic(), engine.connect() as connection:
        with migration_transaction(connection, tree):
            before = current_revision(connection, tree)
            known = _revisions(tree)
            if before is not None and before not in known:
                raise SchemaError(
                    f"the {tree} database is at revision {before}, which this version of Corral "
                    f"does not know (its newest is {known[-1]}): a newer Corral migrated it")
            config = alembic_config(tree, connection)
            config.attributes["on_version_apply"] = _log_step(tree)
            recognised = None
            if before is None:
                recognised = _recognise(connection, tree, known)
                if recognised is not None:
                    command.stamp(config, recognised)
            try:
                command.upgrade(config, "head")
            except CommandError as exc:
                raise SchemaError(f"the {tree} database cannot be upgraded: {exc}") from exc
            after = current_revision(connection, tree)
    assert after is not None
    return Upgrade(before, after, recognised)


@contextmanager
def migration_transaction(connection: Connection, tree: str) -> Iterator[None]:
    """One transaction on `connection` that no other migration of `tree` can run beside."""
    sqlite = connection.dialect.name == "sqlite"
    try:
        if sqlite:
            # Changing the pragma inside a transaction is a no-op, so it goes first.
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        elif connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(tree)})
        yield
        if sqlite:
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise SchemaError(f"migrating the {tree} database broke foreign keys: {broken[:5]}")
        connection.commit()
    except BaseException:
        connection.rollback()
        raise
    finally:
        if sqlite:
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            connection.commit()


def _lock_key(tree: str) -> int:
    """A stable 64-bit advisory lock key per tree: the same in every process and release."""
    digest = hashlib.sha256(f"corral.migrations.{tree}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _revisions(tree: str) -> list[str]:
    """The tree's revisions, oldest first."""
    script = ScriptDirectory.from_config(alembic_config(tree))
    return [revision.revision for revision in script.walk_revisions()][::-1]


def _shape(connection: Connection, tree: str, tables: Iterable[str] | None = None) -> Shape:
    inspector = inspect(connection)
    names = set(inspector.get_table_names()) - {version_table(tree)}
    if tables is not None:
        names &= set(tables)
    return {name: frozenset(column["name"] for column in inspector.get_columns(name))
            for name in names}


@cache
def _shapes(tree: str, revisions: tuple[str, ...]) -> tuple[tuple[str, Shape], ...]:
    """The tables and columns at every revision, oldest first, built in a scratch SQLite database."""
    scratch = create_engine("sqlite://")
    try:
        with scratch.connect() as connection:
            config = alembic_config(tree, connection)
            shapes = []
            for revision in revisions:
                command.upgrade(config, revision)
                shapes.append((revision, _shape(connection, tree)))
            return tuple(shapes)
    finally:
        scratch.dispose()


def _recognise(connection: Connection, tree: str, revisions: list[str]) -> str | None:
    """The revision an unversioned database's tables match; None when it has none of them."""
    if not set(inspect(connection).get_table_names()) - {version_table(tree)}:
        return None  # a new, empty database: nothing to recognise
    shapes = _shapes(tree, tuple(revisions))
    ours = {name for _, shape in shapes for name in shape}
    found = _shape(connection, tree, ours)
    if not found:
        return None
    for revision, shape in shapes:  # the oldest match: later index-only revisions still run
        if shape == found:
            return revision
    newest = shapes[-1][1]
    missing = sorted(f"{table}.{column}" for table, columns in newest.items()
                     for column in columns - found.get(table, frozenset()))
    extra = sorted(f"{table}.{column}" for table, columns in found.items()
                   for column in columns - newest.get(table, frozenset()))
    raise SchemaError(
        f"the {tree} database has Corral's tables but no {version_table(tree)} table, and they match "
        f"no revision (compared with the newest, missing: {', '.join(missing) or 'nothing'}; "
        f"unknown: {', '.join(extra) or 'nothing'})")


def _log_step(tree: str) -> Callable[..., None]:
    def on_version_apply(*, step: MigrationInfo, **_: Any) -> None:
        # The revision is the tree's Script, whose doc is the first line of its docstring.
        summary = getattr(step.up_revision, "doc", "")
        doc = f" ({summary})" if summary else ""
        if step.is_stamp:
            log.info("%s database: made before migrations, its tables are revision %s%s",
                     tree, step.up_revision_id, doc)
        else:
            log.info("%s database: migrated to revision %s%s", tree, step.up_revision_id, doc)

    return on_version_apply


@contextmanager
def _quiet_alembic() -> Iterator[None]:
    """Alembic says what it is about to do at INFO; a service logs one line per revision instead."""
    logger = logging.getLogger("alembic")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


# --- env.py ------------------------------------------------------------------------------------------

def run_environment(tree: str, metadata: MetaData) -> None:
    """The body of every tree's env.py.

    Called by `upgrade`, it migrates on the connection given. Called by the `alembic` command (a
    developer writing a revision), it opens the database given by `-x url=...`, or else the one
    Corral's config names for the tree, and runs under the same lock.
    """
    from alembic import context

    config = context.config

    def options(dialect: str) -> dict[str, Any]:
        return {
            "target_metadata": metadata,
            "version_table": version_table(tree),
            "render_as_batch": True,  # SQLite changes most things in a table by copying it
            "render_item": _render_item,
            "process_revision_directives": _number_revisions(config),
            "on_version_apply": config.attributes.get("on_version_apply") or (),
            **comparison_options(metadata, dialect),
        }

    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, **options(connection.dialect.name))
        with context.begin_transaction():
            context.run_migrations()
        return
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    url = context.get_x_argument(as_dictionary=True).get("url") or _configured_url(tree)
    if context.is_offline_mode():
        context.configure(url=url, literal_binds=True, **options(make_url(url).get_backend_name()))
        with context.begin_transaction():
            context.run_migrations()
        return
    from shared.db import create_db_engine

    engine = create_db_engine(url)
    try:
        with engine.connect() as connection, migration_transaction(connection, tree):
            context.configure(connection=connection, **options(connection.dialect.name))
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


def comparison_options(metadata: MetaData, dialect: str) -> dict[str, Any]:
    """How a database is compared with the models, by autogenerate and by the schema tests."""
    return {"compare_type": True, "include_name": _only_tables_of(metadata),
            "include_object": _comparable(dialect)}


def _configured_url(tree: str) -> str:
    from shared.config import load_settings

    return database_url(load_settings(), tree)


def _only_tables_of(metadata: MetaData) -> Callable[..., bool]:
    """Autogenerate looks at this tree's tables only, not at other services' or version tables."""
    def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
        return type_ != "table" or name in metadata.tables

    return include_name


def _comparable(dialect: str) -> Callable[..., bool]:
    def include_object(item: Any, name: str | None, type_: str, reflected: bool,
                       compare_to: Any) -> bool:
        # SQLite does not report an index column's DESC, so an index written with text("x DESC")
        # (ix_task_release) would always look changed there. It is still added when it is missing;
        # the test suite compares its SQL with what create_all makes.
        if dialect == "sqlite" and type_ == "index" and compare_to is not None:
            declared = compare_to if reflected else item
            return not any(isinstance(part, TextClause) for part in declared.expressions)
        return True

    return include_object


def _render_item(type_: str, item: Any, autogen_context: AutogenContext) -> str | bool:
    """SQLModel's str columns are written as plain sa.String, so revisions never import sqlmodel."""
    if type_ == "type" and isinstance(item, AutoString):
        return f"sa.String(length={item.length})" if item.length else "sa.String()"
    return False


def _number_revisions(config: Config) -> Callable[[MigrationContext, Any, list[MigrationScript]], None]:
    """A new revision is numbered on from the head, 0002 after 0001, as its file name says too."""
    def process_revision_directives(context: MigrationContext, revision: Any,
                                    directives: list[MigrationScript]) -> None:
        head = ScriptDirectory.from_config(config).get_current_head()
        number = int(head) + 1 if head is not None and re.fullmatch(r"\d+", head) else 1
        for script in directives:
            script.rev_id = f"{number:04d}"

    return process_revision_directives
