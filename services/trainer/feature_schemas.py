"""Feature schemas of stored samples: the serving schema (shared.ml.features) and registered ones.

A schema is a JSON object with at least ``names`` (ordered feature names); its hash is the sha256
of its canonical JSON (sorted keys), the same rule as :func:`shared.ml.features.feature_schema_hash`.
Producers of ``training_samples`` rows write that hash into ``feature_schema_hash`` and register the
schema once with :func:`register_feature_schema`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models_trainer import FeatureSchema
from shared.db.session import dialect_insert
from shared.ml.features import feature_schema, feature_schema_hash


def schema_hash(schema: dict[str, Any]) -> str:
    """sha256 of the schema's canonical JSON."""
    return hashlib.sha256(json.dumps(schema, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class SchemaRef:
    """A schema and its hash."""

    hash: str
    schema: dict[str, Any]

    @property
    def names(self) -> list[str]:
        return [str(name) for name in self.schema["names"]]

    @property
    def feature_count(self) -> int:
        return len(self.schema["names"])

    @property
    def is_serving(self) -> bool:
        return self.hash == feature_schema_hash()


def serving_schema() -> SchemaRef:
    """The schema inference computes today (shared.ml.features)."""
    return SchemaRef(hash=feature_schema_hash(), schema=feature_schema())


def make_schema(names: list[str], version: int = 1, dtype: str = "float32") -> SchemaRef:
    """A schema for ``names`` (e.g. a producer's 100 features)."""
    if len(set(names)) != len(names) or not names:
        raise ValueError("feature names must be unique and non-empty")
    schema: dict[str, Any] = {"version": version, "names": list(names), "dtype": dtype}
    return SchemaRef(hash=schema_hash(schema), schema=schema)


async def register_feature_schema(sessions: async_sessionmaker[AsyncSession], ref: SchemaRef) -> str:
    """Record ``ref`` (idempotent); return its hash."""
    if schema_hash(ref.schema) != ref.hash:
        raise ValueError("schema hash does not match the schema")
    async with sessions() as session, session.begin():
        await session.execute(
            dialect_insert(session, FeatureSchema)
            .values(schema_hash=ref.hash, feature_count=ref.feature_count, schema=ref.schema)
            .on_conflict_do_nothing(index_elements=["schema_hash"])
        )
    return ref.hash


async def find_schema(sessions: async_sessionmaker[AsyncSession], wanted: str) -> SchemaRef | None:
    """The schema with hash ``wanted`` (the serving schema needs no registration); None if unknown or
    if the stored schema does not hash to ``wanted``."""
    if wanted == feature_schema_hash():
        return serving_schema()
    async with sessions() as session:
        row = (await session.execute(select(FeatureSchema).where(FeatureSchema.schema_hash == wanted))).scalar_one_or_none()
    if row is None or schema_hash(row.schema) != wanted or not row.schema.get("names"):
        return None
    return SchemaRef(hash=wanted, schema=dict(row.schema))
