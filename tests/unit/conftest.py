"""Unit-tier fixtures: the embedded SQLite database (what runs when DATABASE_URL is unset)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.migrate import upgrade
from shared.db.session import make_engine, make_sessionmaker


@pytest_asyncio.fixture(loop_scope="session")
async def sqlite(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """A migrated SQLite database file of the test's own."""
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'tradeloop.db'}")
    await upgrade(engine)
    yield make_sessionmaker(engine)
    await engine.dispose()
