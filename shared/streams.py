"""Every Redis stream and consumer group tradeloop uses, declared once.

Commands are orders (``cmd.*``), events are facts in the past tense (``evt.*``). Each stream
carries exactly one message type (see ``shared.messages.STREAM_MESSAGES``). A dead-letter stream is
the source stream's name plus ``.dlq``.
"""

from __future__ import annotations

import os
import socket
from enum import StrEnum


class Stream(StrEnum):
    """Redis stream names."""

    CANDLE_CLOSED = "tradeloop.evt.candle-closed"
    """A candle closed and was stored (ingest → inference)."""
    RETRAIN_MODEL = "tradeloop.cmd.retrain-model"
    """Order to train a new version for a slot (CLI/HTTP/scheduler → trainer)."""
    RETRAIN_PROGRESS = "tradeloop.evt.retrain-progress"
    """A retrain run reached a stage (trainer → observers)."""
    RETRAIN_FAILED = "tradeloop.evt.retrain-failed"
    """A retrain run failed with a machine-readable code (trainer → observers)."""
    MODEL_TRAINED = "tradeloop.evt.model-trained"
    """A new immutable version was trained and stored (trainer → registry)."""
    ACTIVATE_MODEL = "tradeloop.cmd.activate-model"
    """Order to make a version its slot's champion (CLI/HTTP → registry)."""
    MODEL_ACTIVATED = "tradeloop.evt.model-activated"
    """A version became champion of its slot (registry → every inference replica)."""
    ACTIVATION_REJECTED = "tradeloop.evt.activation-rejected"
    """The registry refused an activation command, state unchanged (registry → observers)."""
    MODEL_SWAPPED = "tradeloop.evt.model-swapped"
    """An inference replica now serves the activated version (inference → observers)."""
    MODEL_ACTIVATION_FAILED = "tradeloop.evt.model-activation-failed"
    """An inference replica could not load an activated version and kept the old one."""
    PREDICTION_MADE = "tradeloop.evt.prediction-made"
    """A model version predicted an action for a closed candle (inference → bots, registry)."""
    ROLLBACK_MODEL = "tradeloop.cmd.rollback-model"
    """Order to restore a slot's previous (or a named) champion (CLI/HTTP → registry)."""
    ADD_CHALLENGER = "tradeloop.cmd.add-challenger"
    """Order to run a version in shadow next to its champion (CLI/HTTP → registry)."""
    REMOVE_CHALLENGER = "tradeloop.cmd.remove-challenger"
    """Order to stop a shadow challenger (CLI/HTTP → registry)."""
    ARCHIVE_MODEL = "tradeloop.cmd.archive-model"
    """Order to archive a version (CLI/HTTP → registry)."""
    CHALLENGERS_CHANGED = "tradeloop.evt.challengers-changed"
    """A slot's shadow set changed (registry → every inference replica)."""
    MODEL_ARCHIVED = "tradeloop.evt.model-archived"
    """A version was archived (registry → observers)."""
    COMMAND_REJECTED = "tradeloop.evt.command-rejected"
    """A registry command (rollback, shadow, archive) was refused (registry → observers)."""
    PROMOTION_DECIDED = "tradeloop.evt.promotion-decided"
    """The promotion policy judged a challenger, promoted or not (registry → observers)."""
    TRADE_EXECUTED = "tradeloop.evt.trade-executed"
    """The user's bot executed a trade on a prediction (bot → ingest)."""
    TRADE_CLOSED = "tradeloop.evt.trade-closed"
    """The user's bot closed that trade (bot → ingest)."""
    TRADE_OUTCOME_RECORDED = "tradeloop.evt.trade-outcome-recorded"
    """A trade's realised P&L and labels were stored as a training sample (ingest → registry)."""

    @property
    def dlq(self) -> str:
        """Name of this stream's dead-letter stream."""
        return dead_letter_stream(self.value)


class Group(StrEnum):
    """Consumer groups: one per service that does work from a stream."""

    INFERENCE = "inference"
    TRAINER = "trainer"
    REGISTRY = "registry"
    INGEST = "ingest"


def dead_letter_stream(stream: str) -> str:
    """Return the dead-letter stream for ``stream``."""
    return f"{stream}.dlq"


# Approximate MAXLEN per stream when publishing: large enough to cover the worst backlog, so
# trimming never evicts entries that are still pending.
DEFAULT_MAXLEN = 1_000_000
DLQ_MAXLEN = 100_000

# Work streams and the groups that consume them. Groups are created at id 0 before any
# subscriber starts, so nothing published before the first start is lost.
WORK_GROUPS: dict[Stream, tuple[Group, ...]] = {
    Stream.CANDLE_CLOSED: (Group.INFERENCE,),
    Stream.RETRAIN_MODEL: (Group.TRAINER,),
    Stream.MODEL_TRAINED: (Group.REGISTRY,),
    Stream.ACTIVATE_MODEL: (Group.REGISTRY,),
    Stream.ROLLBACK_MODEL: (Group.REGISTRY,),
    Stream.ADD_CHALLENGER: (Group.REGISTRY,),
    Stream.REMOVE_CHALLENGER: (Group.REGISTRY,),
    Stream.ARCHIVE_MODEL: (Group.REGISTRY,),
    Stream.TRADE_EXECUTED: (Group.INGEST,),
    Stream.TRADE_CLOSED: (Group.INGEST,),
    Stream.TRADE_OUTCOME_RECORDED: (Group.REGISTRY,),
}


def consumer_name(group: Group | str, service: str | None = None) -> str:
    """Return a consumer name unique to this process: ``{group}-{host}-{pid}``."""
    return f"{service or group}-{socket.gethostname()}-{os.getpid()}"
