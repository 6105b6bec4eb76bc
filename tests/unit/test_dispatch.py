"""Release decisions: bands, priority, fairness and matching, with no I/O."""

from services.scheduler.dispatch import Candidate, IdleWorker, absorb_dispatched, plan_release, should_retry

HIGH_FIRST = ["high", "normal", "low"]


def worker(name: str, *bands: str, pool: str = "cpu") -> IdleWorker:
    return IdleWorker(name, pool, frozenset(bands))


def candidate(task_id: int, user: str = "u", priority: int = 50, head: bool = False) -> Candidate:
    return Candidate(task_id, 1, user, priority, head)


def test_a_worker_kept_for_high_band_never_gets_normal_work() -> None:
    plan = plan_release([worker("urgent", "high")],
                        {("cpu", "normal"): [candidate(1)]}, {}, HIGH_FIRST)
    assert plan == []


def test_higher_band_is_released_first() -> None:
    plan = plan_release([worker("w", "normal", "high")],
                        {("cpu", "normal"): [candidate(1)],
                         ("cpu", "high"): [candidate(2, priority=500)]}, {}, HIGH_FIRST)
    assert [r.task_id for r in plan] == [2]


def test_specialist_workers_are_used_before_generalists() -> None:
    idle = [worker("general", "normal", "high"), worker("special", "high")]
    plan = plan_release(idle, {("cpu", "high"): [candidate(1, priority=500)],
                               ("cpu", "normal"): [candidate(2)]}, {}, HIGH_FIRST)
    assert {(r.task_id, r.worker_id) for r in plan} == {(1, "special"), (2, "general")}


def test_fairness_picks_the_user_with_fewest_running_tasks() -> None:
    queue = [candidate(1, "a"), candidate(2, "a"), candidate(3, "b")]
    plan = plan_release([worker("w", "normal")], {("cpu", "normal"): queue}, {"a": 1},
                        HIGH_FIRST)
    assert [r.task_id for r in plan] == [3]


def test_fairness_counts_tasks_released_in_the_same_pass() -> None:
    queue = [candidate(1, "a"), candidate(2, "a"), candidate(3, "b"), candidate(4, "b")]
    idle = [worker("w1", "normal"), worker("w2", "normal")]
    plan = plan_release(idle, {("cpu", "normal"): queue}, {}, HIGH_FIRST)
    assert sorted(r.task_id for r in plan) == [1, 3]


def test_priority_beats_fairness_within_a_band() -> None:
    queue = [candidate(1, "a", priority=90), candidate(2, "b", priority=20)]
    plan = plan_release([worker("w", "normal")], {("cpu", "normal"): queue}, {"a": 5},
                        HIGH_FIRST)
    assert [r.task_id for r in plan] == [1]


def test_pools_never_mix() -> None:
    plan = plan_release([worker("g", "normal", pool="gpu")],
                        {("cpu", "normal"): [candidate(1)]}, {}, HIGH_FIRST)
    assert plan == []


def test_messages_already_queued_use_up_idle_workers() -> None:
    idle = [worker("w1", "normal"), worker("w2", "normal", "high")]
    left = absorb_dispatched(idle, [("cpu", "normal")])
    assert [w.worker_id for w in left] == ["w2"]


def test_retry_policy() -> None:
    assert should_retry(1, 3, 1, None)
    assert not should_retry(3, 3, 1, None)
    assert should_retry(1, 3, 75, [75])
    assert not should_retry(1, 3, 1, [75])
    assert not should_retry(1, 3, None, [75])


def test_between_users_running_as_many_the_one_served_longest_ago_goes_first() -> None:
    queue = [candidate(2, "a"), candidate(3, "a"), candidate(9, "b")]
    plan = plan_release([worker("w", "normal")], {("cpu", "normal"): queue}, {}, HIGH_FIRST,
                        last_served={"a": 5.0, "b": 1.0})
    assert [r.task_id for r in plan] == [9]


def test_one_pass_alternates_between_users() -> None:
    queue = [candidate(1, "a"), candidate(2, "a"), candidate(3, "a"), candidate(4, "b")]
    idle = [worker("w1", "normal"), worker("w2", "normal"), worker("w3", "normal")]
    plan = plan_release(idle, {("cpu", "normal"): queue}, {}, HIGH_FIRST)
    assert [r.task_id for r in plan] == [1, 4, 2]


def test_task_never_goes_to_a_host_excluded_from_its_job() -> None:
    bad = IdleWorker("bad", "cpu", frozenset({"normal"}), host="render07")
    good = IdleWorker("good", "cpu", frozenset({"normal"}), host="render08")
    queue = [Candidate(1, 1, "u", 50, False, job_id=7), Candidate(2, 1, "u", 50, False, job_id=8)]
    plan = plan_release([bad, good], {("cpu", "normal"): queue}, {}, HIGH_FIRST,
                        excluded_hosts={7: frozenset({"render07"})})
    assert {(r.task_id, r.worker_id) for r in plan} == {(1, "good"), (2, "bad")}
    assert plan_release([bad], {("cpu", "normal"): queue[:1]}, {}, HIGH_FIRST,
                        excluded_hosts={7: frozenset({"render07"})}) == []


def test_task_goes_only_where_its_host_has_room_and_big_tasks_block_nothing() -> None:
    small_host = IdleWorker("small", "cpu", frozenset({"normal"}), host="laptop")
    big_host = IdleWorker("big", "cpu", frozenset({"normal"}), host="render01")
    huge = Candidate(1, 1, "u", 50, False, needs=(64.0, 131072, 0))
    medium = Candidate(2, 1, "u", 50, False, needs=(16.0, 32768, 0))
    tiny = Candidate(3, 1, "u", 50, False, needs=(1.0, 512, 0))
    plan = plan_release([small_host, big_host], {("cpu", "normal"): [huge, medium, tiny]}, {},
                        HIGH_FIRST, host_free={"laptop": (4.0, 8192, 0),
                                               "render01": (32.0, 65536, 0)})
    assert {(r.task_id, r.worker_id) for r in plan} == {(2, "big"), (3, "small")}


def test_two_workers_on_one_host_share_its_room_within_a_pass() -> None:
    workers = [IdleWorker(f"w{i}", "cpu", frozenset({"normal"}), host="render01")
               for i in range(3)]
    queue = [Candidate(i, 1, "u", 50, False, needs=(20.0, 1024, 0)) for i in range(1, 4)]
    plan = plan_release(workers, {("cpu", "normal"): queue}, {}, HIGH_FIRST,
                        host_free={"render01": (32.0, 65536, 0)})
    assert [r.task_id for r in plan] == [1]
