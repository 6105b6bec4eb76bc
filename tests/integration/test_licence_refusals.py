"""Tasks that say they found no licence go back to their queue uncharged, on real workers."""

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.farm import CONFIG, ROOT, Farm

REFUSAL = {"CORRAL_LICENCE_REFUSAL_EXIT_CODES": "[75]",
           "CORRAL_LICENCE_REFUSAL_PATTERNS": '["(?i)no licen[cs]e available"]',
           "CORRAL_LICENCE_REFUSAL_DELAY_SECONDS": "1",
           "CORRAL_LICENCE_REFUSAL_MAX_DELAY_SECONDS": "4",
           "CORRAL_LICENCE_REFUSAL_LIMIT": "3"}


def until_licensed(marker: Path, refusal: str) -> list[str]:
    """A task that finds no licence (`refusal`: how it says so) until `marker` exists."""
    return ["sh", "-c", f"test -e {shlex.quote(str(marker))} && exit 0; {refusal}"]


def refusals(task: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for a in task["attempts"] if a["state"] == "handed_back"]


def test_a_task_without_a_licence_waits_longer_each_time_uncharged_and_why_says_so(
        farm: Farm, tmp_path: Path) -> None:
    farm.env.update(REFUSAL)
    farm.start(workers=2)
    marker = tmp_path / "licensed"
    job = farm.submit([{"command": until_licensed(marker, "exit 75")},
                       {"command": until_licensed(marker, "echo 'ERROR: No licence available'; "
                                                          "exit 1")}])
    by_code, by_pattern = (t["id"] for t in farm.rpc.scheduler.get_job(job["id"])["tasks"])
    why = farm.wait_for(lambda: (lambda w: w if w["code"] == "licence_refused" else None)(
        farm.rpc.scheduler.why_task(by_code)), 30, "the task to say it found no licence")
    assert "no licence (exit code 75)" in why["reason"] and "runs again in" in why["reason"]
    task = farm.wait_for(lambda: (lambda t: t if len(refusals(t)) >= 3 else None)(
        farm.rpc.scheduler.get_task(by_code)), 60, "three refusals")
    gaps = [later["started_at"] - earlier["finished_at"]
            for earlier, later in zip(task["attempts"], task["attempts"][1:], strict=False)]
    assert gaps[0] >= 1 and gaps[1] >= 2, gaps  # 1 s, then 2 s, then 4 s
    assert task["failures"] == 0
    pattern_task = farm.rpc.scheduler.get_task(by_pattern)
    assert refusals(pattern_task)
    assert "output matched" in refusals(pattern_task)[0]["reason"]
    marker.touch()
    done = farm.wait_for_job(job["id"], timeout=60)
    assert done["counts"] == {"done": 2}
    assert [farm.rpc.scheduler.get_task(t)["failures"] for t in (by_code, by_pattern)] == [0, 0]


def test_a_task_that_always_finds_no_licence_fails_after_the_limit(farm: Farm) -> None:
    farm.env.update(REFUSAL)
    farm.start(workers=1)
    job = farm.submit([{"command": ["sh", "-c", "exit 75"]}])
    done = farm.wait_for_job(job["id"], timeout=60)
    task = farm.rpc.scheduler.get_task(done["tasks"][0]["id"])
    assert task["state"] == "failed"
    assert task["reason"] == "exited with code 75 (no licence 4 times in a row: charged)"
    assert [a["state"] for a in task["attempts"]] == ["handed_back"] * 3 + ["failed"]


def test_corral_why_says_a_task_found_no_licence_and_waits_uncharged(farm: Farm) -> None:
    farm.env.update({**REFUSAL, "CORRAL_LICENCE_REFUSAL_DELAY_SECONDS": "60",
                     "CORRAL_LICENCE_REFUSAL_MAX_DELAY_SECONDS": "60"})
    farm.start(workers=1)
    job = farm.submit([{"command": ["sh", "-c", "exit 75"]}])
    task_id = farm.rpc.scheduler.get_job(job["id"])["tasks"][0]["id"]
    farm.wait_for(lambda: refusals(farm.rpc.scheduler.get_task(task_id)), 30,
                  "the task to find no licence")
    done = subprocess.run([sys.executable, "-m", "services.cli", "why", str(task_id)],
                          env={**farm.env, "CORRAL_CONFIG": str(CONFIG)}, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    said = " ".join(done.stdout.split())  # the console wraps long lines
    assert f"task {task_id} is queued [licence_refused]: no licence (exit code 75): back in " \
           "its queue, not charged (refusal 1 of 3 in a row); runs again in" in said
    assert farm.rpc.scheduler.get_task(task_id)["failures"] == 0
