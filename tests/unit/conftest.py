"""Unit-tier fixtures: the embedded SQLite database (what runs when DATABASE_URL is unset), and a call that
finishes in the step its caller is cancelled (how redis-py's commands swallow a cancellation on Python 3.11)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
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


class CompletingCall:
    """An awaitable call that awaits ``asyncio.wait_for`` as redis-py sends every command of a client with a
    socket timeout. :meth:`complete` finishes the call in progress; a ``task.cancel()`` made before the event
    loop runs again lands in the same step, which Python 3.11's ``wait_for`` answers by returning the result
    and dropping the cancellation."""

    def __init__(self, result: Any = None) -> None:
        self.result = result
        self.calls = 0
        self.started = asyncio.Event()
        self._future: asyncio.Future[Any] | None = None

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        self._future = asyncio.get_running_loop().create_future()
        self.started.set()
        return await asyncio.wait_for(self._future, 5.0)

    def complete(self) -> None:
        assert self._future is not None and not self._future.done(), "no call in progress"
        self._future.set_result(self.result)
        self.started.clear()


@pytest.fixture
def completing_call() -> CompletingCall:
    return CompletingCall()
