"""Alembic environment: programmatic connection (shared.db.migrate) or DATABASE_URL from the CLI."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import async_engine_from_config

from shared.db.tables import metadata
from shared.settings import ServiceSettings

config = context.config
target_metadata = metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    url = config.get_main_option("sqlalchemy.url") or ServiceSettings().effective_database_url
    engine = async_engine_from_config({"sqlalchemy.url": url}, prefix="sqlalchemy.", poolclass=pool.NullPool)
    async with engine.begin() as connection:
        await connection.run_sync(_configure)
    await engine.dispose()


connection = config.attributes.get("connection")
if connection is None:
    asyncio.run(_run_async())
else:
    _configure(connection)
