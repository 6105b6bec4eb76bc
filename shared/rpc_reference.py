"""The RPC reference (docs/rpc-reference.md), generated from the Protocols in shared/contracts.py.

`python -m shared.rpc_reference > docs/rpc-reference.md` writes it again after a change; a test
checks that the file is what this module makes of today's contracts.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from shared import contracts

SERVICES = (("scheduler", contracts.SchedulerRpc), ("registry", contracts.RegistryRpc),
            ("resource_negotiator", contracts.NegotiatorRpc), ("license", contracts.LicenseRpc),
            ("cleanup", contracts.CleanupRpc))


def _signature(function: Callable[..., Any]) -> str:
    parameters = list(inspect.signature(function).parameters.values())[1:]  # self
    return ", ".join(str(p).replace("'", "") for p in parameters)


def render() -> str:
    """The whole reference as Markdown: every service, every method, its arguments and use."""
    lines = ["# Corral RPC reference", "",
             "Every method each service answers over nameko RPC, generated from "
             "`shared/contracts.py` (`python -m shared.rpc_reference > docs/rpc-reference.md`). "
             "A pipeline script calls them as `rpc.SERVICE.METHOD(...)` through "
             "`shared.rpc.farm_rpc` or nameko's `ClusterRpcProxy`; methods marked *Workers* or "
             "*Services* are the farm's own plumbing. Refusals arrive as the errors of "
             "`shared/errors.py`.", ""]
    for service, protocol in SERVICES:
        lines += [f"## `{service}`", "", inspect.getdoc(protocol) or "", ""]
        for name, function in inspect.getmembers(protocol, inspect.isfunction):
            if name.startswith("_"):
                continue
            doc = " ".join((inspect.getdoc(function) or "").split())
            lines += [f"- `{name}({_signature(function)})`: {doc}"]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(), end="")
