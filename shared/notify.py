"""Notifications of a job's end: the spec's `notify`, the studio's hooks, and the webhook document.

A job spec may ask for a webhook POST or an e-mail when the job ends done, failed or cancelled,
or when its first task fails for good. The studio's config may add hooks for every job. Both
become targets fixed on the job when it is submitted; the scheduler keeps one delivery per
target and event in its outbox (services.scheduler.notifications).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr, model_validator

Event = Literal["done", "failed", "cancelled", "first_failed_task"]
EVENTS: tuple[str, ...] = ("done", "failed", "cancelled", "first_failed_task")
"""What a notification may be about: the job's end in one of its three states, or its first
task that failed for good (no retry left)."""
DEFAULT_EVENTS: tuple[str, ...] = ("done", "failed", "cancelled")
MAX_TARGETS = 10
"""Most webhooks (and, apart, most e-mail addresses) one job spec may name."""

SIGNATURE_HEADER = "X-Corral-Signature"
"""`sha256=` and the hex HMAC-SHA256 of the body under the configured notification secret."""
DELIVERY_HEADER = "X-Corral-Delivery"
"""The delivery's id: the same on every try of one delivery, so a receiver can drop repeats."""
EVENT_HEADER = "X-Corral-Event"



def _default_events() -> list[Event]:
    return ["done", "failed", "cancelled"]


_EMAIL = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+$")


def check_webhook_url(url: str) -> str:
    """An http(s) URL with a host, or ValueError saying what is wrong with it."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (reading it checks it: a port past 65535 raises)
    except ValueError:
        raise ValueError(f"{url[:80]!r} is not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url[:80]!r} is not an http:// or https:// URL with a host")
    if any(c.isspace() for c in url):
        raise ValueError(f"{url[:80]!r} contains white space")
    return url


def check_email(address: str) -> str:
    if not _EMAIL.fullmatch(address) or len(address) > 254:
        raise ValueError(f"{address[:80]!r} is not an e-mail address")
    return address


WebhookUrl = Annotated[StrictStr, AfterValidator(check_webhook_url)]
EmailAddress = Annotated[StrictStr, AfterValidator(check_email)]


class NotifySpec(BaseModel):
    """A job spec's `notify`: where to tell of its end, and which ends to tell of."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    webhooks: list[WebhookUrl] = Field(default_factory=list, max_length=MAX_TARGETS)
    """URLs to POST the job's notification document to."""
    emails: list[EmailAddress] = Field(default_factory=list, max_length=MAX_TARGETS)
    """Addresses to mail (the farm needs an SMTP server configured)."""
    events: list[Event] = Field(default_factory=lambda: _default_events(), min_length=1)
    """Which of done, failed, cancelled and first_failed_task to tell of."""


class StudioHook(BaseModel):
    """A studio-wide hook from the config (`CORRAL.notifications.hooks`): every job's ends."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    url: str | None = None
    """A webhook to POST to."""
    email: str | None = None
    """Or an address to mail."""
    events: tuple[Event, ...] = ("failed",)
    """Which events of every job go to it."""

    @model_validator(mode="after")
    def _one_target(self) -> StudioHook:
        if (self.url is None) == (self.email is None):
            raise ValueError("give a hook a url or an email, not both")
        if self.url is not None:
            check_webhook_url(self.url)
        if self.email is not None:
            check_email(self.email)
        return self


def job_targets(spec: NotifySpec | None) -> tuple[dict[str, Any], ...]:
    """The targets a job's own `notify` names, as stored on the job."""
    if spec is None:
        return ()
    on = sorted(set(spec.events), key=EVENTS.index)
    return (tuple({"kind": "webhook", "address": url, "events": on, "source": "job"}
                  for url in dict.fromkeys(spec.webhooks))
            + tuple({"kind": "email", "address": address, "events": on, "source": "job"}
                    for address in dict.fromkeys(spec.emails)))


def studio_targets(hooks: Iterable[StudioHook]) -> tuple[dict[str, Any], ...]:
    """The studio's hooks as targets of one more job."""
    return tuple({"kind": "webhook" if hook.url is not None else "email",
                  "address": hook.url if hook.url is not None else hook.email,
                  "events": sorted(set(hook.events), key=EVENTS.index), "source": "studio"}
                 for hook in hooks)


def shown_address(kind: str, address: str) -> str:
    """A target as people may see it: a webhook's path and query often hold its own secret
    (a chat service's incoming-webhook token), so only its scheme and host are shown."""
    if kind != "webhook":
        return address
    try:
        parts = urlsplit(address)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(not a URL)"
    rest = "/…" if parts.path.strip("/") or parts.query else "/"
    return f"{parts.scheme}://{parts.hostname}{port}{rest}"


class JobNotification(BaseModel):
    """The document a webhook receives (and an e-mail tells in words): one event of one job."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    delivery_id: int
    """Also in the X-Corral-Delivery header; the same on every try."""
    event: Event
    job_id: int
    name: str
    user: str
    state: str
    """The job's state when the event happened."""
    counts: dict[str, int]
    """Its tasks by state."""
    task_count: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    wait_seconds: float | None
    """From submit to its first task's start."""
    run_seconds: float | None
    """From its first task's start to its end."""
    total_seconds: float | None
    url: str
    """The job's page on the monitor."""
    task: dict[str, Any] | None = None
    """For first_failed_task: the task's id, name, exit code and reason."""
    text: str
    """A one-line summary; chat services' incoming webhooks (Slack, Mattermost) show it."""

    def encode(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True,
                          separators=(",", ":")).encode()

    @classmethod
    def decode(cls, body: bytes | str) -> JobNotification:
        return cls.model_validate_json(body)


def summary(event: str, job_id: int, name: str, user: str, counts: dict[str, int],
            task: dict[str, Any] | None = None) -> str:
    """The notification's one line, as a person reads it."""
    counted = ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))
    if event == "first_failed_task" and task is not None:
        return (f"Corral job {job_id} {name} ({user}): task {task.get('name')} failed "
                f"({task.get('reason') or 'no reason given'})")
    return f"Corral job {job_id} {name} ({user}) {event}: {counted or 'no tasks'}"


def sign(secret: str, body: bytes) -> str:
    """The signature header's value for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_matches(secret: str, body: bytes, header: str | None) -> bool:
    """What a receiver checks: the header is the body's HMAC under the shared secret."""
    return header is not None and hmac.compare_digest(sign(secret, body), header)


def wanted(targets: Sequence[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    """The targets that asked to hear of `event`."""
    return [target for target in targets if event in target.get("events", ())]
