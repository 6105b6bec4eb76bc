"""Every RPC method of every service declares who may call it, and the declared rules hold."""

import importlib
import pkgutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from nameko.rpc import rpc
from nameko.testing.services import worker_factory

import services
from services.common.access import Access, Authenticated, allow, rpc_methods, rule_of
from services.scheduler.ownership import env_for_owner, submitted_by_caller
from shared import audit
from shared.db import Store
from shared.errors import ConfigError, PermissionDenied, Unauthenticated
from shared.identity import Identity, Role
from tests.unit.access_helpers import caller, settings_with_secret, token_for


def every_service() -> list[type]:
    """Every class with @rpc methods in any module under services/: a new one is found too."""
    found: dict[str, type] = {}
    for module_info in pkgutil.walk_packages(services.__path__, "services."):
        if ".migrations" in module_info.name or module_info.name.endswith("__main__"):
            continue
        module = importlib.import_module(module_info.name)
        for value in vars(module).values():
            if isinstance(value, type) and rpc_methods(value):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return sorted(found.values(), key=lambda cls: cls.__name__)


SERVICES = every_service()


def test_the_walk_finds_the_four_services() -> None:
    assert {cls.__name__ for cls in SERVICES} >= {
        "SchedulerService", "RegistryService", "ResourceNegotiatorService", "LicenseService"}


@pytest.mark.parametrize("service", SERVICES, ids=lambda cls: cls.__name__)
def test_every_rpc_method_declares_its_access_rule(service: type) -> None:
    missing = [name for name, method in rpc_methods(service).items() if rule_of(method) is None]
    assert missing == [], f"{service.__name__}: no @allow rule on {missing}"


@pytest.mark.parametrize("service", SERVICES, ids=lambda cls: cls.__name__)
def test_every_service_verifies_callers_and_hears_revocations(service: type) -> None:
    assert isinstance(vars(service).get("access"), Access)
    assert issubclass(service, Authenticated)


WORKER_FACING = {
    "scheduler": {"claim_task", "renew_lease", "finish_task", "hand_back_task"},
    "registry": {"register_worker", "worker_heartbeat", "leave_worker"},
    "resource_negotiator": {"report_host", "reserve", "release", "release_for_worker"},
    "license": {"acquire", "hold_for_worker", "release", "release_for_worker"},
}


@pytest.mark.parametrize("service", SERVICES, ids=lambda cls: cls.__name__)
def test_exactly_the_worker_facing_methods_take_the_worker_credential(service: type) -> None:
    worker_only = {name for name, method in rpc_methods(service).items()
                   if rule_of(method).minimum is Role.WORKER}
    assert worker_only == WORKER_FACING.get(service.name, set())


def test_the_pools_reads_take_the_worker_credential_too() -> None:
    from services.registry import RegistryService
    from services.resource_negotiator import ResourceNegotiatorService

    worker = Identity("farm-worker", Role.WORKER, "w")
    for method in (RegistryService.list_workers, ResourceNegotiatorService.free):
        assert rule_of(method).admits(worker) and rule_of(method).admits(Identity("v", Role.VIEWER, "v"))
    assert not rule_of(RegistryService.farm_overview).admits(worker)


class Unruled:
    name = "unruled"
    access = Access()

    @rpc
    def forgotten(self) -> None: ...


def test_a_service_with_a_method_without_a_rule_refuses_to_start() -> None:
    provider = Access()
    provider.container = SimpleNamespace(service_cls=Unruled, service_name="unruled")
    with pytest.raises(ConfigError, match="without an access rule.*forgotten"):
        provider.setup()


class Jobs:
    """A tiny service with the scheduler's kinds of rule, over a dict of job -> owner."""

    name = "jobs"
    access = Access(None)
    owners = {1: "ana", 2: "bob"}

    @rpc
    @allow(Role.VIEWER)
    def look(self) -> str:
        return "seen"

    @rpc
    @allow(Role.ARTIST, owner=lambda service, arguments: service.owners[arguments["job_id"]])
    def cancel(self, job_id: int) -> str:
        return f"cancelled {job_id}"

    @rpc
    @allow(Role.WORKER)
    def claim(self) -> str:
        return "claimed"


def jobs(tmp_path: Path, token: str | None) -> Any:
    return worker_factory(Jobs, access=caller(settings_with_secret(tmp_path), "jobs", token))


def test_a_call_without_a_token_or_with_a_forged_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Unauthenticated, match="no token"):
        jobs(tmp_path, None).look()
    forged = token_for("ana", Role.ADMIN)[:-4] + "AAAA"
    with pytest.raises(Unauthenticated, match="signature"):
        jobs(tmp_path, forged).look()


def test_an_expired_token_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Unauthenticated, match="expired"):
        jobs(tmp_path, token_for("ana", Role.ARTIST, ttl_seconds=1, now=1000.0)).look()


def test_an_artist_acts_on_their_own_job_only_and_a_wrangler_on_any(tmp_path: Path) -> None:
    assert jobs(tmp_path, token_for("ana", Role.ARTIST)).cancel(1) == "cancelled 1"
    with pytest.raises(PermissionDenied, match="belongs to bob"):
        jobs(tmp_path, token_for("ana", Role.ARTIST)).cancel(2)
    assert jobs(tmp_path, token_for("wendy", Role.WRANGLER)).cancel(2) == "cancelled 2"
    with pytest.raises(PermissionDenied, match="needs the artist role"):
        jobs(tmp_path, token_for("vic", Role.VIEWER)).cancel(1)


def test_the_worker_credential_takes_only_worker_methods_and_people_never_do(
        tmp_path: Path) -> None:
    worker = jobs(tmp_path, token_for("farm-worker", Role.WORKER))
    assert worker.claim() == "claimed"
    with pytest.raises(PermissionDenied, match="viewer role"):
        worker.look()
    with pytest.raises(PermissionDenied, match="worker credential"):
        jobs(tmp_path, token_for("root", Role.ADMIN)).claim()


def test_a_wrongly_called_method_says_so_as_nameko_would(tmp_path: Path) -> None:
    from nameko.exceptions import IncorrectSignature

    with pytest.raises(IncorrectSignature):
        jobs(tmp_path, token_for("ana", Role.ARTIST)).cancel(1, 2)


ANA = Identity("ana", Role.ARTIST, "t")


def test_a_submitted_job_belongs_to_the_token_user() -> None:
    assert submitted_by_caller(None, ANA, {"spec": {"name": "x"}})["spec"]["user"] == "ana"
    assert submitted_by_caller(None, ANA, {"spec": {"user": None}})["spec"]["user"] == "ana"
    with pytest.raises(PermissionDenied, match="^user: ana may submit jobs only as themselves"):
        submitted_by_caller(None, ANA, {"spec": {"user": "bob"}})
    wrangler = Identity("pipeline-admin", Role.WRANGLER, "t")
    assert submitted_by_caller(None, wrangler, {"spec": {"user": "bob"}})["spec"]["user"] == "bob"


def test_env_values_reach_only_the_owner_and_wranglers() -> None:
    job = {"user": "bob", "env": {"API_KEY": "secret"},
           "tasks": [{"user": "bob", "env": {"API_KEY": "secret", "SHOT": "010"}}]}
    seen_by_ana = env_for_owner(None, ANA, job)
    assert seen_by_ana["env"] == {"API_KEY": None} and seen_by_ana["env_hidden"]
    assert seen_by_ana["tasks"][0]["env"] == {"API_KEY": None, "SHOT": None}
    assert env_for_owner(None, Identity("bob", Role.ARTIST, "t"), job) == job
    assert env_for_owner(None, Identity("w", Role.WRANGLER, "t"), job) == job


def test_an_audited_call_is_recorded_with_its_actor_and_origin(tmp_path: Path,
                                                               registry_store: Store) -> None:
    from services.registry.store import AUDIT

    class Audited:
        name = "audited"
        access = Access(AUDIT)
        core = SimpleNamespace(store=registry_store)

        @rpc
        @allow(Role.WRANGLER, audit="licence pool {name}")
        def set_pool(self, name: str, total: int, password: str = "x") -> dict[str, Any]:
            return {"name": name, "total": total}

    service = worker_factory(Audited, access=caller(
        settings_with_secret(tmp_path), "audited", token_for("wendy", Role.WRANGLER), AUDIT,
        origin="cli wendy@ws-3"))
    service.core = SimpleNamespace(store=registry_store)
    service.set_pool("nuke", 5)
    (entry,) = audit.entries(registry_store, AUDIT)
    assert (entry["actor"], entry["role"], entry["action"], entry["target"], entry["origin"]) == (
        "wendy", "wrangler", "set_pool", "licence pool nuke", "cli wendy@ws-3")
    assert entry["detail"] == {"name": "nuke", "total": 5}


def test_the_broker_users_script_in_deploy_is_the_one_the_rules_make() -> None:
    from services.cli.broker import setup_script
    from tests.farm import ROOT

    assert (ROOT / "deploy" / "rabbitmq" / "users.sh").read_text() == setup_script(), (
        "regenerate it: corral broker-users > deploy/rabbitmq/users.sh")
