"""The error taxonomy; each docstring says what the system does next."""

from __future__ import annotations


class ServiceError(Exception):
    """Base of tradeloop's own errors."""


class PermanentError(ServiceError):
    """Retrying cannot help (bad payload, unknown version): the message is dead-lettered at once."""


class TransientError(ServiceError):
    """A hiccup (Redis, database, file system): the message stays pending and is retried by the
    reclaimer until it succeeds or reaches the delivery limit."""


class ArtifactError(PermanentError):
    """An artifact is missing, corrupt or fails its sha256 check: it is never loaded."""


class RejectedCommand(PermanentError):
    """A command is refused with a reason; state is unchanged."""
