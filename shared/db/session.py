"""Engine and session factory. Nothing connects until a composition root calls these."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult, Result
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from shared.tasks import finish_before_cancel

T = TypeVar("T")


def make_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """Create the async engine; SQLite gets WAL, a busy timeout and foreign keys."""
    if url.startswith("sqlite"):
        db_path = url.split("///", 1)[-1]
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_async_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10, **kwargs)


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Return the session factory (no expiry on commit: no implicit IO afterwards)."""
    return async_sessionmaker(engine, expire_on_commit=False)


async def whole_transaction(
    sessions: async_sessionmaker[AsyncSession], work: Callable[[AsyncSession], Awaitable[T]]
) -> T:
    """Run ``work`` in one transaction that a cancellation of the caller waits for: it commits or rolls back,
    never stays open (with its locks) on a pooled connection; the cancellation is re-raised afterwards."""

    async def transaction() -> T:
        async with sessions() as session, session.begin():
            return await work(session)

    return await finish_before_cancel(transaction())


def dialect_insert(
    engine_or_session: AsyncEngine | AsyncSession, table: Any
) -> postgresql.Insert | sqlite.Insert:
    """Return the dialect's INSERT (with ON CONFLICT support) for ``table``."""
    bind = engine_or_session.bind if isinstance(engine_or_session, AsyncSession) else engine_or_session
    name = bind.dialect.name if bind is not None else "postgresql"
    if name == "sqlite":
        return sqlite.insert(table)
    return postgresql.insert(table)


def rows_affected(result: Result[Any]) -> int:
    """Rows an INSERT/UPDATE touched (0 when the driver cannot tell)."""
    count = result.rowcount if isinstance(result, CursorResult) else 0
    return max(int(count or 0), 0)
