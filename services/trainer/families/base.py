"""The one interface the retrain handler sees: a model family turns data into a versionable bundle.

``configure`` merges a command's overrides into the configured defaults (or refuses them with
``invalid_parameters``), ``load`` reads the training data (async, database), ``fit`` is the
CPU-bound part (run in a worker thread; ``report`` publishes progress from there) and returns the
bundle files, metadata, metrics, parameters and lineage of one version.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.trainer.settings import TrainerSettings
from shared.messages import Family, RetrainModel, Slot

Report = Callable[[str, dict[str, Any]], None]
"""``report(stage, detail)``: progress from inside ``fit`` (thread-safe)."""


@dataclass
class FitResult:
    """What a family hands back for one version (everything but the artifact ref and version id)."""

    model_type: str
    files: dict[str, bytes]
    metadata: dict[str, Any]
    metrics: dict[str, float | None]
    params: dict[str, Any]
    lineage: dict[str, Any]
    feature_schema_hash: str
    training_samples: int
    validation_samples: int
    durations: dict[str, float] = field(default_factory=dict)


class ModelFamily(Protocol):
    """A trainable family (XGBoost, CNN, ...)."""

    family: Family

    def configure(self, command: RetrainModel, settings: TrainerSettings) -> Any:
        """Effective run configuration; raise RetrainError(INVALID_PARAMETERS) for unusable overrides."""
        ...

    async def load(
        self, config: Any, slot: Slot, sessions: async_sessionmaker[AsyncSession], until: datetime
    ) -> Any:
        """Read the training data (``until``: the command's time, for reproducible windows)."""
        ...

    def fit(self, config: Any, data: Any, report: Report) -> FitResult:
        """Train, evaluate and bundle; raise RetrainError with a machine-readable code."""
        ...
