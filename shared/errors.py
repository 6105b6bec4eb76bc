"""The one hierarchy of errors a Corral caller may handle; each crosses nameko RPC as itself.

    CorralError
    ├── InvalidSpec          a job or task spec was refused; the message names the field
    ├── InvalidArgument      an RPC argument was refused; the message names the argument
    ├── NotFound             no job, task or worker with that id
    ├── InvalidState         the operation does not apply in the object's current state
    ├── StaleLease           a report carried a lease token that is no longer current
    ├── LimitExceeded        a farm limit (such as queued tasks per user) would be passed
    ├── ConfigError          the configuration file or a value in it is wrong
    ├── SchemaError          a service's database cannot be brought to the newest schema
    ├── BrokerUnreachable    RabbitMQ could not be reached
    ├── Unauthenticated      the call carried no token, or one forged, expired or revoked
    ├── PermissionDenied     the caller's role or ownership does not allow the call
    ├── DiscoveryRefused     a farm announcement that is not this farm's (unsigned, foreign, replayed)
    ├── ServiceUnavailable   a Corral service is not running, or did not answer in time
    ├── OutsideStorage       a path is not under the farm's storage root (never removed or read)
    └── DatabaseError        a service's database failed the call (the text carries no values)
"""

from __future__ import annotations

from nameko.exceptions import deserialize_to_instance


class CorralError(Exception):
    """Base of every error a Corral caller may handle."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


@deserialize_to_instance
class InvalidSpec(CorralError):
    """A submitted spec was refused; the message starts with the path of the bad field."""


@deserialize_to_instance
class NotFound(CorralError):
    """The job, task or worker named does not exist."""


@deserialize_to_instance
class InvalidState(CorralError):
    """The operation does not apply to the object in its current state."""


@deserialize_to_instance
class StaleLease(CorralError):
    """The lease token is no longer current: the caller must stop working on the task."""


@deserialize_to_instance
class LimitExceeded(CorralError):
    """A farm limit would be passed, such as the number of queued tasks per user."""


@deserialize_to_instance
class ConfigError(CorralError):
    """The configuration is wrong; the message names the key."""


@deserialize_to_instance
class SchemaError(CorralError):
    """A service's database cannot be migrated to the newest schema; the message says why."""


@deserialize_to_instance
class BrokerUnreachable(CorralError):
    """RabbitMQ could not be reached at the configured address."""


@deserialize_to_instance
class Unauthenticated(CorralError):
    """The call carried no token, or one that is forged, expired or revoked."""


@deserialize_to_instance
class PermissionDenied(CorralError):
    """The caller is known, but their role (or not owning the object) does not allow the call."""


class DiscoveryRefused(CorralError):
    """A farm announcement heard on the network is not this farm's, or is malformed."""


class ServiceUnavailable(CorralError):
    """A Corral service has nobody consuming its requests, or did not answer within the timeout."""


@deserialize_to_instance
class DatabaseError(CorralError):
    """A service's database failed the call; the message names the error, never its values."""


@deserialize_to_instance
class InvalidArgument(CorralError):
    """An RPC argument was refused; the message starts with the argument's name."""


@deserialize_to_instance
class OutsideStorage(CorralError):
    """A path names something outside the storage root (absolute, or climbing out with `..`)."""


EXPECTED_EXCEPTIONS = (InvalidSpec, NotFound, InvalidState, StaleLease, LimitExceeded,
                       InvalidArgument, Unauthenticated, PermissionDenied, OutsideStorage)
"""Errors a service raises on purpose: listed in every @rpc's expected_exceptions."""
