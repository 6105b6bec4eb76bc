"""Delivers the scheduler's notification outbox: signed webhook POSTs and e-mails, off its hot path.

The scheduler runs one sender: a managed green thread that every half second claims the due
deliveries (services.scheduler.notifications) and hands each to a small pool of green threads.
A try is bounded by `timeout_seconds` as a whole, so a receiver that never answers holds one
green thread of the pool for that long and nothing else: RPC, finish reports and release passes
go on (the eventlet hub switches at every socket wait). When the pool is full, due deliveries
stay in the outbox until a green thread is free.
"""

from __future__ import annotations

import logging
import smtplib
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any, TypeVar

import eventlet
import httpx
from eventlet.greenpool import GreenPool

from services.common.trouble import Troubles
from services.scheduler import notifications
from shared.config import NotificationSettings
from shared.db import Store
from shared.notify import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    JobNotification,
    shown_address,
    sign,
    summary,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

POLL_SECONDS = 0.5
"""How often the sender looks for due deliveries."""


class DeliveryFailed(Exception):
    """One try of one delivery did not get through; `status` is the receiver's answer if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NotificationSender:
    """Claims due deliveries and sends them in green threads; records every outcome."""

    def __init__(self, settings: NotificationSettings, monitor_url: str, store: Store,
                 troubles: Troubles, transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings
        self.monitor_url = monitor_url.rstrip("/")
        self.store = store
        self.troubles = troubles
        self._pool = GreenPool(settings.concurrency)
        self._client = httpx.Client(transport=transport, follow_redirects=False,
                                    timeout=settings.timeout_seconds,
                                    headers={"User-Agent": "corral-notifications"})
        self._running = False

    @property
    def hold_seconds(self) -> float:
        """How long a claimed delivery is left alone: longer than any one try may take."""
        return self.settings.timeout_seconds * 2 + 5

    def start(self, spawn: Callable[[Callable[[], None]], Any]) -> None:
        self._running = True
        spawn(self._run)

    def stop(self) -> None:
        self._running = False
        self._client.close()

    def _run(self) -> None:
        while self._running:
            self.troubles.run("notifications", self.deliver_due)
            eventlet.sleep(POLL_SECONDS)

    def deliver_due(self) -> int:
        """Start the due deliveries the pool has room for; how many were started."""
        free = self._pool.free()
        if free <= 0:
            return 0
        claimed = notifications.claim_due(self.store, free, self.hold_seconds)
        for delivery in claimed:
            self._pool.spawn_n(self._deliver, delivery)
        return len(claimed)

    def wait(self) -> None:
        """Until every started delivery has been tried (tests and shutdown)."""
        self._pool.waitall()

    def _deliver(self, delivery: dict[str, Any]) -> None:
        where = f"{delivery['kind']} {shown_address(delivery['kind'], delivery['address'])}"
        try:
            with eventlet.Timeout(self.settings.timeout_seconds,
                                  DeliveryFailed(f"no answer within "
                                                 f"{self.settings.timeout_seconds:g}s")):
                status = self.send(delivery)
        except DeliveryFailed as exc:
            error, status = str(exc), exc.status
            state = self._record(lambda: notifications.record_failure(
                self.store, delivery["id"], error, status,
                backoff_seconds=self.settings.backoff_seconds,
                backoff_max_seconds=self.settings.backoff_max_seconds,
                give_up_seconds=self.settings.give_up_seconds))
            log.log(logging.ERROR if state == notifications.DeliveryState.FAILED
                    else logging.WARNING, "notification %s of job %s to %s, try %d: %s (%s)",
                    delivery["event"], delivery["job_id"], where, delivery["tries"], error, state)
            return
        except Exception:
            # A bug, not the receiver: leave the delivery held; it comes due again later.
            log.exception("notification %s of job %s to %s", delivery["event"],
                          delivery["job_id"], where)
            return
        self._record(lambda: notifications.record_delivered(self.store, delivery["id"], status))
        log.info("notification %s of job %s delivered to %s (try %d)", delivery["event"],
                 delivery["job_id"], where, delivery["tries"])

    def _record(self, work: Callable[[], T]) -> T | None:
        """Write an outcome, whatever pause a failing pass is in (troubles.run would skip it):
        one not written leaves the delivery to come due again, sent once more."""
        try:
            result = work()
        except Exception as exc:
            self.troubles.failed("notification outcomes", exc)
            return None
        self.troubles.succeeded("notification outcomes")
        return result

    def document(self, delivery: dict[str, Any]) -> JobNotification:
        """The delivery's document: the facts fixed at the event, its id and the job's link."""
        facts = delivery["facts"]
        return JobNotification.model_validate({
            **facts, "delivery_id": delivery["id"],
            "url": f"{self.monitor_url}/jobs/{facts['job_id']}",
            "text": summary(facts["event"], facts["job_id"], facts["name"], facts["user"],
                            facts["counts"], facts.get("task"))})

    def send(self, delivery: dict[str, Any]) -> int | None:
        """One try; the receiver's status, or DeliveryFailed."""
        if delivery["kind"] == "email":
            return self._mail(delivery)
        return self._post(delivery)

    def _post(self, delivery: dict[str, Any]) -> int:
        document = self.document(delivery)
        body = document.encode()
        headers = {"Content-Type": "application/json", DELIVERY_HEADER: str(delivery["id"]),
                   EVENT_HEADER: document.event}
        if self.settings.secret:
            headers[SIGNATURE_HEADER] = sign(self.settings.secret, body)
        try:
            response = self._client.post(delivery["address"], content=body, headers=headers)
        except httpx.HTTPError as exc:
            # Not str(exc): it may quote the URL, whose path can hold the receiver's secret.
            raise DeliveryFailed(f"{type(exc).__name__}: the receiver could not be reached "
                                 "or did not answer") from None
        if not 200 <= response.status_code < 300:
            raise DeliveryFailed(f"the receiver answered {response.status_code}",
                                 response.status_code)
        return response.status_code

    def _mail(self, delivery: dict[str, Any]) -> int | None:
        settings = self.settings
        if not settings.smtp_host:
            raise DeliveryFailed("no SMTP server is configured (CORRAL.notifications.smtp_host)")
        document = self.document(delivery)
        message = EmailMessage()
        message["From"] = settings.smtp_sender
        message["To"] = delivery["address"]
        message["Subject"] = document.text
        message.set_content(email_text(document))
        try:
            with smtplib.SMTP(settings.smtp_host, settings.smtp_port,
                              timeout=settings.timeout_seconds) as smtp:
                if settings.smtp_starttls:
                    smtp.starttls()
                if settings.smtp_username:
                    smtp.login(settings.smtp_username, settings.smtp_password)
                smtp.send_message(message)
        except smtplib.SMTPResponseException as exc:
            raise DeliveryFailed(f"the SMTP server answered {exc.smtp_code}",
                                 exc.smtp_code) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryFailed(f"{type(exc).__name__}: the SMTP server could not take it: "
                                 f"{exc}") from None
        return 250


def email_text(document: JobNotification) -> str:
    """A notification e-mail's body."""
    lines = [document.text, "", f"Job {document.job_id} {document.name} of {document.user}: "
             f"{document.state}", "Tasks: " + (", ".join(
                 f"{count} {state}" for state, count in sorted(document.counts.items()))
                 or "none")]
    if document.run_seconds is not None:
        lines.append(f"Ran for {document.run_seconds:.0f} s after waiting "
                     f"{document.wait_seconds or 0:.0f} s")
    if document.task is not None:
        lines.append(f"Failed task: {document.task.get('name')} "
                     f"(exit code {document.task.get('exit_code')}): {document.task.get('reason')}")
    lines += ["", document.url]
    return "\n".join(lines) + "\n"
