"""trainer: feature schemas, slot leases, outcome index

Revision ID: 0003_trainer
Revises: 0001
Create Date: 2026-11-23 03:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import shared.db.types

revision: str = "0003_trainer"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "feature_schemas",
        sa.Column("schema_hash", sa.String(length=64), nullable=False),
        sa.Column("feature_count", sa.Integer(), nullable=False),
        sa.Column("schema", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False),
        sa.Column("created_at", shared.db.types.UTCDateTime(timezone=True), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False),
        sa.PrimaryKeyConstraint("schema_hash", name=op.f("pk_feature_schemas")),
    )
    op.create_table(
        "trainer_slot_leases",
        sa.Column("slot_key", sa.String(length=128), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("acquired_at", shared.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", shared.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("slot_key", name=op.f("pk_trainer_slot_leases")),
    )
    op.create_index("ix_training_samples_symbol_exit", "training_samples", ["symbol", "outcome_known", "exit_time"])


def downgrade() -> None:
    op.drop_index("ix_training_samples_symbol_exit", table_name="training_samples")
    op.drop_table("trainer_slot_leases")
    op.drop_table("feature_schemas")
