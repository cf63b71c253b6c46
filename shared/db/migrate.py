"""Run Alembic migrations programmatically (start-up, tests, ``tradeloop migrate``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config() -> Config:
    """Return an Alembic config pointing at tradeloop's migrations."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


async def upgrade(engine: AsyncEngine, revision: str = "heads") -> None:
    """Upgrade the database behind ``engine`` to ``revision`` (idempotent, serialised on PostgreSQL)."""
    config = alembic_config()

    def _upgrade(connection: Connection) -> None:
        if connection.dialect.name == "postgresql":
            # Several services may start at once: one migrates, the others wait then find nothing to do.
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7244061)")
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    async with engine.begin() as connection:
        await connection.run_sync(_upgrade)
