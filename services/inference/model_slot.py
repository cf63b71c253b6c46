"""A slot's served models: the champion and its shadow challengers.

Models load off the loop (in the loader child, :mod:`services.inference.loader`, or a worker thread), are
verified (sha256, feature schema; an XGBoost version's compiled forest against its booster, used when it
agrees: the same numbers, cheaper) and warmed up, then one reference is replaced, so the first
prediction of a new version already takes the fast path. Stale or replayed activations (epoch not newer than the served one) and challenger sets
(revision not newer) change nothing; a failed load keeps what was served.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from services.inference.loader import LoaderProcess
from shared.artifacts import ArtifactStore
from shared.errors import ArtifactError
from shared.messages import ArtifactRef, ChallengerRef, Slot, utc_now
from shared.ml.features import FEATURE_NAMES
from shared.ml.predictor import Predictor, load_predictor
from shared.ml.xgboost_model import same_bits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """An immutable (version, epoch, predictor) triple; replaced as a whole on swap.

    ``activated_at`` is when the version became champion (challengers: when the set changed).
    """

    version_id: str
    epoch: int
    predictor: Predictor
    activated_at: datetime | None = None


@dataclass(frozen=True)
class SwapResult:
    """Outcome of :meth:`ModelSlot.swap`."""

    swapped: bool
    load_seconds: float
    reason: str = ""


@dataclass(frozen=True)
class ChallengerChange:
    """Outcome of :meth:`ModelSlot.set_challengers`."""

    applied: bool
    loaded: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    failed: tuple[tuple[str, Exception], ...] = ()
    load_seconds: float = 0.0
    reason: str = ""


CHECK_CHUNK_ROWS = 16
"""Check rows a compiled forest predicts per step of its check (~0.1 ms of the event loop's time)."""


async def load_and_warm(store: ArtifactStore, ref: ArtifactRef, schema_hash: str,
                        loader: LoaderProcess | None = None) -> Predictor:
    """Load a version (sha256 + schema verified), check its faster evaluation if it has one, warm it up.

    With a ``loader``, the loader child does the loading and the check (a forest-only predictor comes
    back); otherwise, and for what the child leaves to this process, the load runs in a worker thread
    (file reads, hashing and XGBoost's parser release the GIL) and the check in steps (:func:`check_forest`).
    """
    predictor = await loader.prepare(ref, schema_hash) if loader is not None else None
    if predictor is not None and predictor.feature_schema_hash != schema_hash:
        raise ArtifactError(f"feature schema mismatch: artifact {predictor.feature_schema_hash}, "
                            f"expected {schema_hash}")
    if predictor is None:
        predictor = await asyncio.to_thread(load_predictor, store, ref, expected_schema_hash=schema_hash,
                                            serving=True)
        await check_forest(predictor)
    predictor.predict(np.zeros((1, len(FEATURE_NAMES)), dtype=np.float32))
    return predictor


async def check_forest(predictor: Predictor) -> None:
    """Check an XGBoost version's compiled forest against its booster before it serves, in steps.

    The forest's side of the check is numpy on a few hundred rows: in a worker thread it holds the GIL
    for most of its time, and every candle arriving meanwhile waits for the GIL (a swap then took ~30 ms
    and stretched the candle path for as long). Here it runs on the event loop, CHECK_CHUNK_ROWS rows per
    step, and a candle that arrived meanwhile goes between two steps; XGBoost's side (which releases the
    GIL) runs in a worker thread. A forest that disagrees is dropped: the booster predicts, same numbers.
    """
    pending_of = getattr(predictor, "pending_forest", None)
    pending = pending_of() if callable(pending_of) else None
    if pending is None:
        return
    forest, rows = pending
    expected = await asyncio.to_thread(predictor.booster.inplace_predict, rows)  # type: ignore[attr-defined]
    parts = []
    for start in range(0, rows.shape[0], CHECK_CHUNK_ROWS):
        parts.append(forest.predict(rows[start : start + CHECK_CHUNK_ROWS]))
        await asyncio.sleep(0)  # a short yield: the whole check stays a few ms (a longer one slows more candles)
    predictor.settle_forest(forest, same_bits(np.concatenate(parts), expected))  # type: ignore[attr-defined]


class ModelSlot:
    """The champion and the challengers currently served for one slot."""

    def __init__(self, slot: Slot, store: ArtifactStore, loader: LoaderProcess | None = None) -> None:
        self.slot = slot
        self.store = store
        self.loader = loader
        self.current: ServedModel | None = None
        self.challengers: Mapping[str, ServedModel] = {}  # replaced as a whole, never mutated
        self.revision = 0
        self._lock = asyncio.Lock()
        self._challenger_lock = asyncio.Lock()

    @property
    def epoch(self) -> int:
        return self.current.epoch if self.current else 0

    def shadows(self) -> list[ServedModel]:
        """The challengers to run next to the champion (the champion itself excluded)."""
        champion = self.current.version_id if self.current else None
        return [model for version_id, model in self.challengers.items() if version_id != champion]

    async def swap(
        self, *, version_id: str, epoch: int, ref: ArtifactRef, schema_hash: str, activated_at: datetime | None = None
    ) -> SwapResult:
        """Serve ``version_id`` if ``epoch`` is newer, once :func:`load_and_warm` loaded and checked it."""
        async with self._lock:
            if epoch <= self.epoch:
                return SwapResult(False, 0.0, f"epoch {epoch} is not newer than served {self.epoch}")
            started = time.perf_counter()
            predictor = await load_and_warm(self.store, ref, schema_hash, self.loader)
            loaded = time.perf_counter() - started
            self.current = ServedModel(version_id=version_id, epoch=epoch, predictor=predictor,
                                       activated_at=activated_at or utc_now())  # the swap
            return SwapResult(True, loaded)

    async def set_challengers(self, revision: int, refs: Sequence[ChallengerRef]) -> ChallengerChange:
        """Serve exactly ``refs`` in shadow if ``revision`` is newer: load new ones, keep loaded ones, drop the rest.

        A challenger that fails to load is left out (and reported); the others are served.
        """
        async with self._challenger_lock:
            if revision <= self.revision:
                return ChallengerChange(False, reason=f"revision {revision} is not newer than {self.revision}")
            started = time.perf_counter()
            wanted = {ref.version_id: ref for ref in refs}
            previous = self.challengers
            missing = [ref for version_id, ref in wanted.items() if version_id not in previous]
            results = await asyncio.gather(
                *(load_and_warm(self.store, ref.artifact, ref.feature_schema_hash, self.loader)
                  for ref in missing),
                return_exceptions=True,
            )
            now = utc_now()
            loaded: dict[str, ServedModel] = {}
            failed: list[tuple[str, Exception]] = []
            for ref, result in zip(missing, results, strict=True):
                if isinstance(result, Exception):
                    failed.append((ref.version_id, result))
                elif isinstance(result, BaseException):
                    raise result
                else:
                    loaded[ref.version_id] = ServedModel(ref.version_id, revision, result, activated_at=now)
            served = {**previous, **loaded}
            self.challengers = {version_id: served[version_id] for version_id in wanted if version_id in served}
            self.revision = revision
            return ChallengerChange(
                True, loaded=tuple(loaded), removed=tuple(v for v in previous if v not in wanted),
                failed=tuple(failed), load_seconds=time.perf_counter() - started,
            )
