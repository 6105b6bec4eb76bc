"""The monitor's Licences page and API show how each pool counts and who holds seats for life."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.identity import Role
from tests.web.conftest import Monitor, start_farm_and_monitor


@pytest.fixture
def monitor(tmp_path: Path, vhost: str) -> Iterator[Monitor]:
    farm, instance = start_farm_and_monitor(tmp_path, vhost)
    yield instance
    farm.stop()


def test_a_per_host_pool_set_over_the_api_shows_its_hosts_and_lifetime_holders(
        monitor: Monitor) -> None:
    wrangler = monitor.as_("wes", Role.WRANGLER)
    put = monitor.call(wrangler, "PUT", "/api/v1/licences/redshift",
                       json={"total": 2, "per_host": True})
    assert put.status_code == 200, put.text
    assert put.json()["per_host"] is True
    monitor.farm.rpc.license.acquire("task-1-attempt-1", 1, 1, "w1", {"redshift": 1}, "node-a")
    monitor.farm.rpc.license.hold_for_worker("held by w9", "w9", "node-b", {"redshift": 1})

    pools = monitor.call(wrangler, "GET", "/api/v1/licences").json()
    redshift = next(p for p in pools if p["name"] == "redshift")
    assert (redshift["in_use"], redshift["hosts"]) == (2, ["node-a", "node-b"])
    page = monitor.call(wrangler, "GET", "/fragments/licences").text
    assert "per host: node-a, node-b" in page
    assert "w9" in page
