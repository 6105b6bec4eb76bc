"""A worker that loses its broker connection renews and reports as soon as it is back."""

import signal
from pathlib import Path

from tests.farm import AMQP_HOST, Farm
from tests.integration.test_fencing import ticking_task
from tests.proxy import TcpProxy


def test_worker_back_on_the_broker_renews_and_reports_while_the_registry_is_silent(
        farm: Farm, tmp_path: Path) -> None:
    # After a broker restart the registry may come back last: a worker that waited for it
    # before renewing or reporting let its lease run out, and its task ran a second time.
    with TcpProxy(AMQP_HOST) as proxy:
        farm.start_service("registry")
        farm.start_service("scheduler")
        farm.start_worker(env={"CORRAL_AMQP_URI": farm.amqp_uri.replace(AMQP_HOST,
                                                                        proxy.address())})
        ledger = tmp_path / "ledger"
        job = farm.submit([ticking_task(ledger, 7)])
        task_id = farm.rpc.scheduler.get_job(job["id"])["tasks"][0]["id"]
        farm.wait_for(lambda: ledger.exists() and ledger.read_text(), 30, "the payload to tick")
        registry = farm.processes["registry"]
        registry.send_signal(signal.SIGSTOP)
        try:
            proxy.cut()  # the worker reconnects at once; the registry answers nobody
            task = farm.wait_for(
                lambda: (lambda task: task if task["state"] == "done" or len(task["attempts"]) > 1
                         or task["attempts"][-1]["state"] != "running" else None)(
                    farm.rpc.scheduler.get_task(task_id)),
                40, "the first attempt to end")
        finally:
            registry.send_signal(signal.SIGCONT)
    states = [(attempt["state"], attempt["reason"]) for attempt in task["attempts"]]
    assert states == [("done", None)], states
