"""ingest: fetch ledger, candle gaps, trade events (outcome joins), account fills

Revision ID: 0002_ingest
Revises: 0001
Create Date: 2026-11-22 02:44:05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import shared.db.types

revision: str = "0002_ingest"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_NOW = sa.text("CURRENT_TIMESTAMP")


def upgrade() -> None:
    op.create_table(
        "ingest_fetch_ledger",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("market", sa.String(length=32), nullable=False),
        sa.Column("timeframe", sa.String(length=8), nullable=False),
        sa.Column("start_time", shared.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("end_time", shared.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", shared.db.types.UTCDateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ingest_fetch_ledger")),
        sa.UniqueConstraint("market", "timeframe", "start_time", name="uq_ingest_fetch_ledger_key"),
    )
    with op.batch_alter_table("ingest_fetch_ledger", schema=None) as batch_op:
        batch_op.create_index("ix_ingest_fetch_ledger_series_end", ["market", "timeframe", "end_time"], unique=False)

    op.create_table(
        "candle_gaps",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("market", sa.String(length=32), nullable=False),
        sa.Column("timeframe", sa.String(length=8), nullable=False),
        sa.Column("start_time", shared.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("end_time", shared.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("missing", sa.Integer(), nullable=False),
        sa.Column("recorded_at", shared.db.types.UTCDateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_candle_gaps")),
        sa.UniqueConstraint("market", "timeframe", "start_time", name="uq_candle_gaps_key"),
    )

    op.create_table(
        "trade_events",
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("prediction_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column(
            "payload", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("received_at", shared.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", shared.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_trade_events")),
    )
    with op.batch_alter_table("trade_events", schema=None) as batch_op:
        batch_op.create_index("ix_trade_events_prediction", ["prediction_id", "kind"], unique=False)
        batch_op.create_index("ix_trade_events_state", ["state", "received_at"], unique=False)

    op.create_table(
        "account_fills",
        sa.Column("fill_id", sa.String(length=64), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("market", sa.String(length=32), nullable=False),
        sa.Column("side", sa.String(length=8), nullable=False),
        sa.Column("amount", sa.Float(), nullable=False),
        sa.Column("price", sa.Float(), nullable=False),
        sa.Column("fee", sa.Float(), nullable=False),
        sa.Column("fee_currency", sa.String(length=16), nullable=False),
        sa.Column("taker", sa.Boolean(), nullable=False),
        sa.Column("executed_at", shared.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("imported_at", shared.db.types.UTCDateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.PrimaryKeyConstraint("fill_id", name=op.f("pk_account_fills")),
    )
    with op.batch_alter_table("account_fills", schema=None) as batch_op:
        batch_op.create_index("ix_account_fills_market_time", ["market", "executed_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("account_fills", schema=None) as batch_op:
        batch_op.drop_index("ix_account_fills_market_time")
    op.drop_table("account_fills")
    with op.batch_alter_table("trade_events", schema=None) as batch_op:
        batch_op.drop_index("ix_trade_events_state")
        batch_op.drop_index("ix_trade_events_prediction")
    op.drop_table("trade_events")
    op.drop_table("candle_gaps")
    with op.batch_alter_table("ingest_fetch_ledger", schema=None) as batch_op:
        batch_op.drop_index("ix_ingest_fetch_ledger_series_end")
    op.drop_table("ingest_fetch_ledger")
