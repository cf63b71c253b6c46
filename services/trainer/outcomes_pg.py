"""PostgreSQL fast path of :mod:`services.trainer.outcomes`: the window's rows as one binary COPY.

Every row is given a fixed layout (feature bytes padded or blanked to the schema's width, flags for
"right schema" and "right length", NaN for a missing label, epoch seconds for the times), so the
binary COPY stream is parsed by one numpy structured ``frombuffer``: no per-row Python work. About
4x faster than fetching records for 100k rows x 100 features.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np

_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_QUERY = """
  SELECT id,
         COALESCE(feature_schema_hash = $5, false),
         length(features) = $6,
         CASE WHEN feature_schema_hash = $5 AND length(features) = $6 THEN features
              ELSE decode(repeat('00', $6), 'hex') END,
         COALESCE(target_label, 'NaN'::float8),
         EXTRACT(EPOCH FROM COALESCE(entry_time, "timestamp"))::float8,
         EXTRACT(EPOCH FROM exit_time)::float8
  FROM training_samples
  WHERE symbol = $1 AND outcome_known AND (timeframe = $2 OR timeframe IS NULL)
    AND exit_time > $3 AND exit_time <= $4
"""


def row_dtype(width: int) -> np.dtype[Any]:
    """One COPY tuple: field count, then (length, value) per column, all big-endian but the features."""
    return np.dtype([
        ("fields", ">i2"), ("id_len", ">i4"), ("id", ">i8"), ("schema_len", ">i4"), ("schema", "u1"),
        ("width_len", ">i4"), ("width", "u1"), ("features_len", ">i4"), ("features", "u1", (max(width, 1),)),
        ("label_len", ">i4"), ("label", ">f8"), ("entry_len", ">i4"), ("entry", ">f8"), ("exit_len", ">i4"),
        ("exit", ">f8"),
    ])  # fmt: skip


def parse_copy(data: bytes, width: int) -> np.ndarray | None:
    """The tuples of a binary COPY stream in :func:`row_dtype` layout; None if it does not have that layout."""
    if not data.startswith(_SIGNATURE) or len(data) < 19:
        return None
    extension = int.from_bytes(data[15:19], "big")
    body = memoryview(data)[19 + extension : len(data) - 2]  # header, trailer (int16 -1)
    dtype = row_dtype(width)
    if data[-2:] != b"\xff\xff" or len(body) % dtype.itemsize:
        return None
    rows = np.frombuffer(body, dtype=dtype)
    expected = {"fields": 7, "id_len": 8, "schema_len": 1, "width_len": 1, "features_len": width, "label_len": 8,
                "entry_len": 8, "exit_len": 8}
    if any((rows[name] != value).any() for name, value in expected.items()):
        return None
    return rows


async def copy_rows(driver: Any, args: tuple[str, str, datetime, datetime, str], width: int) -> np.ndarray | None:
    """Run ``COPY (query) TO STDOUT`` on an asyncpg connection for ``args`` (market, timeframe, window start,
    window end, schema hash; asyncpg binds them); return the parsed rows (None: fall back to a plain fetch)."""
    if width <= 0:
        return None
    chunks: list[bytes] = []

    async def collect(chunk: bytes) -> None:
        chunks.append(bytes(chunk))

    await driver.copy_from_query(_QUERY, *args, width, output=collect, format="binary")
    return parse_copy(b"".join(chunks), width)
