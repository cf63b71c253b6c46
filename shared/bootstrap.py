"""The infrastructure every composition root builds: Redis, broker, database, artifact store, metrics.

Building it does no I/O; :meth:`Infrastructure.prepare` (an ``on_startup`` hook) migrates the
database and creates the consumer groups before any subscriber starts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from fastapi import APIRouter
from faststream import AsyncAPI, FastStream
from faststream.redis import RedisBroker
from faststream.redis.prometheus import RedisPrometheusMiddleware
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared.artifacts import ArtifactStore
from shared.broker import Redis, ensure_work_groups, make_broker, make_redis
from shared.db.migrate import upgrade
from shared.db.session import make_engine, make_sessionmaker
from shared.observability import observe
from shared.publishing import EventPublisher
from shared.runtime import ServiceRuntime
from shared.settings import ServiceSettings
from shared.streams import Group


@dataclass
class Infrastructure:
    """Connections and stores of one service process."""

    settings: ServiceSettings
    redis: Redis
    broker: RedisBroker
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    store: ArtifactStore
    registry: CollectorRegistry
    publisher: EventPublisher
    groups: tuple[Group, ...]

    @classmethod
    def build(cls, settings: ServiceSettings, groups: Iterable[Group] = ()) -> Infrastructure:
        """Create clients (no connection yet)."""
        registry = CollectorRegistry()
        redis = make_redis(settings.redis_url)
        broker = make_broker(
            settings,
            redis,
            middlewares=[RedisPrometheusMiddleware(registry=registry, app_name=settings.service_name)],
        )
        engine = make_engine(settings.effective_database_url)
        return cls(
            settings=settings,
            redis=redis,
            broker=broker,
            engine=engine,
            sessions=make_sessionmaker(engine),
            store=ArtifactStore(settings.effective_artifact_dir),
            registry=registry,
            publisher=EventPublisher(redis, registry),
            groups=tuple(groups),
        )

    async def prepare(self) -> None:
        """Migrate the database and create this service's consumer groups at id 0."""
        await upgrade(self.engine)
        await ensure_work_groups(self.redis, self.groups)

    async def check_database(self) -> None:
        """Readiness: the database answers."""
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    def application(self, title: str) -> FastStream:
        """The service's FastStream app: migrations and groups before start, stream health and metrics after."""
        app = FastStream(self.broker, specification=AsyncAPI(title=f"tradeloop {title}", version="0.1.0"))
        app.on_startup(self.prepare)
        observe(app, self)
        return app

    def runtime(
        self,
        name: str,
        app: FastStream,
        *,
        routers: Sequence[APIRouter] = (),
        on_stop: Sequence[Callable[[], Awaitable[None]]] = (),
    ) -> ServiceRuntime:
        """What :func:`shared.runtime.serve` runs: the app plus health, metrics and the service's routes."""
        return ServiceRuntime(
            name=name, app=app, broker=self.broker, registry=self.registry, host=self.settings.http_host,
            port=self.settings.http_port, routers=routers, readiness=[self.check_database],
            on_stop=[*on_stop, self.close],
        )

    async def close(self) -> None:
        """Close connections."""
        await self.engine.dispose()
        await self.redis.aclose()
