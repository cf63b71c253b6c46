"""Tables owned by the registry service (declared on the shared metadata; migration in versions/)."""

from __future__ import annotations

from shared.db.models import Base

__all__ = ["Base"]
