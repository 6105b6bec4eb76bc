"""Who may call each RPC method: every call's token verified, a rule declared per method, deny by default.

Every service class has `access = Access(AUDIT)` (a nameko dependency provider, given the audit
table of the service's own database) and inherits `Authenticated` (which keeps its list of
revoked tokens current); each `@rpc` method declares its rule with `@allow(...)` right under it:

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.ARTIST, owner=job_owner, audit="job {job_id}")
    def cancel_job(self, job_id: int) -> dict[str, Any]: ...

The rule is applied by the decorator before the method's body runs, so the body stays about the
thing itself: the caller's token (nameko context data, `shared.identity.CONTEXT_KEY`) must verify;
its role must be at least `minimum` (a person's role) or be the worker credential where `minimum`
is `Role.WORKER` (workers and pools, and nobody else); with `owner`, a caller below wrangler must
own the object the arguments name; `prepare` may rewrite the arguments from the identity (the
`user` of a submitted job is the token's); `reply` may trim the answer for the identity (a task's
env values for its owner and wranglers only); with `audit`, a person's successful call is written
to the service's own audit log (who, what, which object, when, from where).

Deny by default: a service with an @rpc method that declares no rule refuses to start, and a
unit test walks every @rpc method of every service. A service's own calls (timers, event handlers,
consumers) carry the service's own token, signed with the farm secret it holds; an RPC handler's
calls carry its caller's token on, so the acting identity travels with every call it leads to.
"""

from __future__ import annotations

import functools
import inspect
import logging
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import eventlet
from nameko import config
from nameko.events import BROADCAST
from nameko.exceptions import IncorrectSignature
from nameko.extensions import DependencyProvider
from nameko.timer import timer
from sqlalchemy import Table

from services.common import replies
from services.common.entrypoints import event_handler, is_rpc
from shared import audit, events
from shared.config import Settings, settings_from_mapping
from shared.credentials import farm_secret
from shared.db import Store
from shared.errors import ConfigError, PermissionDenied
from shared.identity import (
    CONTEXT_KEY,
    ORIGIN_KEY,
    Identity,
    Role,
    TokenRevoked,
    TokenVerifier,
    issue_token,
)

replies.install()  # a reply lost to a broker outage must not end the service

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
OwnerOf = Callable[[Any, Mapping[str, Any]], str]
"""(service, the call's arguments) -> the user who owns the object they name."""
Prepare = Callable[[Any, Identity, dict[str, Any]], dict[str, Any]]
"""(service, identity, arguments) -> the arguments the body gets; may raise PermissionDenied."""
ReplyFilter = Callable[[Any, Identity, Any], Any]
"""(service, identity, reply) -> the reply the caller gets."""

RULE_ATTRIBUTE = "corral_access_rule"

# nameko is untyped: its decorators and base class are declared here once, with their types.
handles_event: Callable[..., Callable[[F], F]] = event_handler
every: Callable[..., Callable[[F], F]] = timer
if TYPE_CHECKING:

    class _Provider:
        container: Any
else:
    _Provider = DependencyProvider


@dataclass(frozen=True)
class Rule:
    """Who may call one RPC method, and what its call does besides running the method."""

    minimum: Role | None  # None: anyone, even without a token (logging in)
    workers: bool = False  # the worker credential too (a read the pool makes)
    owner: OwnerOf | None = None
    prepare: Prepare | None = None
    reply: ReplyFilter | None = None
    audit: str | None = None  # the audited object, formatted from the arguments and `reply`

    def admits(self, identity: Identity) -> bool:
        if self.workers and identity.role is Role.WORKER:
            return True
        return self.minimum is None or identity.role.at_least(self.minimum)

    def describe(self) -> str:
        if self.minimum is None:
            return "anyone"
        if self.minimum is Role.WORKER:
            return "the worker credential"
        also = " (or the worker credential)" if self.workers else ""
        return f"the {self.minimum} role or above{also}"


def allow(minimum: Role | None, *, workers: bool = False, owner: OwnerOf | None = None,
          prepare: Prepare | None = None, reply: ReplyFilter | None = None,
          audit: str | None = None) -> Callable[[F], F]:
    """Declare who may call the @rpc method below (see the module's docstring)."""
    rule = Rule(minimum, workers, owner, prepare, reply, audit)

    def decorate(method: F) -> F:
        signature = inspect.signature(method)

        @functools.wraps(method)
        def checked(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                bound = signature.bind(self, *args, **kwargs)
            except TypeError as exc:
                raise IncorrectSignature(str(exc)) from None
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            arguments.pop(next(iter(signature.parameters)))
            caller: Caller = self.access
            if rule.minimum is None:
                return method(self, **arguments)
            identity = caller.identity
            name = method.__name__
            if not rule.admits(identity):
                raise PermissionDenied(f"{name} needs {rule.describe()}; {identity.user} has "
                                       f"the {identity.role} role")
            if rule.owner is not None and not identity.at_least(Role.WRANGLER):
                owner = rule.owner(self, arguments)
                if owner != identity.user:
                    what = rule.audit.format(**arguments) if rule.audit else "that"
                    raise PermissionDenied(f"{name}: {what} belongs to {owner}; {identity.user} "
                                           "may act only on their own (a wrangler may act on any)")
            if rule.prepare is not None:
                arguments = rule.prepare(self, identity, arguments)
            result = method(self, **arguments)
            if rule.audit is not None:
                caller.record(self.core.store, name, rule.audit.format(**arguments, reply=result),
                              arguments)
            if rule.reply is not None:
                result = rule.reply(self, identity, result)
            return result

        setattr(checked, RULE_ATTRIBUTE, rule)
        return checked  # type: ignore[return-value]

    return decorate


def rule_of(method: Any) -> Rule | None:
    return getattr(method, RULE_ATTRIBUTE, None)


def rpc_methods(service_cls: type) -> dict[str, Any]:
    """Every @rpc method of a service class, by name."""
    return {name: member for name, member in inspect.getmembers(service_cls, inspect.isfunction)
            if any(is_rpc(entrypoint)
                   for entrypoint in getattr(member, "nameko_entrypoints", ()))}


def unruled_methods(service_cls: type) -> list[str]:
    """The @rpc methods that declare no rule: a service with any refuses to start."""
    return sorted(name for name, method in rpc_methods(service_cls).items()
                  if rule_of(method) is None)


class Caller:
    """One call's view of who is calling, and the means to record what they did."""

    def __init__(self, access: Access, worker_ctx: Any) -> None:
        self._access = access
        self._worker_ctx = worker_ctx
        self._identity: Identity | None = None

    @property
    def identity(self) -> Identity:
        """The verified caller; Unauthenticated when the call's token is missing or bad."""
        if self._identity is None:
            self._identity = self._access.verifier.verify(self._worker_ctx.data.get(CONTEXT_KEY))
        return self._identity

    @property
    def origin(self) -> str:
        """Where the call comes from: what the caller said (ORIGIN_KEY), else its first call id."""
        said = self._worker_ctx.data.get(ORIGIN_KEY)
        if isinstance(said, str) and said:
            return said[:200]
        stack = self._worker_ctx.call_id_stack
        return str(stack[0]).rsplit(".", 1)[0] if stack else "unknown"

    def record(self, store: Store, action: str, target: str, arguments: Mapping[str, Any]) -> None:
        """Write this call to the service's audit log (a no-op for a service without one)."""
        if self._access.audit_table is None:
            return
        identity = self.identity
        audit.record(store, self._access.audit_table, service=self._worker_ctx.service_name,
                     actor=identity.user, role=str(identity.role), token_id=identity.token_id,
                     action=action, target=target, origin=self.origin,
                     detail=audit.audit_detail(dict(arguments)))

    def revoke(self, token_id: str) -> None:
        self._access.verifier.revoke(token_id)

    def revoked_ids(self) -> frozenset[str]:
        return self._access.verifier.revoked

    def set_revoked(self, token_ids: list[str]) -> None:
        self._access.verifier.set_revoked(token_ids)
        self._access.refreshed_at = time.monotonic()

    def refresh_due(self) -> bool:
        return (time.monotonic() - self._access.refreshed_at
                >= self._access.settings.revocation_refresh_seconds)


class Access(_Provider):
    """Verifies each call's token for the service and gives the service its own token."""

    def __init__(self, audit_table: Table | None = None) -> None:
        self.audit_table = audit_table

    def setup(self) -> None:
        missing = unruled_methods(self.container.service_cls)
        if missing:  # deny by default: a method nobody declared a rule for is never served
            raise ConfigError(f"{self.container.service_name}: RPC methods without an access "
                              f"rule (declare one with @allow): {', '.join(missing)}")
        self.configure(settings_from_mapping(config), self.container.service_name)

    def configure(self, settings: Settings, service_name: str) -> None:
        """Read the farm secret and make the service's own token (setup, or a unit test)."""
        self.settings: Settings = settings
        secret = farm_secret(settings)
        self.verifier = TokenVerifier(secret)
        # What the service presents when it calls on its own behalf (timers, events): it holds
        # the secret anyway, so its own token is an administrator's, named after it.
        self.service_token = issue_token(secret, f"service:{service_name}", Role.ADMIN,
                                         token_id=f"service-{service_name}-{socket.gethostname()}")
        self.refreshed_at = float("-inf")

    def get_dependency(self, worker_ctx: Any) -> Caller:
        if not is_rpc(worker_ctx.entrypoint):
            # Not a caller's request: what this worker asks of other services, it asks itself.
            worker_ctx.data[CONTEXT_KEY] = self.service_token
        return Caller(self, worker_ctx)


class Authenticated:
    """What every service does to keep its revoked token ids current (inherit it; see the module).

    Each revocation arrives at once by the registry's `token_revoked` event (broadcast: every
    instance hears it), and the whole list is read again every `revocation_refresh_seconds`, so
    an instance that started after a revocation, or missed the event, knows it too.
    """

    name: ClassVar[str]
    access: Caller
    core: Any  # the service's state: .settings and .store
    registry: Any  # the registry's RPC proxy (the registry itself overrides _revoked_token_ids)

    def _revoked_token_ids(self) -> list[str]:
        """The registry's list of revoked token ids (the registry reads its own store)."""
        with eventlet.Timeout(self.core.settings.rpc_timeout_seconds):
            return list(self.registry.revoked_tokens())

    @handles_event("registry", events.TOKEN_REVOKED, handler_type=BROADCAST,
                   reliable_delivery=False)
    def handle_token_revoked(self, payload: dict[str, Any]) -> None:
        self.access.revoke(str(TokenRevoked.model_validate(payload).token_id))

    # Not eager: an RPC made before the reply listener's queue exists kills the container.
    @every(interval=1)
    def refresh_revoked_tokens(self) -> None:
        if not self.access.refresh_due():
            return
        try:
            self.access.set_revoked(self._revoked_token_ids())
        except (Exception, eventlet.Timeout) as exc:
            # Registry down: keep the ids we know; its events and the next refresh catch us up.
            log.warning("could not refresh the revoked tokens from the registry: %s", exc)
