"""The code passes the checks STYLE.md asks for: ruff everywhere, mypy --strict on the pure parts."""

import subprocess
import sys

from tests.farm import ROOT

STRICT = ["shared", "web", "services/scheduler/stats.py", "services/scheduler/dispatch.py",
          "services/pool/main.py", "services/license/store.py", "deploy/k8s/render.py",
          # the storage root's cleanup: everything but the nameko adapter
          "services/cleanup/policy.py", "services/cleanup/sweep.py", "services/cleanup/logs.py",
          "services/cleanup/store.py", "services/worker/scratch.py",
          "services/scheduler/retention.py", "services/worker/control.py",
          "services/registry/control.py", "services/scheduler/refusals.py",
          "services/worker/held_licence.py",
          # notifications: the outbox and its sender
          "services/scheduler/notifications.py", "services/scheduler/notify_sender.py",
          "services/scheduler/tables.py", "services/scheduler/reports.py",
          # a payload's run, its supervisor and the late reports of its end
          "services/worker/process.py", "services/worker/supervisor.py",
          "services/worker/leftovers.py", "services/worker/outbox.py",
          "services/common/entrypoints.py",
          # which of several scheduler instances acts
          "services/scheduler/leadership.py"]


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_ruff_finds_nothing() -> None:
    done = run("ruff", "check", "services", "shared", "web", "tests", "bench", "deploy/k8s")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_strict_passes_on_shared_and_pure_logic() -> None:
    done = run("mypy", "--strict", *STRICT)
    assert done.returncode == 0, done.stdout + done.stderr
