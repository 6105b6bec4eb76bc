"""Spec validation: every refusal names the field that is wrong."""

import pytest

from shared.errors import InvalidSpec
from shared.spec import validate_job_spec
from tests.unit.conftest import BANDS


def validate(raw):
    return validate_job_spec(raw, BANDS, max_env_bytes=1024, max_tasks=10)


@pytest.mark.parametrize(("raw", "message"), [
    ({"tasks": [{}]}, "tasks[0].command: is required"),
    ({"tasks": [{"command": "render -f 1"}]}, "tasks[0].command: Input should be a valid list"),
    ({"tasks": [{"command": ["render", 1]}]}, "tasks[0].command[1]:"),
    ({"tasks": [{"command": []}]}, "tasks[0].command:"),
    ({"tasks": [{"command": [""]}]}, "tasks[0].command: the first item (the program) is empty"),
    ({"priority": 5000, "tasks": [{"command": ["x"]}]}, "priority: 5000 is outside every band"),
    ({"tasks": [{"command": ["x"], "timeout": -1}]}, "tasks[0].timeout:"),
    ({"tasks": [{"command": ["x"]}], "colour": "red"}, "colour: is not a known field"),
    ({"tasks": [{"command": ["x"], "env": {"A": "x" * 2000}}]}, "tasks[0].env:"),
    ({"env": {"A": "x" * 2000}, "tasks": [{"command": ["x"]}]}, "env:"),
    ({"tasks": []}, "tasks:"),
    ({"tasks": [{"command": ["x"]}] * 11}, "tasks: 11 tasks is more than the limit of 10"),
    ({"tasks": [{"command": ["a", "b"], "shell": True}]}, "tasks[0].command: with shell=true"),
    ({"user": "a b", "tasks": [{"command": ["x"]}]}, "user:"),
    ({"retry": {"max_attempts": 0}, "tasks": [{"command": ["x"]}]}, "retry.max_attempts:"),
    ([1, 2], "spec: must be a JSON object"),
])
def test_bad_spec_is_refused_naming_the_field(raw, message) -> None:
    with pytest.raises(InvalidSpec) as refused:
        validate(raw)
    assert str(refused.value).startswith(message)


def test_job_defaults_apply_to_tasks_and_tasks_override_them() -> None:
    plan = validate({"name": "r", "env": {"A": "1", "B": "1"}, "cwd": "/job", "timeout": 60,
                     "retry": {"max_attempts": 3},
                     "tasks": [{"command": ["x"]},
                               {"command": ["y"], "env": {"B": "2"}, "cwd": "/t", "timeout": 5,
                                "retry": {"max_attempts": 1}, "name": "special"}]})
    first, second = plan.tasks
    assert (first.name, first.env, first.cwd, first.timeout, first.max_attempts) == \
        ("r.0", {"A": "1", "B": "1"}, "/job", 60.0, 3)
    assert (second.name, second.env, second.cwd, second.timeout, second.max_attempts) == \
        ("special", {"A": "1", "B": "2"}, "/t", 5.0, 1)
    assert plan.band == "normal"


def test_resources_are_read_with_sizes_and_tasks_override_the_job() -> None:
    plan = validate({"resources": {"cores": 4, "memory": "8G"},
                     "preferred": {"cores": 16, "memory": "32G"},
                     "tasks": [{"command": ["x"]},
                               {"command": ["y"], "resources": {"memory": "512M", "gpus": 1}}]})
    first, second = plan.tasks
    assert first.resources == {"cores": 4.0, "memory_mb": 8192, "gpus": 0, "custom": {}}
    assert first.preferred == {"cores": 16.0, "memory_mb": 32768, "gpus": 0, "custom": {}}
    assert second.resources == {"cores": 1.0, "memory_mb": 512, "gpus": 1, "custom": {}}


def test_bad_memory_size_names_its_field() -> None:
    with pytest.raises(InvalidSpec, match=r"^tasks\[0\]\.resources\.memory: '12 parsecs' is not"):
        validate({"tasks": [{"command": ["x"], "resources": {"memory": "12 parsecs"}}]})
