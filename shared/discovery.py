"""Zero-configuration discovery: a farm announces where its broker is; a fresh render node finds it.

Lifeblood's scheduler broadcasts itself on the studio LAN so that workers need no address. Corral
does the same with one UDP datagram every few seconds, signed with an HMAC-SHA256 of its body
under the farm's secret: a node that holds the secret joins only its own farm, and an
announcement from a stranger (unsigned, signed with another secret, or replayed long after it
was sent) is refused with the reason. The announcement says where the broker is and what the farm
is called, never a password: a node's broker credentials stay in its own environment.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from shared.errors import DiscoveryRefused

log = logging.getLogger(__name__)

DEFAULT_PORT = 47001
"""The UDP port farms announce on and nodes listen on."""

MAX_AGE_SECONDS = 60.0
"""An announcement older than this (or this far in the future) is a replay, and refused."""

MAX_DATAGRAM = 4096


@dataclass(frozen=True)
class Announcement:
    """Where a farm is: its name, its broker's address and vhost, and when this was said."""

    farm: str
    amqp_host: str
    amqp_port: int
    vhost: str
    sent_at: float
    monitor_url: str = ""

    def amqp_uri(self, user: str, password: str) -> str:
        """The broker URI a node connects with, given its own credentials."""
        vhost = "%2F" if self.vhost == "/" else self.vhost
        return f"amqp://{user}:{password}@{self.amqp_host}:{self.amqp_port}/{vhost}"


def _signature(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def encode(announcement: Announcement, secret: bytes) -> bytes:
    """The datagram: the announcement's JSON and its signature under the farm's secret."""
    body = json.dumps(asdict(announcement), sort_keys=True, separators=(",", ":"))
    return json.dumps({"announcement": body,
                       "signature": _signature(secret, body.encode())}).encode()


def decode(datagram: bytes, secret: bytes, now: float | None = None) -> Announcement:
    """The announcement in a datagram, or DiscoveryRefused saying why it is not this farm's."""
    try:
        outer = json.loads(datagram)
        body, signature = outer["announcement"], outer["signature"]
    except (ValueError, TypeError, KeyError):
        raise DiscoveryRefused("not a Corral announcement") from None
    if not isinstance(body, str) or not isinstance(signature, str):
        raise DiscoveryRefused("not a Corral announcement")
    if not hmac.compare_digest(_signature(secret, body.encode()), signature):
        raise DiscoveryRefused("not signed with this farm's secret")
    try:
        fields = json.loads(body)
        announcement = Announcement(
            farm=str(fields["farm"]), amqp_host=str(fields["amqp_host"]),
            amqp_port=int(fields["amqp_port"]), vhost=str(fields["vhost"]),
            sent_at=float(fields["sent_at"]), monitor_url=str(fields.get("monitor_url", "")))
    except (ValueError, TypeError, KeyError):
        raise DiscoveryRefused("a signed announcement with missing or malformed fields") from None
    age = (time.time() if now is None else now) - announcement.sent_at
    if abs(age) > MAX_AGE_SECONDS:
        raise DiscoveryRefused(f"sent {age:.0f} s ago: a replay, or a clock far off")
    return announcement


class Announcer:
    """Sends a farm's announcement to a broadcast (or unicast) address."""

    def __init__(self, address: str = "255.255.255.255", port: int = DEFAULT_PORT) -> None:
        self.target = (address, port)
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)

    def announce(self, announcement: Announcement, secret: bytes) -> None:
        try:
            self._socket.sendto(encode(announcement, secret), self.target)
        except OSError as exc:  # no route on this network yet: the next round tries again
            log.warning("could not announce the farm to %s:%d: %s", *self.target, exc)

    def close(self) -> None:
        self._socket.close()


def listen(secret: bytes, timeout: float, port: int = DEFAULT_PORT, address: str = "",
           refused: Callable[[str, str], None] | None = None) -> Announcement | None:
    """Wait up to `timeout` seconds for this farm's announcement; None when none came.

    Every datagram that is not this farm's is passed to `refused` (sender, reason) and ignored.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            receiver.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        receiver.bind((address, port))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            receiver.settimeout(left)
            try:
                datagram, sender = receiver.recvfrom(MAX_DATAGRAM)
            except TimeoutError:
                return None
            try:
                return decode(datagram, secret)
            except DiscoveryRefused as exc:
                if refused is not None:
                    refused(f"{sender[0]}:{sender[1]}", str(exc))
    return None
