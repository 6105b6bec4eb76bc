"""Placement and the host ledger together, on random workloads over several hosts.

A discrete simulation of the farm's loop: the scheduler plans releases from the hosts' free
amounts, workers reserve what they were given (handing the task back when the ledger says no),
and running tasks finish at random. At every step no host is overbooked, and every task that
fits some host eventually runs.
"""

from hypothesis import given, settings
from hypothesis import strategies as st

from services.scheduler.dispatch import Candidate, IdleWorker, plan_release
from shared.resources import HostLedger, HostTotals, Resources

HOSTS = st.lists(st.tuples(st.integers(1, 32), st.integers(1, 64)), min_size=1, max_size=4)
TASKS = st.lists(st.tuples(st.integers(1, 40), st.integers(1, 80)), min_size=1, max_size=25)


@settings(max_examples=150, deadline=None)
@given(hosts=HOSTS, tasks=TASKS, workers_per_host=st.integers(1, 3),
       finish_order=st.randoms(use_true_random=False))
def test_no_host_is_overbooked_and_every_task_that_fits_runs(hosts, tasks, workers_per_host,
                                                             finish_order) -> None:
    ledger = HostLedger()
    names = [f"host{i}" for i in range(len(hosts))]
    for name, (cores, gigabytes) in zip(names, hosts, strict=True):
        ledger.set_totals(HostTotals(name, Resources(cores=cores, memory_mb=gigabytes * 1024)))
    workers = [IdleWorker(f"{name}-w{i}", "cpu", frozenset({"normal"}), host=name)
               for name in names for i in range(workers_per_host)]
    fits_somewhere = {index for index, (cores, gigabytes) in enumerate(tasks, start=1)
                      if any(cores <= c and gigabytes <= g for c, g in hosts)}
    waiting = {index: Candidate(index, 1, "u", 50, False,
                                needs=(float(cores), gigabytes * 1024, 0))
               for index, (cores, gigabytes) in enumerate(tasks, start=1)}
    running: dict[int, str] = {}  # task -> worker
    done: set[int] = set()
    for _ in range(400):
        busy = set(running.values())
        idle = [w for w in workers if w.worker_id not in busy]
        free = {}
        for name in names:
            room = ledger.free(name)
            free[name] = (room.cores, room.memory_mb, room.gpus)
        queue = sorted(waiting.values(), key=lambda c: c.task_id)
        for release in plan_release(idle, {("cpu", "normal"): queue}, {}, ["normal"],
                                    host_free=free):
            task = waiting[release.task_id]
            host = next(w.host for w in workers if w.worker_id == release.worker_id)
            granted = ledger.reserve(f"task {task.task_id}", host,
                                     Resources(cores=task.needs[0], memory_mb=task.needs[1]))
            # With an exact view of the hosts, the plan never sends a task where it cannot fit,
            # not even when several idle workers share a host within one pass.
            assert granted is not None, (task, host, free)
            del waiting[task.task_id]
            running[task.task_id] = release.worker_id
        for name in names:
            reserved = sum(r.resources.cores for r in ledger.reservations(name))
            memory = sum(r.resources.memory_mb for r in ledger.reservations(name))
            totals = dict(zip(names, hosts, strict=True))[name]
            assert reserved <= totals[0] and memory <= totals[1] * 1024
        if running:
            finished = finish_order.choice(sorted(running))
            del running[finished]
            ledger.release(f"task {finished}")
            done.add(finished)
        elif not waiting.keys() & fits_somewhere:
            break
    assert fits_somewhere <= done
    assert not (done - fits_somewhere)  # nothing ran on a host too small for it
