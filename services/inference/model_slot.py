"""A slot's served model: load off the loop, verify, warm up, then swap one reference.

Stale or replayed activations (epoch not newer than the served one) change nothing; a failed load
keeps the old model.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np

from shared.artifacts import ArtifactStore
from shared.messages import ArtifactRef, Slot
from shared.ml.features import FEATURE_NAMES
from shared.ml.predictor import Predictor, load_predictor


@dataclass(frozen=True)
class ServedModel:
    """An immutable (version, epoch, predictor) triple; replaced as a whole on swap."""

    version_id: str
    epoch: int
    predictor: Predictor


@dataclass(frozen=True)
class SwapResult:
    """Outcome of :meth:`ModelSlot.swap`."""

    swapped: bool
    load_seconds: float
    reason: str = ""


def load_and_warm(store: ArtifactStore, ref: ArtifactRef, schema_hash: str) -> Predictor:
    """Load a version (sha256 + schema verified) and run one warm-up prediction. Blocking."""
    predictor = load_predictor(store, ref, expected_schema_hash=schema_hash)
    predictor.predict(np.zeros((1, len(FEATURE_NAMES)), dtype=np.float32))
    return predictor


class ModelSlot:
    """The champion currently served for one slot."""

    def __init__(self, slot: Slot, store: ArtifactStore) -> None:
        self.slot = slot
        self.store = store
        self.current: ServedModel | None = None
        self._lock = asyncio.Lock()

    @property
    def epoch(self) -> int:
        return self.current.epoch if self.current else 0

    async def swap(self, *, version_id: str, epoch: int, ref: ArtifactRef, schema_hash: str) -> SwapResult:
        """Serve ``version_id`` if ``epoch`` is newer; loading happens in a worker thread."""
        async with self._lock:
            if epoch <= self.epoch:
                return SwapResult(False, 0.0, f"epoch {epoch} is not newer than served {self.epoch}")
            started = time.perf_counter()
            predictor = await asyncio.to_thread(load_and_warm, self.store, ref, schema_hash)
            loaded = time.perf_counter() - started
            self.current = ServedModel(version_id=version_id, epoch=epoch, predictor=predictor)  # the swap
            return SwapResult(True, loaded)
