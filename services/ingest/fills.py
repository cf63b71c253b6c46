"""Import the user's own fills from the exchange's trades endpoint (only with API keys).

Fills are stored once per fill id in ``account_fills``; each pass asks only for fills at or after
the newest one stored, paging backwards while a page comes back full.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.ingest.exchange.bitvavo import BitvavoClient, BitvavoResponseError
from services.ingest.metrics import IngestMetrics
from services.ingest.repository import datetime_to_ms, ms_to_datetime
from shared.db.models_ingest import AccountFill
from shared.db.session import dialect_insert, rows_affected

log = logging.getLogger(__name__)

PAGE = 1000


def fill_row(raw: dict[str, Any]) -> dict[str, Any]:
    """An ``account_fills`` row from one Bitvavo fill."""
    try:
        return {
            "fill_id": str(raw["id"]),
            "order_id": str(raw.get("orderId", "")),
            "market": str(raw["market"]),
            "side": str(raw["side"]).upper(),
            "amount": float(raw["amount"]),
            "price": float(raw["price"]),
            "fee": float(raw.get("fee") or 0.0),
            "fee_currency": str(raw.get("feeCurrency", "")),
            "taker": bool(raw.get("taker", False)),
            "executed_at": ms_to_datetime(int(raw["timestamp"])),
        }
    except (KeyError, TypeError, ValueError) as error:
        raise BitvavoResponseError(f"malformed fill {raw!r}") from error


async def _newest_ms(sessions: async_sessionmaker[AsyncSession], market: str) -> int | None:
    async with sessions() as session:
        newest = (
            await session.execute(
                select(AccountFill.executed_at)
                .where(AccountFill.market == market)
                .order_by(AccountFill.executed_at.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
    return None if newest is None else datetime_to_ms(newest)


async def import_fills(
    client: BitvavoClient,
    sessions: async_sessionmaker[AsyncSession],
    markets: Sequence[str],
    metrics: IngestMetrics | None = None,
) -> int:
    """Store the account's new fills in ``markets``; return how many were new."""
    new = 0
    for market in markets:
        since = await _newest_ms(sessions, market)
        end: int | None = None
        while True:
            fills = await client.trades(market, limit=PAGE, start_ms=since, end_ms=end)
            rows = [fill_row(raw) for raw in fills]
            if rows:
                async with sessions() as session, session.begin():
                    statement = dialect_insert(session, AccountFill).values(rows).on_conflict_do_nothing(
                        index_elements=["fill_id"]
                    )
                    new += rows_affected(await session.execute(statement))
            if len(fills) < PAGE:
                break
            end = min(datetime_to_ms(row["executed_at"]) for row in rows) - 1
    if metrics is not None and new:
        metrics.fills_imported.inc(new)
    return new
