"""The machine's floor under candle → prediction: a process that reads a stream in a consumer group as
inference does (its own connection, XREADGROUP ... BLOCK, batches of up to 100), stamps each entry on
reading, writes the stamps back with one XADD per batch and acks the batch. No decoding, no model.

    .venv/bin/python bench/relay.py REDIS_URL SOURCE_STREAM SINK_STREAM

``bench/hot_swap.py`` runs it in the same run as the service it measures: its latency (publisher's stamp
→ relay's stamp) is what this machine's scheduler, loopback and Redis cost a consumer that does nothing,
the baseline the service's candle → prediction figures stand next to. The group must exist before it
starts; it prints ``ready`` once its connection answers and runs until killed.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from services.inference.candle_reader import stream_entries
from shared.broker import make_redis
from shared.direct_redis import DirectConnection

GROUP = "relay"
STAMP_FIELD = b"t"
STAMPS_FIELD = "stamps"


async def relay(url: str, source: str, sink: str) -> None:
    redis = make_redis(url)
    connection = DirectConnection(redis)
    await connection.execute("PING")
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        reply = await connection.execute("XREADGROUP", "GROUP", GROUP, "relay-1", "COUNT", 100, "BLOCK", 1000,
                                         "STREAMS", source, ">", timeout=5.0)
        entries = stream_entries(reply)
        if not entries:
            continue
        read = time.time()
        stamps = [[float(fields[STAMP_FIELD]), read] for _entry, fields in entries]
        await connection.execute("XADD", sink, "*", STAMPS_FIELD, json.dumps(stamps))
        await connection.execute("XACK", source, GROUP, *[entry for entry, _fields in entries])


def main() -> None:
    url, source, sink = sys.argv[1:4]
    asyncio.run(relay(url, source, sink))


if __name__ == "__main__":
    main()
