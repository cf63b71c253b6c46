"""Import every table module so ``Base.metadata`` is complete (migrations, tests, tools)."""

from __future__ import annotations

from shared.db import models, models_ingest, models_registry, models_trainer
from shared.db.models import Base

metadata = Base.metadata
__all__ = ["metadata", "models", "models_ingest", "models_registry", "models_trainer"]
