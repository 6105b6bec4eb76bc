"""Errors that cross RPC carry no SQL values, and secrets reach logs only as fingerprints."""

import pytest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from services.scheduler import store as store_ops
from shared.db import create_db_engine
from shared.errors import DatabaseError, StaleLease
from shared.redact import fingerprint, redacted
from shared.validation import checked
from tests.unit.test_scheduler_store import claim, submit, task_ids

SECRET = "s3cret-token-value"


def test_database_error_text_holds_no_parameters(tmp_path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(SQLAlchemyError) as failed, engine.connect() as connection:
        connection.execute(text("SELECT * FROM missing WHERE token = :token"), {"token": SECRET})
    assert SECRET not in str(failed.value)
    engine.dispose()


def test_rpc_method_failing_in_the_database_answers_database_error_without_values(
        tmp_path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'x.db'}")

    class Service:
        def lookup(self, token: str) -> None:
            with engine.connect() as connection:
                connection.execute(text("SELECT * FROM missing WHERE t = :t"), {"t": token})

    with pytest.raises(DatabaseError) as failed:
        checked(Service.lookup)(Service(), SECRET)
    assert "the database failed" in str(failed.value)
    assert SECRET not in str(failed.value) and "missing" not in str(failed.value)
    engine.dispose()


def test_stale_lease_names_the_token_by_fingerprint_only(scheduler_store) -> None:
    (task_id,) = task_ids(scheduler_store, submit(scheduler_store)["id"])
    claim(scheduler_store, task_id)
    with pytest.raises(StaleLease) as refused:
        store_ops.renew_lease(scheduler_store, task_id, SECRET, None, 10)
    assert SECRET not in str(refused.value)
    assert fingerprint(SECRET) in str(refused.value)


def test_redacted_message_shows_fingerprints_and_env_names_only() -> None:
    shown = redacted({"task_id": 1, "lease_token": SECRET, "env": {"API_KEY": "v"}})
    assert shown == {"task_id": 1, "lease_token": fingerprint(SECRET), "env": ["API_KEY"]}
    assert fingerprint(SECRET) == fingerprint(SECRET) != fingerprint("other")
