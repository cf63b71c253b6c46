"""An application spanning all four services, for ``faststream docs gen`` (docs/asyncapi.json).

It declares every stream once with its message schema (publishers) and includes each service's
subscribers; it is never started, so nothing connects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from faststream import AsyncAPI, FastStream
from faststream.redis import RedisBroker, StreamSub

from services.inference.handlers import InferenceMetrics, InferenceState
from services.inference.settings import InferenceSettings
from services.inference.subscribers import build_router as inference_router
from services.inference.windows import CandleWindows
from services.ingest.metrics import IngestMetrics
from services.ingest.outcomes import OutcomeDeps
from services.ingest.settings import IngestSettings
from services.ingest.subscribers import build_router as ingest_router
from services.registry.handlers import RegistryDeps, RegistryMetrics
from services.registry.settings import RegistrySettings
from services.registry.subscribers import build_router as registry_router
from services.trainer.handlers import TrainerDeps, TrainerMetrics
from services.trainer.settings import TrainerSettings
from services.trainer.subscribers import build_router as trainer_router
from shared.artifacts import ArtifactStore
from shared.broker import make_redis
from shared.db.session import make_engine, make_sessionmaker
from shared.messages import STREAM_MESSAGES
from shared.publishing import EventPublisher

DOCS_TOKEN = "documentation-only-token"  # noqa: S105 - the docs app is never started or served
DOCS_ONLY: dict[str, Any] = {"consumer": "docs", "redis_url": "redis://redis:6379/0",
                             "database_url": "sqlite:///docs.db"}


def build_app() -> FastStream:
    """Build (without connecting) the documentation app."""
    redis = make_redis(DOCS_ONLY["redis_url"])
    broker = RedisBroker(DOCS_ONLY["redis_url"])
    sessions = make_sessionmaker(make_engine("sqlite+aiosqlite:///:memory:"))
    store = ArtifactStore(Path("artifacts"))
    publisher = EventPublisher(redis)
    for stream, message in STREAM_MESSAGES.items():
        broker.publisher(stream=StreamSub(stream.value), schema=message, title=f"{stream.value}:publish",
                         description=(message.__doc__ or "").strip())
    ingest = IngestSettings(**DOCS_ONLY)
    broker.include_router(ingest_router(OutcomeDeps(
        sessions, publisher, IngestMetrics.create(None), neutral_band=ingest.neutral_band,
        wait_seconds=ingest.outcome_wait_seconds), ingest))
    broker.include_router(trainer_router(
        TrainerDeps(TrainerSettings(**DOCS_ONLY), sessions, store, publisher, TrainerMetrics.create(None)), redis))
    broker.include_router(registry_router(RegistryDeps(
        RegistrySettings(**DOCS_ONLY, admin_token=DOCS_TOKEN), sessions, store, publisher,
        RegistryMetrics.create(None))))
    broker.include_router(inference_router(InferenceState(
        InferenceSettings(**DOCS_ONLY), sessions, store, publisher, InferenceMetrics.create(None),
        CandleWindows(sessions))))
    return FastStream(broker, specification=AsyncAPI(
        title="tradeloop", version="0.1.0",
        description="Streams and messages of tradeloop's four services. Every entry is plain JSON in the "
                    "`__data__` field; see docs/messages.md."))
