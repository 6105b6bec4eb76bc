"""The monitor in a real browser against a real farm: what an artist and a wrangler see and do."""

import time
from pathlib import Path

from playwright.sync_api import Page, expect

from shared.identity import Role
from tests.farm import pid_alive
from tests.web.conftest import Monitor
from web.rpc import RpcClient


def add_user(monitor: Monitor, username: str, role: Role, password: str) -> None:
    client = RpcClient(monitor.farm.amqp_uri, timeout=10)
    try:
        client.call("registry", "create_user", token=monitor.farm.credentials.admin_token,
                    username=username, role=str(role), password=password)
    finally:
        client.close()


def test_the_overview_loads_and_shows_the_workers(shared_monitor: Monitor, page: Page) -> None:
    page.goto(shared_monitor.url + "/")
    expect(page.locator("h1")).to_have_text("The farm")
    alive = len(shared_monitor.farm.rpc.registry.list_workers(alive=True))
    idle_or_busy = page.locator('[data-count="idle"]'), page.locator('[data-count="busy"]')
    shared_monitor.farm.wait_for(
        lambda: sum(int(c.inner_text()) for c in idle_or_busy) == alive, 10,
        "the overview to count the workers")
    expect(page.locator('[data-service="scheduler"]')).to_have_text("scheduler: up")
    page.goto(shared_monitor.url + "/workers")
    expect(page.locator("tr[data-worker]")).to_have_count(alive)
    # A host whose workers all left is shown as such, not as if it were there.
    shared_monitor.farm.rpc.resource_negotiator.report_host("left-host", 2, 2048, [], {})
    page.goto(shared_monitor.url + "/workers")
    expect(page.locator('tr[data-host="left-host"] td.presence')).to_have_text("none: all left")
    for host in {w["host"] for w in shared_monitor.farm.rpc.registry.list_workers(alive=True)}:
        row = page.locator(f'tr[data-host="{host}"] td.presence')
        if row.count():
            expect(row).to_have_text("present")


def test_a_running_jobs_progress_and_log_tail_change_without_a_reload(
        shared_monitor: Monitor, page: Page, tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    script = (f"i=0; while [ ! -e {stop} ]; do i=$((i+1)); echo CORRAL_PROGRESS $((i*5 % 100)); "
              "echo rendered tile $i; sleep 0.3; done")
    job = shared_monitor.farm.submit([{"command": ["sh", "-c", script]}], user="ana")
    page.goto(f"{shared_monitor.url}/jobs/{job['id']}")
    page.evaluate("window.__notReloaded = true")
    progress = page.locator("#task-progress")
    shared_monitor.farm.wait_for(lambda: page.locator("#task-state").inner_text() == "running",
                                 30, "the task to show as running")
    first = progress.inner_text()
    shared_monitor.farm.wait_for(lambda: progress.inner_text() != first, 15,
                                 "the progress on screen to change")
    log = page.locator("#log-tail")
    lines = log.inner_text().count("rendered tile")
    shared_monitor.farm.wait_for(lambda: log.inner_text().count("rendered tile") > lines, 15,
                                 "the log tail on screen to grow")
    assert page.evaluate("window.__notReloaded") is True
    stop.touch()
    shared_monitor.farm.wait_for_job(job["id"])


def test_cancelling_from_the_page_asks_for_login_then_kills_the_process(
        shared_monitor: Monitor, page: Page, tmp_path: Path) -> None:
    add_user(shared_monitor, "ana", Role.ARTIST, "ana-password-1")
    pid_file = tmp_path / "pid"
    job = shared_monitor.farm.submit(
        [{"command": ["sh", "-c", f"echo $$ > {pid_file}; exec sleep 120"]}], user="ana")
    shared_monitor.farm.wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 30,
                                 "the payload to start")
    pid = int(pid_file.read_text())
    page.goto(f"{shared_monitor.url}/jobs/{job['id']}")
    page.locator('#job-actions button[data-action="cancel"]').click()
    expect(page).to_have_url(f"{shared_monitor.url}/login?next=/jobs/{job['id']}")
    page.fill('input[name="username"]', "ana")
    page.fill('input[name="password"]', "ana-password-1")
    page.locator('form.login button[type="submit"]').click()
    expect(page).to_have_url(f"{shared_monitor.url}/jobs/{job['id']}")
    expect(page.locator("#me")).to_have_text("ana (artist)")
    page.locator('#job-actions button[data-action="cancel"]').click()
    expect(page.locator(".flash.ok")).to_contain_text("cancel done")
    deadline = time.monotonic() + 5
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid), "the payload outlived its cancel from the page"
    assert shared_monitor.farm.rpc.scheduler.get_job(job["id"], task_limit=0)["state"] == \
        "cancelled"


def test_a_failed_task_shows_its_reason(shared_monitor: Monitor, page: Page) -> None:
    job = shared_monitor.farm.submit([{"command": ["sh", "-c", "echo the scene is missing; exit 3"]}],
                                     user="ana")
    shared_monitor.farm.wait_for_job(job["id"])
    page.goto(f"{shared_monitor.url}/jobs/{job['id']}")
    expect(page.locator("#task-state")).to_have_text("failed")
    expect(page.locator("#task-reason")).to_contain_text("3")
    expect(page.locator("#log-tail")).to_contain_text("the scene is missing")


def test_with_the_scheduler_down_the_page_says_so(monitor: Monitor, page: Page) -> None:
    monitor.farm.kill("scheduler")
    page.goto(monitor.url + "/")
    expect(page.locator("#scheduler-down")).to_contain_text("scheduler")
    page.goto(monitor.url + "/jobs")
    expect(page.locator("p.down")).to_contain_text("scheduler")


def test_a_wrangler_disables_and_enables_a_worker_from_the_workers_page(
        shared_monitor: Monitor, page: Page) -> None:
    add_user(shared_monitor, "wendy", Role.WRANGLER, "wendy-password-1")
    worker_id = shared_monitor.farm.rpc.registry.list_workers(alive=True)[0]["worker_id"]
    page.goto(shared_monitor.url + "/login?next=/workers")
    page.fill('input[name="username"]', "wendy")
    page.fill('input[name="password"]', "wendy-password-1")
    page.locator('form.login button[type="submit"]').click()
    expect(page).to_have_url(shared_monitor.url + "/workers")
    row = page.locator(f'tr[data-worker="{worker_id}"]')
    try:
        row.locator('button[data-action="disable"]').click()
        expect(page.locator(".flash.ok")).to_contain_text(f"worker {worker_id}: disable")
        expect(page.locator(f'tr[data-worker="{worker_id}"] .wanted-disable')).to_have_text(
            "disable")
        expect(page.locator(f'tr[data-worker="{worker_id}"]')).to_have_class("state-disabled",
                                                                             timeout=10_000)
    finally:
        page.locator(f'tr[data-worker="{worker_id}"] button[data-action="enable"]').click()
    expect(page.locator(f'tr[data-worker="{worker_id}"] .wanted-active')).to_have_text("active")
    entry = shared_monitor.farm.rpc.registry.list_audit(actor="wendy")[0]
    assert entry["action"] == "set_worker_wanted_state" and worker_id in entry["target"]
