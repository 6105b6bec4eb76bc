"""`corral health` against a real farm: a running service answers, a stopped or absent one is
reported unhealthy within the timeout, and a pool is healthy while its host has a live worker."""

import re
import subprocess
import sys

import pytest

from services.cli import health
from tests.farm import CONFIG, ROOT, Farm

pytestmark = pytest.mark.integration


def corral(farm: Farm, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args],
                          env={**farm.env, "CORRAL_CONFIG": str(CONFIG)}, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def corral_health(farm: Farm, *args: str) -> subprocess.CompletedProcess[str]:
    return corral(farm, "health", *args)


def test_each_running_service_answers_its_health_question(farm: Farm) -> None:
    for module in ("registry", "scheduler", "resource_negotiator", "license"):
        farm.start_service(module)
    for name in ("registry", "scheduler", "resource_negotiator", "license"):
        done = corral_health(farm, name, "--timeout", "10")
        assert done.returncode == 0, done.stderr
        assert f"{name}: answered in" in done.stdout


def test_a_killed_service_is_unhealthy_within_the_timeout(farm: Farm) -> None:
    farm.start_service("scheduler")
    farm.kill("scheduler")
    done = corral_health(farm, "scheduler", "--timeout", "2")
    assert done.returncode == 1
    assert "unhealthy" in done.stderr and "scheduler" in done.stderr


def test_a_service_that_never_ran_on_this_broker_is_unhealthy(farm: Farm) -> None:
    done = corral_health(farm, "cleanup", "--timeout", "2")
    assert done.returncode == 1
    assert "unhealthy" in done.stderr and "cleanup" in done.stderr


def test_a_service_without_a_listed_question_is_asked_a_method_it_lacks_and_that_answer_counts(
        farm: Farm, monkeypatch: pytest.MonkeyPatch) -> None:
    farm.start_service("registry")
    monkeypatch.delitem(health.PROBES, "registry")
    assert health.ask("registry", farm.rpc).startswith("registry: answered in")


def test_pool_health_follows_the_live_workers_of_its_host(farm: Farm) -> None:
    farm.start()  # registry and scheduler
    farm.start_service("resource_negotiator")
    farm.start_worker("--host", "render-07")
    healthy = corral_health(farm, "pool", "--host", "render-07")
    assert healthy.returncode == 0, healthy.stderr
    assert "1 live worker(s) on render-07" in healthy.stdout
    elsewhere = corral_health(farm, "pool", "--host", "render-08")
    assert elsewhere.returncode == 1
    assert "no live worker on host 'render-08'" in elsewhere.stderr


def test_with_two_schedulers_health_names_the_leader_and_the_standby_takes_over(
        farm: Farm) -> None:
    farm.env["CORRAL_LEADER_LEASE_SECONDS"] = "2"
    farm.start_service("registry")
    farm.start_service("scheduler", {"CORRAL_INSTANCE_NAME": "first"})
    farm.start_service("scheduler", {"CORRAL_INSTANCE_NAME": "second"}, name="scheduler-2")
    leader = re.compile(r"instance (first|second)/\d+/\w+ is the leader \(term (\d+)\)")
    standby = re.compile(r"instance second/\d+/\w+ is the standby; first/\d+/\w+ leads")

    def said(*args: str) -> str:
        done = corral(farm, *args)
        assert done.returncode == 0, done.stderr
        return " ".join(done.stdout.split())  # as one line, however the terminal wraps it

    for _ in range(4):  # each call is answered by either instance
        answer = said("health", "scheduler")
        leads = leader.search(answer)
        assert (leads is not None and leads.groups() == ("first", "1")) or standby.search(
            answer), answer
    farm.kill("scheduler")
    took_over = farm.wait_for(lambda: leader.search(said("health", "scheduler")), 15,
                              "the second scheduler to lead")
    assert took_over.group(1) == "second" and int(took_over.group(2)) >= 2
    status = said("status")
    assert re.search(r"scheduler: instance second/\d+/\w+ is the leader", status), status
