"""The candle hot path: one XREADGROUP loop that hands batches of CandleClosed to the predictor.

FastStream's batch subscriber costs ~13 % of the service's CPU per batch at 500 candles/s (its
middleware, context and dependency layers, mostly for batches of one or two entries); at that load
every busy percent of the event loop shows up in the tail of candle → prediction latency. This loop
keeps what the subscriber gave and drops the layers:

- reading: ``XREADGROUP GROUP inference <consumer> COUNT candle_batch_size BLOCK block_ms`` on its own
  :class:`~shared.direct_redis.DirectConnection`, which then carries the batch's champion publication
  (two commands per candle without the client's per-command layers; a blocking read never waits behind
  another task's command);
- validation per entry from the raw JSON (``model_validate_json``); an entry that is not a valid
  CandleClosed is dead-lettered at once with the reason (and acked with its batch);
- ack after commit: the batch goes to the prediction writer, which XACKs its entries once the rows are
  stored. A batch that fails stays pending and FastStream's per-message reclaimer (XAUTOCLAIM, the
  dead-letter middleware counting deliveries) retries its entries one by one.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.inference.handlers import handle_candle_batch
from services.inference.state import InferenceState
from shared.broker import Redis, dead_letter
from shared.direct_redis import DirectConnection
from shared.messages import CandleClosed
from shared.tasks import cancel_and_wait, pause, raise_if_cancelling

log = logging.getLogger(__name__)

DATA_FIELD = b"__data__"
RETRY_SECONDS = 0.5
READ_MARGIN_SECONDS = 5.0
"""A blocking read whose reply is this much later than its BLOCK time counts as a lost connection."""

Entry = tuple[bytes, dict[bytes, bytes]]


def stream_entries(reply: Any) -> list[Entry]:
    """The entries of a raw one-stream XREADGROUP reply (RESP2 list or RESP3 map; None: nothing new).

    An entry whose fields are gone (deleted since delivery) has no fields: it is dead-lettered.
    """
    if not reply:
        return []
    streams = list(reply.values()) if isinstance(reply, dict) else [item[1] for item in reply]
    entries: list[Entry] = []
    for raw_entries in streams:
        for entry_id, raw_fields in raw_entries:
            flat = list(raw_fields or ())
            entries.append((entry_id, dict(zip(flat[::2], flat[1::2], strict=True))))
    return entries


@dataclass
class CandleReader:
    """Reads the candle stream for one consumer of the inference group until stopped."""

    redis: Redis
    state: InferenceState
    stream: str
    group: str
    consumer: str
    batch: int
    block_ms: int = 1000
    _task: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    _connection: DirectConnection | None = field(default=None, init=False, repr=False)

    @property
    def connection(self) -> DirectConnection:
        """The reader's own connection (reads and the champions' publications)."""
        if self._connection is None:
            self._connection = DirectConnection(self.redis)
        return self._connection

    async def start(self) -> None:
        """Start reading (after the consumer group exists)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name="candle-reader")

    async def stop(self) -> None:
        """Stop reading; a batch being predicted is cancelled and stays pending (read again by the reclaimer)."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
        if self._connection is not None:
            await self._connection.close()

    async def run(self) -> None:
        """Read and hand over batches forever; a failure is logged and reading resumes after a pause."""
        failing = False
        while True:
            raise_if_cancelling()
            try:
                await self.read_once()
            except asyncio.CancelledError:
                raise
            except (RedisConnectionError, RedisTimeoutError, OSError) as error:
                if not failing:
                    log.warning("reading %s failed (retrying every %.1f s): %r", self.stream, RETRY_SECONDS, error)
                failing = True
                await pause(RETRY_SECONDS)
                continue
            except Exception:
                log.exception("a candle batch failed; its entries stay pending for the reclaimer")
                await pause(RETRY_SECONDS)
                continue
            if failing:
                log.info("reading %s works again", self.stream)
                failing = False

    async def read_once(self) -> int:
        """Read one batch (blocking up to ``block_ms``) and hand it over; return how many entries it had."""
        reply: Any = await self.connection.execute(
            "XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", self.batch, "BLOCK", self.block_ms,
            "STREAMS", self.stream, ">", timeout=self.block_ms / 1000 + READ_MARGIN_SECONDS)
        entries = stream_entries(reply)
        if not entries:
            return 0
        candles = await self.valid_candles(entries)
        ids = [entry for entry, _ in entries]
        # the writer acks after its commit; ``ack`` serves only a state without a writer
        await handle_candle_batch(candles, self.state, entry_ids=ids,
                                  ack=functools.partial(self.redis.xack, self.stream, self.group, *ids),
                                  via=self.connection)
        return len(entries)

    async def valid_candles(self, entries: Sequence[Entry]) -> list[CandleClosed]:
        """Each entry as a CandleClosed; the invalid ones are dead-lettered (and acked with the batch)."""
        candles: list[CandleClosed] = []
        for entry, fields in entries:
            payload = fields.get(DATA_FIELD)
            try:
                if payload is None:
                    raise ValueError(f"entry without a {DATA_FIELD.decode()} field")
                candles.append(CandleClosed.model_validate_json(payload))
            except (ValidationError, ValueError) as error:
                await dead_letter(self.redis, stream=self.stream, entry_id=entry, group=self.group,
                                  payload=payload if payload is not None else repr(fields).encode(), error=error,
                                  deliveries=1)
                log.error("dead-lettered candle entry %r: %s", entry, error)
        return candles
