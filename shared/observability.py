"""What every composition root adds for operations, in one call: log correlation and stream health.

``observe(app, infra)`` (in ``build()``, no I/O):

* installs :class:`shared.logs.CorrelationMiddleware` as the broker's outermost middleware, so every
  log line written while a message is handled carries its ``event_id`` (``command_event_id``,
  ``run_id``, ``prediction_id`` when the message has them) and ``stream``;
* registers the stream health gauges (:mod:`shared.stream_health`) for the groups the service
  consumes and refreshes them from ``after_startup`` until ``on_shutdown``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from faststream import FastStream

from shared.logs import CorrelationMiddleware
from shared.stream_health import StreamHealth

if TYPE_CHECKING:
    from shared.bootstrap import Infrastructure


def observe(app: FastStream, infra: Infrastructure) -> StreamHealth:
    """Wire log correlation and stream health into ``app``; return the stream health (for tests)."""
    infra.broker.insert_middleware(CorrelationMiddleware)
    health = StreamHealth(infra.redis, infra.registry, infra.groups, infra.settings.stream_health_seconds)
    app.after_startup(health.start)
    app.on_shutdown(health.stop)
    return health
