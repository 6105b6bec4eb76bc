"""Every @rpc method of every service, called with garbage through the real broker, answers
with a Corral error naming the argument and changes nothing."""

import inspect
import types
import typing
from typing import Any, Union

from services.license import LicenseService
from services.registry import RegistryService
from services.resource_negotiator import ResourceNegotiatorService
from services.scheduler import SchedulerService
from shared.errors import InvalidArgument
from shared.validation import RULES
from tests.farm import Farm

SERVICES = {"scheduler": SchedulerService, "registry": RegistryService,
            "resource_negotiator": ResourceNegotiatorService, "license": LicenseService}
PLAUSIBLE = {int: 1, str: "w1", float: 0.0, bool: False, list: [], dict: {}}
GARBAGE = {int: [1.5, "1", 2**70, True], str: [1.5, ["x"], "a\x00b"], float: ["1", [1]],
           bool: ["yes", 2], list: ["x", 5], dict: ["x", 5]}


def base_types(annotation: Any) -> tuple[set[type], bool]:
    """The plain types an annotation allows, and whether it allows None."""
    options = (typing.get_args(annotation)
               if typing.get_origin(annotation) in (Union, types.UnionType) else (annotation,))
    found = {typing.get_origin(option) or option for option in options}
    return {t for t in found if t in PLAUSIBLE}, type(None) in found


def rpc_methods(service: type) -> list[tuple[str, list[tuple[str, Any, bool]]]]:
    methods = []
    for name, member in inspect.getmembers(service, inspect.isfunction):
        if not any(type(e).__name__ == "Rpc" for e in getattr(member, "nameko_entrypoints", ())):
            continue
        original = inspect.unwrap(member)
        hints = typing.get_type_hints(original)
        parameters = [(p.name, hints.get(p.name, Any), p.default is p.empty)
                      for p in list(inspect.signature(original).parameters.values())[1:]]
        methods.append((name, parameters))
    return methods


def garbage_calls():
    """(service, method, kwargs, the argument at fault) for every argument of every method."""
    for service_name, service in SERVICES.items():
        for method, parameters in rpc_methods(service):
            plausible = {}
            for name, annotation, required in parameters:
                kinds, _ = base_types(annotation)
                if required:
                    plausible[name] = PLAUSIBLE[sorted(kinds, key=str)[0]] if kinds else None
            for name, annotation, _ in parameters:
                kinds, optional = base_types(annotation)
                if not kinds:
                    continue  # Any: whatever it is, the method decides
                bad = [value for kind in kinds for value in GARBAGE[kind]
                       if not any(type(value) is k for k in kinds)]
                if not optional:
                    bad.append(None)
                if str in kinds and name in RULES:
                    bad.append("")
                for value in bad:
                    yield service_name, method, {**plausible, name: value}, name


def farm_state(farm: Farm) -> Any:
    rpc = farm.rpc
    return (rpc.scheduler.list_jobs(), rpc.scheduler.get_job(1),
            rpc.registry.list_workers(), rpc.resource_negotiator.list_hosts(),
            rpc.license.list_pools())


def test_every_rpc_method_refuses_garbage_naming_the_argument_and_changes_nothing(
        farm: Farm) -> None:
    for module in ("registry", "scheduler", "resource_negotiator", "license"):
        farm.start_service(module)
    farm.rpc.license.set_pool("houdini", 2)
    farm.rpc.resource_negotiator.report_host("h1", 8, 16000, [], {})
    farm.submit([{"command": ["echo", "1"]}], name="kept")
    before = farm_state(farm)
    calls = 0
    wrong = []
    for service, method, kwargs, at_fault in garbage_calls():
        calls += 1
        try:
            answer = getattr(getattr(farm.rpc, service), method)(**kwargs)
        except InvalidArgument as exc:
            if not str(exc).startswith(at_fault):
                wrong.append((service, method, at_fault, repr(kwargs[at_fault]), str(exc)))
            continue
        except Exception as exc:  # noqa: BLE001  (any other error is what this test looks for)
            wrong.append((service, method, at_fault, repr(kwargs[at_fault]), repr(exc)[:200]))
            continue
        wrong.append((service, method, at_fault, repr(kwargs[at_fault]), f"answered {answer!r}"))
    assert calls > 200
    assert wrong == []
    assert farm_state(farm) == before
