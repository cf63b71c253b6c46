"""Many rows in one PostgreSQL statement: ``INSERT ... SELECT FROM unnest(arrays) ON CONFLICT DO NOTHING``.

SQLAlchemy's executemany costs the client tens of microseconds per row (parameter processing,
insertmanyvalues batching); a hot path storing a few rows many times a second spends more time
there than PostgreSQL spends inserting. Here a batch is one array per column, sent on the asyncpg
connection under SQLAlchemy's, with asyncpg's prepared-statement cache: one round trip and a few
microseconds per row, whatever the batch size. The statement and the column types are derived from
the table declared in ``shared.db`` (its TypeDecorators' bind processing included), so the layout
is declared once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import TypeDecorator

_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class UnnestInsert:
    """An idempotent array INSERT into ``table`` (rows conflicting on ``conflict`` are skipped)."""

    sql: str
    columns: tuple[str, ...]
    processors: tuple[Any, ...]

    @classmethod
    def of(cls, table: Table, conflict: Sequence[str]) -> UnnestInsert:
        """Build the statement for every column of ``table`` (compiled for PostgreSQL)."""
        names = tuple(column.name for column in table.columns)
        quote = _DIALECT.identifier_preparer.quote
        arrays = ", ".join(
            f"${index}::{column.type.compile(dialect=_DIALECT)}[]" for index, column in enumerate(table.columns, 1)
        )
        # identifiers from the declared table, quoted; every value travels as a bind parameter
        sql = (f"INSERT INTO {quote(table.name)} ({', '.join(map(quote, names))}) "  # noqa: S608
               f"SELECT * FROM unnest({arrays}) ON CONFLICT ({', '.join(map(quote, conflict))}) DO NOTHING")
        processors = tuple(
            column.type.process_bind_param if isinstance(column.type, TypeDecorator) else None
            for column in table.columns
        )
        return cls(sql, names, processors)

    def arrays(self, rows: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
        """One list per column (bind-processed), in column order."""
        out: list[list[Any]] = []
        for name, process in zip(self.columns, self.processors, strict=True):
            values = [row[name] for row in rows]
            out.append(values if process is None else [process(value, _DIALECT) for value in values])
        return out

    async def execute(self, connection: AsyncConnection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert ``rows`` in one statement on ``connection`` (PostgreSQL via asyncpg only).

        The statement runs in the connection's current transaction, or on its own when the connection
        is in autocommit mode (one statement is atomic either way).
        """
        if not rows:
            return
        raw = await connection.get_raw_connection()
        driver: Any = raw.driver_connection
        await driver.execute(self.sql, *self.arrays(rows))
