"""Services that tell the registry every two seconds that they are up (what `corral status` and
the monitor's overview show as "up" or "silent").

A service class inherits ReportsIn and has a `registry` RPC proxy and a `core` with `.settings`.
Import this module, not the class: `nameko run` takes every class with entrypoints in a
service's module for a service.
"""

from __future__ import annotations

import logging
import socket
from typing import Any, ClassVar

import eventlet
from nameko.timer import timer

from shared.contracts import RegistryRpc

log = logging.getLogger(__name__)


class ReportsIn:
    """A timer that reports this service instance in to the registry."""

    name: ClassVar[str]
    core: Any  # its state: .settings
    registry: RegistryRpc

    # Not eager: an RPC made before the reply listener's queue exists kills the container.
    @timer(interval=2)
    def report_in(self) -> None:
        try:
            with eventlet.Timeout(self.core.settings.rpc_timeout_seconds):
                self.registry.service_heartbeat(self.name, socket.gethostname())
        except (Exception, eventlet.Timeout) as exc:
            # Registry down: the monitor shows us as silent until it is back; nothing else waits.
            log.warning("could not report in to the registry: %s", exc)
