"""Engines: a new SQLite database opened by several processes at once."""

import subprocess
import sys
import textwrap
import time
from pathlib import Path

OPEN = textwrap.dedent("""
    import sys, time
    from sqlalchemy import text
    from shared.db import create_db_engine

    engine = create_db_engine("sqlite:///" + sys.argv[1])
    time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # every process opens it together
    with engine.connect() as connection:
        print(connection.execute(text("PRAGMA journal_mode")).scalar())
""")


def test_processes_opening_a_new_sqlite_database_together_all_get_it_in_wal(
        tmp_path: Path) -> None:
    """Switching a new database to WAL needs it to itself; SQLite answers "locked" at once to
    all but one of several connections trying together, so each must wait and try again."""
    root = Path(__file__).resolve().parents[2]
    for round_ in range(3):
        path, start_at = tmp_path / f"new{round_}.db", str(time.time() + 1.5)
        processes = [subprocess.Popen([sys.executable, "-c", OPEN, str(path), start_at],
                                      cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True) for _ in range(6)]
        outputs = [process.communicate(timeout=60) for process in processes]
        assert [out.strip() for out, _ in outputs] == ["wal"] * 6, outputs
