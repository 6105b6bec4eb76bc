"""A node finds its own farm's announcement on the network and refuses every other one."""

import socket
import threading
import time

import pytest

from shared.discovery import Announcement, Announcer, DiscoveryRefused, decode, encode, listen

SECRET = b"s" * 32
STRANGER = b"t" * 32


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def announcement(farm: str = "studio", host: str = "broker.lan", **changes: object) -> Announcement:
    fields: dict[str, object] = {"farm": farm, "amqp_host": host, "amqp_port": 5672,
                                 "vhost": "/", "sent_at": time.time(), **changes}
    return Announcement(**fields)  # type: ignore[arg-type]


def test_a_signed_announcement_reads_back_with_the_broker_uri() -> None:
    found = decode(encode(announcement(), SECRET), SECRET)
    assert found.farm == "studio"
    assert found.amqp_uri("corral", "pw") == "amqp://corral:pw@broker.lan:5672/%2F"


@pytest.mark.parametrize(("datagram", "reason"), [
    (b"hello", "not a Corral announcement"),
    (b'{"announcement": "{}", "signature": "00"}', "not signed with this farm's secret"),
])
def test_garbage_and_unsigned_datagrams_are_refused(datagram: bytes, reason: str) -> None:
    with pytest.raises(DiscoveryRefused, match=reason):
        decode(datagram, SECRET)


def test_another_farms_announcement_is_refused() -> None:
    with pytest.raises(DiscoveryRefused, match="not signed with this farm's secret"):
        decode(encode(announcement(farm="rival"), STRANGER), SECRET)


def test_a_replayed_announcement_is_refused() -> None:
    old = encode(announcement(sent_at=time.time() - 3600), SECRET)
    with pytest.raises(DiscoveryRefused, match="replay"):
        decode(old, SECRET)


def test_a_node_joins_its_own_farm_and_ignores_a_foreign_announcer_on_the_loopback() -> None:
    port = free_udp_port()
    refusals: list[tuple[str, str]] = []
    found: list[Announcement | None] = []
    listener = threading.Thread(target=lambda: found.append(
        listen(SECRET, timeout=10, port=port, address="127.0.0.1",
               refused=lambda sender, why: refusals.append((sender, why)))))
    listener.start()
    foreign, ours = Announcer("127.0.0.1", port), Announcer("127.0.0.1", port)
    try:
        deadline = time.monotonic() + 10
        while listener.is_alive() and time.monotonic() < deadline:
            foreign.announce(announcement(farm="rival", host="evil.lan"), STRANGER)
            time.sleep(0.05)
            if refusals:
                ours.announce(announcement(), SECRET)
            time.sleep(0.05)
    finally:
        foreign.close()
        ours.close()
        listener.join(10)
    assert found and found[0] is not None
    assert (found[0].farm, found[0].amqp_host) == ("studio", "broker.lan")
    assert refusals and all(why == "not signed with this farm's secret" for _, why in refusals)


def test_no_announcement_within_the_timeout_gives_none() -> None:
    assert listen(SECRET, timeout=0.3, port=free_udp_port(), address="127.0.0.1") is None
