"""Poison specs are refused at submit with the field named, and a fuzzed spec never gets past
the scheduler's checks with anything but a Corral error (and then stores nothing)."""

import math
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.scheduler import store as store_ops
from services.scheduler.store import SchedulerTable
from shared.db import Store, create_db_engine
from shared.errors import CorralError, InvalidSpec
from shared.spec import validate_job_spec
from tests.unit.conftest import BANDS


def validate(raw):
    return validate_job_spec(raw, BANDS, max_env_bytes=1 << 20, max_tasks=10_000)


@pytest.mark.parametrize(("raw", "message"), [
    ({"tasks": [{"command": ["echo", "a\x00b"]}]}, "tasks[0].command[1]: must not contain a NUL"),
    ({"tasks": [{"command": ["echo"], "env": {"A": "\ud800"}}]},
     "tasks[0].env.A: is not valid Unicode"),
    ({"cwd": "/tmp/\udcff", "tasks": [{"command": ["x"]}]}, "cwd: is not valid Unicode"),
    ({"name": "shot\n010", "tasks": [{"command": ["x"]}]}, "name: must not contain control"),
    ({"tasks": [{"name": "a\x1b[31m", "command": ["x"]}]}, "tasks[0].name: must not contain"),
    ({"depends_on": [2**70], "tasks": [{"command": ["x"]}]}, "depends_on[0]:"),
    ({"max_host_failures": 2**64, "tasks": [{"command": ["x"]}]}, "max_host_failures:"),
    ({"timeout": math.inf, "tasks": [{"command": ["x"]}]}, "timeout: must be a finite number"),
    ({"timeout": math.nan, "tasks": [{"command": ["x"]}]}, "timeout: must be a finite number"),
    ({"timeout": 1e-300, "tasks": [{"command": ["x"]}]}, "timeout:"),
    ({"tasks": [{"command": ["x", "y" * 200_000]}]}, "tasks[0].command: item 1 is 200000 bytes"),
    ({"tasks": [{"command": ["x"], "resources": {"custom": {"tape": math.inf}}}]},
     "tasks[0].resources.custom.tape: must be a finite number"),
    ({"layers": [{"name": "r", "frames": "1-99999999999999999999", "command": ["x"]}]},
     "layers[0].frames:"),
])
def test_poison_spec_is_refused_naming_the_field(raw, message) -> None:
    with pytest.raises(InvalidSpec) as refused:
        validate(raw)
    assert str(refused.value).startswith(message), str(refused.value)


def test_a_million_frame_range_is_refused_before_it_is_expanded() -> None:
    started = time.process_time()
    with pytest.raises(InvalidSpec, match=r"layers\[0\]\.frames: .* makes 1000000 tasks"):
        validate({"layers": [{"name": "r", "frames": "1-1000000", "command": ["x"]}]})
    assert time.process_time() - started < 0.5  # counted, not built: far below a second


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=4),
    max_leaves=12)
fields = st.sampled_from(["name", "user", "pool", "priority", "env", "cwd", "timeout",
                          "stall_timeout", "max_host_failures", "retry", "resources",
                          "preferred", "licences", "depends_on", "tasks", "layers"])
task_fields = st.sampled_from(["command", "name", "env", "cwd", "timeout", "shell", "retry",
                               "resources", "depends_on", "pool", "frames", "chunk"])


@st.composite
def malformed_specs(draw):
    """A valid spec with some fields, of the job or of a task or layer, replaced by garbage."""
    spec = {"name": "fuzz", "user": "fuzz",
            "tasks": [{"command": ["echo", "1"]}, {"command": ["echo", "2"], "depends_on": [0]}]}
    if draw(st.booleans()):
        spec = {"name": "fuzz", "layers": [{"name": "r", "frames": "1-4", "chunk": 2,
                                            "command": ["echo", "{start}"]}]}
    for _ in range(draw(st.integers(1, 3))):
        items = spec.get("tasks") or spec.get("layers")
        if draw(st.booleans()):
            spec[draw(fields)] = draw(json_values)
        elif isinstance(items, list) and items and isinstance(items[0], dict):
            items[0][draw(task_fields)] = draw(json_values)
    return spec


@pytest.fixture(scope="module")
def fuzz_store():
    with tempfile.TemporaryDirectory() as directory:
        store = Store(create_db_engine(f"sqlite:///{Path(directory) / 's.db'}"),
                      SchedulerTable.metadata, migrations="scheduler")
        store.migrate()
        yield store
        store.dispose()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=malformed_specs())
def test_fuzzed_spec_is_stored_whole_or_refused_with_a_corral_error(fuzz_store, spec) -> None:
    before = store_ops.list_jobs(fuzz_store, page_size=1)["total"]
    try:
        plan = validate(spec)
        store_ops.submit_job(fuzz_store, plan, 1_000_000)
    except CorralError:
        assert store_ops.list_jobs(fuzz_store, page_size=1)["total"] == before
        return
    assert store_ops.list_jobs(fuzz_store, page_size=1)["total"] == before + 1
