"""HTTP routes of the ingest service: report trades (like the streams do) and inspect the ledger."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Response
from pydantic import SecretStr

from services.ingest import ledger
from services.ingest.outcomes import OutcomeDeps, OutcomeResult, OutcomeStatus, TradeEventRejected, record_trade_event
from services.ingest.repository import recorded_gaps
from shared.messages import TradeClosed, TradeExecuted


def _view(result: OutcomeResult, response: Response) -> dict[str, Any]:
    if result.status in (OutcomeStatus.PENDING, OutcomeStatus.OPEN):
        response.status_code = 202
    body: dict[str, Any] = {"status": result.status.value, "prediction_id": result.prediction_id}
    if result.outcome is not None:
        body |= {
            "realized_pnl": result.outcome.realized_pnl,
            "target_label": result.outcome.target_label,
            "target_class": result.outcome.target_class,
        }
    return body


def build_api(deps: OutcomeDeps, markets: list[str], timeframes: list[str], token: SecretStr | None) -> APIRouter:
    """Return the routes; with ``token`` set they require ``X-Api-Token``."""

    async def require_token(x_api_token: Annotated[str | None, Header()] = None) -> None:
        if token is None:
            return
        if x_api_token is None or not hmac.compare_digest(x_api_token.encode(), token.get_secret_value().encode()):
            raise HTTPException(401, "X-Api-Token header missing or wrong")

    api = APIRouter(tags=["ingest"], dependencies=[Depends(require_token)])

    async def record(event: TradeExecuted | TradeClosed, response: Response) -> dict[str, Any]:
        try:
            result = await record_trade_event(event, deps)
        except TradeEventRejected as error:
            raise HTTPException(409, str(error)) from error
        return _view(result, response)

    @api.post("/trades/executed")
    async def trade_executed(event: TradeExecuted, response: Response) -> dict[str, Any]:
        """Report a TradeExecuted (200 recorded/duplicate, 202 open/pending, 409 refused, 422 invalid)."""
        return await record(event, response)

    @api.post("/trades/closed")
    async def trade_closed(event: TradeClosed, response: Response) -> dict[str, Any]:
        """Report a TradeClosed (200 recorded/duplicate, 202 pending, 409 refused, 422 invalid)."""
        return await record(event, response)

    @api.get("/ingest/series")
    async def series() -> dict[str, Any]:
        """Fetched ranges (the ledger) and recorded gaps of every configured (market, interval)."""
        out = []
        for market in markets:
            for timeframe in timeframes:
                spans = await ledger.covered(deps.sessions, market, timeframe)
                gaps = await recorded_gaps(deps.sessions, market, timeframe)
                out.append({
                    "market": market,
                    "timeframe": timeframe,
                    "complete": [[span.start, span.end] for span in spans],
                    "gaps": len(gaps),
                    "missing_intervals": sum(gap.missing for gap in gaps),
                })
        return {"status": "ok", "series": out}

    return api
