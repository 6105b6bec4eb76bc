"""Each service's RPC Protocol in shared/contracts.py matches its @rpc methods exactly."""

import inspect

import pytest

from services.cleanup import CleanupService
from services.license import LicenseService
from services.registry import RegistryService
from services.resource_negotiator import ResourceNegotiatorService
from services.scheduler import SchedulerService
from shared.contracts import (
    CleanupRpc,
    LicenseRpc,
    NegotiatorRpc,
    RegistryRpc,
    SchedulerRpc,
)


def rpc_methods(service: type) -> dict[str, inspect.Signature]:
    found = {}
    for name, member in inspect.getmembers(service, inspect.isfunction):
        entrypoints = getattr(member, "nameko_entrypoints", set())
        if any(type(e).__name__ == "Rpc" for e in entrypoints):
            found[name] = inspect.signature(member)
    return found


def protocol_methods(protocol: type) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(member)
            for name, member in inspect.getmembers(protocol, inspect.isfunction)
            if not name.startswith("_")}


@pytest.mark.parametrize(("service", "protocol"), [(SchedulerService, SchedulerRpc),
                                                   (RegistryService, RegistryRpc),
                                                   (ResourceNegotiatorService, NegotiatorRpc),
                                                   (LicenseService, LicenseRpc),
                                                   (CleanupService, CleanupRpc)])
def test_protocol_lists_every_rpc_method_with_the_same_parameters(service, protocol) -> None:
    served, promised = rpc_methods(service), protocol_methods(protocol)
    assert sorted(served) == sorted(promised)
    for name, signature in served.items():
        expected = [(p.name, p.default) for p in promised[name].parameters.values()]
        actual = [(p.name, p.default) for p in signature.parameters.values()]
        assert actual == expected, name


def test_every_rpc_method_is_documented_and_the_reference_is_current() -> None:
    from shared.rpc_reference import SERVICES, render
    from tests.farm import ROOT

    for _, protocol in SERVICES:
        for name, member in protocol_methods(protocol).items():
            assert member and getattr(protocol, name).__doc__, \
                f"{protocol.__name__}.{name} has no docstring"
    reference = (ROOT / "docs" / "rpc-reference.md").read_text()
    assert reference == render(), "run: python -m shared.rpc_reference > docs/rpc-reference.md"
    assert "docs/rpc-reference.md" in (ROOT / "README.md").read_text()
