"""Each service database's migrations build exactly what its models describe, and a starting service
brings whatever database it meets (empty, made before migrations, versioned) to the newest schema."""

import itertools
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from setuptools import find_namespace_packages
from sqlalchemy import MetaData, inspect, text
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from services.cleanup.store import CleanupTable
from services.cli.main import app
from services.license.store import LicenceTable
from services.registry.store import RegistryTable
from services.resource_negotiator.store import NegotiatorTable
from services.scheduler import store as scheduler_ops
from services.scheduler.store import SchedulerTable
from shared.db import Store, create_db_engine
from shared.errors import SchemaError
from shared.migrations import (
    TREES,
    Upgrade,
    alembic_config,
    comparison_options,
    head_revision,
    migration_transaction,
    upgrade,
    version_table,
)
from shared.spec import validate_job_spec
from tests.farm import ROOT
from tests.unit.conftest import BANDS

METADATA = {"scheduler": SchedulerTable.metadata, "registry": RegistryTable.metadata,
            "negotiator": NegotiatorTable.metadata, "licence": LicenceTable.metadata,
            "cleanup": CleanupTable.metadata}


@pytest.fixture(params=["sqlite", "postgresql"])
def new_url(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str]:
    """Makes the URL of a new, empty database of the parameter's kind."""
    if request.param == "sqlite":
        numbers = itertools.count()
        return lambda: f"sqlite:///{tmp_path / f'db{next(numbers)}.db'}"
    return request.getfixturevalue("new_postgres_database")


@pytest.fixture
def new_engine(new_url: Callable[[], str]) -> Iterator[Callable[[], Engine]]:
    """Makes an engine on a new, empty database."""
    engines: list[Engine] = []

    def make() -> Engine:
        engines.append(create_db_engine(new_url()))
        return engines[-1]

    yield make
    for engine in engines:
        engine.dispose()


def differences(engine: Engine, tree: str, metadata: MetaData | None = None) -> list[Any]:
    """What autogenerate would write to bring the database to the models (or `metadata`)."""
    metadata = metadata if metadata is not None else METADATA[tree]
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={
            "version_table": version_table(tree),
            **comparison_options(metadata, engine.dialect.name)})
        assert context.opts["compare_type"] is True
        return compare_metadata(context, metadata)


def schema_of(engine: Engine) -> dict[str, Any]:
    """Every table's columns, keys and indexes as the database itself reports them."""
    schema: dict[str, Any] = {}
    with engine.connect() as connection:
        inspector = inspect(connection)
        for table in inspector.get_table_names():
            if table.startswith("alembic_version"):
                continue
            if engine.dialect.name == "sqlite":
                indexes = connection.execute(text(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = :t"),
                    {"t": table}).all()
            else:
                indexes = connection.execute(text(
                    "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = :t"),
                    {"t": table}).all()
            schema[table] = {
                "columns": {column["name"]: (str(column["type"]), column["nullable"],
                                             column["default"], column.get("autoincrement"))
                            for column in inspector.get_columns(table)},
                "primary key": inspector.get_pk_constraint(table),
                "foreign keys": sorted(json.dumps(key, sort_keys=True)
                                       for key in inspector.get_foreign_keys(table)),
                "unique": inspector.get_unique_constraints(table),
                "checks": inspector.get_check_constraints(table),
                "indexes": sorted(tuple(row) for row in indexes),
            }
    return schema


def upgrade_to(engine: Engine, tree: str, revision: str) -> None:
    with engine.connect() as connection, migration_transaction(connection, tree):
        command.upgrade(alembic_config(tree, connection), revision)


def downgrade_to(engine: Engine, tree: str, revision: str) -> None:
    with engine.connect() as connection, migration_transaction(connection, tree):
        command.downgrade(alembic_config(tree, connection), revision)


def drop_version_table(engine: Engine, tree: str) -> None:
    with engine.begin() as connection:
        connection.execute(text(f"DROP TABLE {version_table(tree)}"))


def version_rows(engine: Engine, tree: str) -> list[str]:
    with engine.connect() as connection:
        return list(connection.execute(text(f"SELECT version_num FROM {version_table(tree)}"))
                    .scalars())


# --- the schema the migrations build ----------------------------------------------------------------

@pytest.mark.parametrize("tree", TREES)
def test_an_empty_database_migrated_to_the_head_is_exactly_what_the_models_describe(
        new_engine: Callable[[], Engine], tree: str) -> None:
    engine = new_engine()
    assert upgrade(engine, tree) == Upgrade(None, head_revision(tree))
    assert differences(engine, tree) == []
    assert set(inspect(engine).get_table_names()) == {*METADATA[tree].tables, version_table(tree)}


@pytest.mark.parametrize("tree", TREES)
def test_migrations_build_what_create_all_builds_down_to_every_index_and_key(
        new_engine: Callable[[], Engine], tree: str) -> None:
    made_by_create_all, migrated = new_engine(), new_engine()
    METADATA[tree].create_all(made_by_create_all)
    upgrade(migrated, tree)
    assert schema_of(migrated) == schema_of(made_by_create_all)


def test_scheduler_revision_0001_is_todays_schema_without_task_licences(
        new_engine: Callable[[], Engine]) -> None:
    at_0001, at_0002 = new_engine(), new_engine()
    upgrade_to(at_0001, "scheduler", "0001")
    upgrade_to(at_0002, "scheduler", "0002")
    expected = schema_of(at_0002)
    del expected["task"]["columns"]["licences"]
    assert schema_of(at_0001) == expected


def test_the_comparison_finds_a_column_the_migrations_do_not_add(
        new_engine: Callable[[], Engine]) -> None:
    engine = new_engine()
    upgrade_to(engine, "scheduler", "0001")
    found = [change for change in differences(engine, "scheduler") if change[0] == "add_column"]
    assert sorted((kind, table, column.name) for kind, _, table, column in found) == [
        ("add_column", "attempt", "excused"), ("add_column", "job", "keep"),
        ("add_column", "job", "notify"), ("add_column", "job", "retention"),
        ("add_column", "job", "submission_key"), ("add_column", "task", "licence_refusals"),
        ("add_column", "task", "licences")]


@pytest.mark.parametrize("tree", TREES)
def test_the_comparison_finds_a_model_change_that_has_no_migration(
        new_engine: Callable[[], Engine], tree: str) -> None:
    engine = new_engine()
    upgrade(engine, tree)
    changed = MetaData()
    for table in METADATA[tree].sorted_tables:
        table.to_metadata(changed)
    table = changed.tables[sorted(changed.tables)[0]]
    table.append_column(sa.Column("added_later", sa.Integer(), nullable=True))
    retyped = next(column for column in table.columns if isinstance(column.type, sa.Float))
    retyped.type = sa.Integer()
    found = differences(engine, tree, changed)
    kinds = {change[0] if isinstance(change, tuple) else change[0][0] for change in found}
    assert kinds == {"add_column", "modify_type"}


# --- databases a service meets at start ----------------------------------------------------------

def insert_old_job_and_task(engine: Engine) -> None:
    """A job and a task as the scheduler wrote them before migrations, without task.licences."""
    with engine.begin() as connection:
        connection.execute(text(
            'INSERT INTO job (id, name, "user", pool, priority, band, state, task_count, depends_on,'
            " paused, max_host_failures, created_at)"
            " VALUES (7, 'old', 'ana', 'cpu', 50, 'normal', 'queued', 1, '[]', false, 3, 1.0)"))
        connection.execute(text(
            'INSERT INTO task (id, job_id, "index", name, "user", pool, band, priority, state,'
            " command, shell, env, memory_factor, max_attempts, retry_delay, attempt, failures,"
            " head, ready_at, progress, created_at, resources)"
            " VALUES (70, 7, 0, 'old-0', 'ana', 'cpu', 'normal', 50, 'queued', '[\"true\"]',"
            " false, '{}', 1.0, 1, 0.0, 1, 0, false, 0.0, 0, 1.0, '{\"cores\": 2}')"))


def test_a_scheduler_database_from_before_migrations_is_migrated_at_start_and_keeps_its_rows(
        new_engine: Callable[[], Engine]) -> None:
    engine = new_engine()
    upgrade_to(engine, "scheduler", "0001")
    drop_version_table(engine, "scheduler")  # now exactly what create_all made before 0002
    insert_old_job_and_task(engine)

    store = Store(engine, SchedulerTable.metadata, migrations="scheduler")
    assert store.migrate() == Upgrade(None, head_revision("scheduler"), recognised="0001")

    old = scheduler_ops.get_task(store, 70)
    assert (old["name"], old["resources"], old["licences"]) == ("old-0", {"cores": 2}, None)
    claimed = scheduler_ops.claim_task(store, 70, 1, "w1", "render01", 5.0).reply
    assert claimed["status"] == "claimed"
    plan = validate_job_spec({"licences": {"houdini": 1}, "tasks": [{"command": ["true"]}]},
                             BANDS, max_env_bytes=32768, max_tasks=10)
    new_job = scheduler_ops.submit_job(store, plan).reply
    new_task = scheduler_ops.get_job(store, new_job["id"])["tasks"][0]
    assert new_task["licences"] == {"houdini": 1}
    assert differences(engine, "scheduler") == []


@pytest.mark.parametrize("tree", TREES)
def test_a_database_made_by_create_all_from_todays_models_is_recognised_and_brought_to_the_head(
        new_engine: Callable[[], Engine], tree: str) -> None:
    engine = new_engine()
    METADATA[tree].create_all(engine)
    head = head_revision(tree)
    # Recognised by its tables and columns: the oldest revision that has them all. Each tree's
    # newest revision adds the audit log's table, so only the head has every table today.
    assert upgrade(engine, tree) == Upgrade(None, head, recognised=head)
    assert version_rows(engine, tree) == [head]
    assert differences(engine, tree) == []


def test_tables_that_match_no_revision_are_refused_and_left_alone(
        new_engine: Callable[[], Engine]) -> None:
    engine = new_engine()
    SchedulerTable.metadata.tables["job"].create(engine)
    with pytest.raises(SchemaError, match="match no revision.*missing: .*task.id"):
        upgrade(engine, "scheduler")
    assert inspect(engine).get_table_names() == ["job"]


def test_a_migration_that_fails_leaves_the_database_as_it_was(
        new_engine: Callable[[], Engine]) -> None:
    engine = new_engine()
    upgrade_to(engine, "scheduler", "0001")
    with pytest.raises(RuntimeError), engine.connect() as connection, \
            migration_transaction(connection, "scheduler"):
        command.upgrade(alembic_config("scheduler", connection), "0002")
        raise RuntimeError("the next step of the migration failed")
    assert version_rows(engine, "scheduler") == ["0001"]
    assert "licences" not in {column["name"] for column in inspect(engine).get_columns("task")}


@pytest.mark.parametrize("tree", TREES)
def test_migrating_a_current_database_again_changes_nothing(
        new_engine: Callable[[], Engine], tree: str) -> None:
    engine = new_engine()
    upgrade(engine, tree)
    before = schema_of(engine)
    head = head_revision(tree)
    assert upgrade(engine, tree) == Upgrade(head, head)
    assert schema_of(engine) == before
    assert version_rows(engine, tree) == [head]


def test_a_database_migrated_by_a_newer_corral_is_refused(new_engine: Callable[[], Engine]) -> None:
    engine = new_engine()
    upgrade(engine, "registry")
    with engine.begin() as connection:
        connection.execute(text(f"UPDATE {version_table('registry')} SET version_num = '9999'"))
    with pytest.raises(SchemaError, match="revision 9999.*newer Corral"):
        upgrade(engine, "registry")


def test_services_sharing_one_database_keep_their_own_versions(
        new_engine: Callable[[], Engine]) -> None:
    engine = new_engine()
    for tree in TREES:
        upgrade(engine, tree)
    assert {tree: version_rows(engine, tree) for tree in TREES} == {
        tree: [head_revision(tree)] for tree in TREES}
    assert set(inspect(engine).get_table_names()) == {
        *(name for metadata in METADATA.values() for name in metadata.tables),
        *(version_table(tree) for tree in TREES)}


MIGRATE = textwrap.dedent("""
    import sys
    import time
    from shared.db import create_db_engine
    from shared.migrations import upgrade

    url, start_at = sys.argv[1], float(sys.argv[2])
    engine = create_db_engine(url)
    time.sleep(max(0.0, start_at - time.time()))  # every process starts together
    print(upgrade(engine, "scheduler").before)
""")


def test_processes_starting_together_on_a_new_database_migrate_it_once(
        new_url: Callable[[], str]) -> None:
    url = new_url()
    start_at = str(time.time() + 2)
    processes = [subprocess.Popen([sys.executable, "-c", MIGRATE, url, start_at], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(3)]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs
    # One found the database empty and migrated it; the others waited and found it done.
    head = head_revision("scheduler")
    assert sorted(out.strip() for out, _ in outputs) == [head, head, "None"]
    engine = create_db_engine(url)
    try:
        assert version_rows(engine, "scheduler") == [head]
        assert differences(engine, "scheduler") == []
    finally:
        engine.dispose()


def test_a_migration_logs_one_line_per_revision_and_alembic_stays_quiet(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'scheduler.db'}")
    with caplog.at_level(logging.INFO):
        upgrade(engine, "scheduler")
        upgrade(engine, "scheduler")
    engine.dispose()
    assert [(record.name, record.getMessage().split(" (")[0]) for record in caplog.records] == [
        ("corral.migrations", "scheduler database: migrated to revision 0001"),
        ("corral.migrations", "scheduler database: migrated to revision 0002"),
        ("corral.migrations", "scheduler database: migrated to revision 0003"),
        ("corral.migrations", "scheduler database: migrated to revision 0004"),
        ("corral.migrations", "scheduler database: migrated to revision 0005"),
        ("corral.migrations", "scheduler database: migrated to revision 0006"),
        ("corral.migrations", "scheduler database: migrated to revision 0007"),
        ("corral.migrations", "scheduler database: migrated to revision 0008"),
        ("corral.migrations", "scheduler database: migrated to revision 0009")]


# --- downgrades, kept where trivial ------------------------------------------------------------

def test_downgrading_the_scheduler_to_0001_gives_back_the_0001_schema(
        new_engine: Callable[[], Engine]) -> None:
    downgraded, at_0001 = new_engine(), new_engine()
    upgrade(downgraded, "scheduler")
    downgrade_to(downgraded, "scheduler", "0001")
    upgrade_to(at_0001, "scheduler", "0001")
    assert schema_of(downgraded) == schema_of(at_0001)


@pytest.mark.parametrize("tree", TREES)
def test_downgrading_to_base_removes_every_table(new_engine: Callable[[], Engine],
                                                 tree: str) -> None:
    engine = new_engine()
    upgrade(engine, tree)
    downgrade_to(engine, tree, "base")
    assert set(inspect(engine).get_table_names()) <= {version_table(tree)}


# --- corral db and the alembic command -----------------------------------------------------------

@pytest.fixture
def farm_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Corral's own config file, its SQLite databases in a fresh data folder."""
    monkeypatch.setenv("CORRAL_DATA_DIR", str(tmp_path / "data"))
    for tree in TREES:
        monkeypatch.delenv(f"CORRAL_{tree.upper()}_DB", raising=False)
    return ROOT / "deploy" / "config.yaml"


def test_corral_db_upgrade_migrates_every_database_and_current_shows_them(
        tmp_path: Path, farm_config: Path) -> None:
    runner = CliRunner()
    upgraded = runner.invoke(app, ["db", "upgrade", "--config", str(farm_config)])
    assert upgraded.exit_code == 0, upgraded.output
    assert sorted(path.name for path in (tmp_path / "data").glob("*.db")) == [
        "cleanup.db", "licence.db", "negotiator.db", "registry.db", "scheduler.db"]
    current = runner.invoke(app, ["db", "current", "--config", str(farm_config), "--json"])
    assert current.exit_code == 0, current.output
    assert {entry["service"]: (entry["revision"], entry["head"])
            for entry in json.loads(current.output)} == {
        tree: (head_revision(tree), head_revision(tree)) for tree in TREES}


def test_corral_db_upgrade_of_one_service_leaves_the_others_alone(
        tmp_path: Path, farm_config: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["db", "upgrade", "--service", "scheduler",
                                 "--config", str(farm_config)])
    assert result.exit_code == 0, result.output
    head = head_revision("scheduler")
    assert "scheduler" in result.output and head in result.output
    assert [path.name for path in (tmp_path / "data").glob("*.db")] == ["scheduler.db"]
    current = runner.invoke(app, ["db", "current", "--config", str(farm_config), "--json"])
    # stdout only: the note on where it looked for the missing files goes to stderr, for people.
    revisions = {entry["service"]: entry["revision"] for entry in json.loads(current.stdout)}
    assert revisions == {"scheduler": head, "registry": None, "negotiator": None, "licence": None,
                         "cleanup": None}


def test_corral_db_refuses_an_unknown_service(farm_config: Path) -> None:
    result = CliRunner().invoke(app, ["db", "upgrade", "--service", "render",
                                      "--config", str(farm_config)])
    assert result.exit_code == 2
    assert "render" in result.output


def test_the_documented_revision_command_writes_the_next_numbered_revision(tmp_path: Path) -> None:
    trees = tmp_path / "migrations"
    shutil.copytree(ROOT / "services" / "migrations", trees,
                    ignore=shutil.ignore_patterns("__pycache__"))
    url = f"sqlite:///{tmp_path / 'dev.db'}"
    alembic = [sys.executable, "-m", "alembic", "-c", str(trees / "alembic.ini"), "-n", "scheduler",
               "-x", f"url={url}"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for argv in (["upgrade", "head"], ["revision", "--autogenerate", "-m", "nothing new"],
                 ["revision", "-m", "by hand"]):
        done = subprocess.run(alembic + argv, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
    head = int(head_revision("scheduler"))
    generated = (trees / "scheduler" / "versions" / f"{head + 1:04d}_nothing_new.py").read_text()
    assert (f"{head + 1:04d}", f"{head:04d}") == (revision_ids(generated))
    # The models have not changed since the head, so the revision has nothing to do.
    assert re.search(r"def upgrade\(\) -> None:\n(    #.*\n)*    pass\n", generated)
    by_hand = (trees / "scheduler" / "versions" / f"{head + 2:04d}_by_hand.py").read_text()
    assert (f"{head + 2:04d}", f"{head + 1:04d}") == revision_ids(by_hand)


def revision_ids(source: str) -> tuple[str, str]:
    found = dict(re.findall(r"^(revision|down_revision) = ['\"](\w+)['\"]$", source, re.MULTILINE))
    return found["revision"], found["down_revision"]


def test_every_file_of_the_migration_trees_ships_in_the_package() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    data = setuptools["package-data"]["services.migrations"]
    # Packages are found, not listed: the same search setuptools makes when it builds Corral.
    found = find_namespace_packages(where=str(ROOT), include=setuptools["packages"]["find"]["include"])
    trees = ROOT / "services" / "migrations"
    for path in trees.rglob("*"):
        if path.is_dir() or "__pycache__" in path.parts:
            continue
        if path.suffix == ".py":
            assert ".".join(path.parent.relative_to(ROOT).parts) in found, path
        else:
            assert any(path.relative_to(trees).match(pattern) for pattern in data), path
