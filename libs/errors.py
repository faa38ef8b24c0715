"""Domain errors shared by every Lathe service.

Application code raises these; it never imports gRPC. The gRPC kit maps each
class to one status code (``libs.grpckit.errors``), so a caller always gets a
precise code and a message that says what to fix. Messages are written for the
engineer who reads them: what was wrong and what to do instead.
"""

from __future__ import annotations


class LatheError(Exception):
    """Base class of every error a Lathe service reports to its callers."""


class InvalidArgument(LatheError):
    """The request itself is malformed; retrying it unchanged cannot succeed."""


class NotFound(LatheError):
    """A named resource does not exist."""


class AlreadyExists(LatheError):
    """A resource with that identity exists already."""


class FailedPrecondition(LatheError):
    """The system is not in the state the request needs (e.g. a gate not passed)."""


class Conflict(LatheError):
    """A concurrent change won (optimistic concurrency); re-read and retry."""


class DataLoss(LatheError):
    """Stored data failed its integrity check and was not served."""


class Unauthenticated(LatheError):
    """The call carries no valid credentials."""


class PermissionDenied(LatheError):
    """The caller is known but not allowed to do this."""


class Unimplemented(LatheError):
    """The request is valid but asks for something not built yet; the message says what."""


class Unavailable(LatheError):
    """A dependency (database, broker) is not reachable right now; retry later."""


class DeadlineExceeded(LatheError):
    """The caller's deadline passed before the work finished; it may or may not have happened."""
