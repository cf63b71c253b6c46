"""Fixtures for the three tiers: real Redis and PostgreSQL for integration and end-to-end tests.

REDIS_URL / DATABASE_URL name the servers (the Makefile and .ci/run default them to the local
ones). Without them, testcontainers starts containers when a Docker engine exists; otherwise the
test fails under CI=true and is skipped locally. Each session gets its own PostgreSQL database
and a Redis database claimed for it alone, so a developer's running stack is never touched.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from shared.broker import Redis, make_redis
from shared.cli.demo import redis_database
from shared.db.migrate import upgrade
from shared.db.session import make_engine, make_sessionmaker
from shared.db.tables import metadata as all_tables
from shared.settings import normalise_database_url

TEST_REDIS_DBS = range(1, 15)  # 0 is the default for services, 15 the demo's
OWNER_KEY = "test-session-owner"  # outside tradeloop*: the fixtures clear that pattern


def _claim_redis_database(url: str) -> tuple[int, str]:
    """Claim a Redis database no other test session is using (a key set NX with a TTL)."""
    import redis as sync_redis

    token = uuid.uuid4().hex
    for db in TEST_REDIS_DBS:
        client = sync_redis.Redis.from_url(redis_database(url, db))
        try:
            if client.set(OWNER_KEY, token, nx=True, ex=3 * 3600):
                return db, token
        finally:
            client.close()
    pytest.fail("every test Redis database is claimed by another session")


def _release_redis_database(url: str, token: str) -> None:
    import redis as sync_redis

    client = sync_redis.Redis.from_url(url)
    try:
        if client.get(OWNER_KEY) == token.encode():
            client.delete(OWNER_KEY)
    finally:
        client.close()


def _missing(message: str) -> NoReturn:
    """Fail under CI=true (every tier must run there), skip elsewhere."""
    if os.getenv("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(message + " (CI=true: every test must run)")
    pytest.skip(message)


def _unavailable(what: str) -> None:
    _missing(f"{what} is not set and no Docker engine is available")


@pytest.fixture(scope="session")
def debian_tool() -> Callable[[str], str]:
    """Find a program of Debian's ``prometheus`` package (prometheus, promtool), or fail/skip as above."""

    def find(name: str) -> str:
        path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
        if path is None:
            _missing(f"{name} not found; install it with `apt-get install -y prometheus`")
        return path

    return find


def _docker_available() -> bool:
    try:
        import docker

        docker.from_env().ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis URL: a database of REDIS_URL claimed for this session alone (or a container)."""
    if url := os.getenv("REDIS_URL"):
        db, token = _claim_redis_database(url)
        session_url = redis_database(url, db)
        yield session_url
        _release_redis_database(session_url, token)
        return
    if not _docker_available():
        _unavailable("REDIS_URL")
    from testcontainers.community.redis import RedisContainer

    with RedisContainer("redis:7.4-alpine") as container:
        yield f"redis://{container.get_container_host_ip()}:{container.get_exposed_port(6379)}/1"


@pytest.fixture(scope="session")
def server_database_url() -> Iterator[str]:
    """The PostgreSQL server's URL (asyncpg driver)."""
    if url := os.getenv("DATABASE_URL"):
        yield normalise_database_url(url)
        return
    if not _docker_available():
        _unavailable("DATABASE_URL")
    from testcontainers.community.postgres import PostgresContainer

    with PostgresContainer("postgres:16-alpine", driver="asyncpg") as container:
        yield container.get_connection_url()


@pytest.fixture(scope="session")
def database_url(server_database_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for this session, migrated to head, dropped at the end."""
    name = f"tradeloop_test_{uuid.uuid4().hex[:10]}"
    admin_url = make_url(server_database_url)

    async def admin(statement: str) -> None:
        engine = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as connection:
                await connection.execute(text(statement))
        finally:
            await engine.dispose()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    url = admin_url.set(database=name).render_as_string(hide_password=False)

    async def migrate() -> None:
        engine = make_engine(url)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    asyncio.run(migrate())
    yield url
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = make_engine(database_url)
    yield eng
    await eng.dispose()


async def empty_tables(engine: AsyncEngine) -> None:
    """Remove every row of every table of the session's database."""
    async with engine.begin() as connection:
        names = ", ".join(f'"{t.name}"' for t in all_tables.sorted_tables)
        await connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


@pytest_asyncio.fixture(loop_scope="session")
async def sessions(engine: AsyncEngine) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Session factory on empty tables."""
    await empty_tables(engine)
    yield make_sessionmaker(engine)


@pytest_asyncio.fixture(loop_scope="session")
async def clean_database(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Empty tables before (``sessions``) and after: an end-to-end loop must not resume from, nor leave behind,
    what other tests of the session stored (a ledger, champions, versions)."""
    yield sessions
    await empty_tables(engine)


@pytest_asyncio.fixture(loop_scope="session")
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A Redis client on a database cleared of tradeloop's keys."""
    client = make_redis(redis_url)
    async for key in client.scan_iter(match="tradeloop*", count=1000):
        await client.delete(key)
    yield client
    await client.aclose()
