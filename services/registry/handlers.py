"""Registry decisions: record versions, apply the promotion policy, activate or refuse."""

from __future__ import annotations

import functools
import logging
import uuid
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.registry import repository
from services.registry.settings import RegistrySettings
from services.registry.verification import Verifier
from shared.artifacts import ArtifactStore
from shared.db.models import ModelVersion
from shared.db.models_registry import ArchivedVersion
from shared.errors import ServiceError
from shared.messages import (
    ActivateModel,
    ActivationRejected,
    ArtifactRef,
    ModelActivated,
    ModelTrained,
    Slot,
)
from shared.ml.predictor import load_predictor
from shared.publishing import EventPublisher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegistryMetrics:
    """Registry metrics."""

    versions: Counter
    activations: Counter
    rejections: Counter
    champion: Gauge
    champion_since: Gauge
    decisions: Counter
    live_accuracy: Gauge
    pnl: Gauge
    shadow_pnl: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry | None) -> RegistryMetrics:
        return cls(
            versions=Counter("tradeloop_versions_registered", "Versions recorded.", ["slot"], registry=registry),
            activations=Counter("tradeloop_activations", "Champion changes.", ["slot", "policy"],
                                registry=registry),
            rejections=Counter("tradeloop_activations_rejected", "Refused activation commands.", [],
                               registry=registry),
            champion=Gauge("tradeloop_champion_epoch", "Activation epoch of the champion per slot.",
                           ["slot", "version"], registry=registry),
            champion_since=Gauge("tradeloop_champion_activated_timestamp_seconds",
                                 "When the slot's champion was activated.", ["slot"], registry=registry),
            decisions=Counter("tradeloop_promotion_decisions", "Promotion policy judgements.",
                              ["policy", "stage", "promoted"], registry=registry),
            live_accuracy=Gauge("tradeloop_version_live_accuracy", "Live accuracy per version.",
                                ["slot", "version"], registry=registry),
            pnl=Gauge("tradeloop_version_pnl_total", "Realised P&L of a version's predictions (champion).",
                      ["slot", "version"], registry=registry),
            shadow_pnl=Gauge("tradeloop_shadow_pnl_total", "Would-be P&L of a shadow challenger.",
                             ["slot", "version"], registry=registry),
        )


@dataclass
class RegistryDeps:
    """What registry handlers need."""

    settings: RegistrySettings
    sessions: async_sessionmaker[AsyncSession]
    store: ArtifactStore
    publisher: EventPublisher
    metrics: RegistryMetrics

    @functools.cached_property
    def verifier(self) -> Verifier:
        """Where versions are loaded to check them (a low-priority thread, ``verify_niceness``)."""
        return Verifier(self.settings.verify_niceness)


class Refused(ServiceError):
    """An activation that must not happen; the reason is published, state is unchanged."""


def artifact_ref(version: ModelVersion) -> ArtifactRef:
    """The artifact reference recorded for ``version``."""
    return ArtifactRef(sha256=version.artifact_sha256, path=version.artifact_path, size=version.artifact_size)


def _verify_loadable(store: ArtifactStore, version: ModelVersion) -> None:
    load_predictor(store, artifact_ref(version), expected_schema_hash=version.feature_schema_hash, serving=True)


async def check_activatable(deps: RegistryDeps, version_id: str, expected_slot: str | None) -> ModelVersion:
    """Return the version if it may become champion; raise :class:`Refused` with the reason otherwise."""
    version = await repository.get_version(deps.sessions, version_id)
    if version is None:
        raise Refused(f"unknown version {version_id}")
    if expected_slot is not None and version.slot_key != expected_slot:
        raise Refused(f"version {version_id} belongs to slot {version.slot_key}, not {expected_slot}")
    if version.status != "ready":
        raise Refused(f"version {version_id} is {version.status}")
    async with deps.sessions() as session:
        if await session.get(ArchivedVersion, version_id) is not None:
            raise Refused(f"version {version_id} is archived")
    try:
        await deps.verifier.run(_verify_loadable, deps.store, version)
    except Exception as error:
        raise Refused(f"version {version_id} artifact refused: {error}") from error
    return version


async def activate_version(
    deps: RegistryDeps, version: ModelVersion, *, actor: str, reason: str, policy: str, command_id: uuid.UUID
) -> ModelActivated:
    """Move the slot's champion alias to ``version`` and publish ModelActivated."""
    activation = await repository.activate(
        deps.sessions, version, actor=actor, reason=reason, policy=policy, command_event_id=str(command_id)
    )
    event = ModelActivated(
        slot=Slot.from_key(version.slot_key),
        version_id=version.version_id,
        previous_version_id=activation.previous_version_id,
        epoch=activation.epoch,
        artifact=artifact_ref(version),
        feature_schema_hash=version.feature_schema_hash,
        actor=activation.actor,
        reason=activation.reason,
        policy=activation.policy,
    )
    await deps.publisher.publish(event)  # after the commit; a repeated command re-publishes the same epoch
    if not activation.repeated:
        deps.metrics.activations.labels(version.slot_key, policy).inc()
        deps.metrics.champion.labels(version.slot_key, version.version_id).set(activation.epoch)
        if activation.previous_version_id:
            deps.metrics.champion.labels(version.slot_key, activation.previous_version_id).set(0)
        deps.metrics.champion_since.labels(version.slot_key).set(activation.activated_at.timestamp())
        log.info("activated %s as champion of %s (epoch %d)", version.version_id, version.slot_key,
                 activation.epoch, extra={"actor": actor, "policy": policy})
    return event


async def handle_activate(command: ActivateModel, deps: RegistryDeps) -> ModelActivated | None:
    """Activate on command, or publish ActivationRejected with the reason."""
    try:
        version = await check_activatable(deps, command.version_id, command.expected_slot)
    except Refused as refusal:
        deps.metrics.rejections.inc()
        log.warning("activation refused: %s", refusal, extra={"command_event_id": str(command.event_id)})
        await deps.publisher.publish(
            ActivationRejected(version_id=command.version_id, reason=str(refusal), command_event_id=command.event_id)
        )
        return None
    return await activate_version(
        deps, version, actor=command.requested_by, reason=command.reason or "manual activation",
        policy="manual", command_id=command.event_id,
    )


async def handle_model_trained(event: ModelTrained, deps: RegistryDeps) -> ModelVersion | None:
    """Record the version once (a redelivery finds it recorded) and return it for the promotion policy."""
    if await repository.register_version(deps.sessions, event):
        deps.metrics.versions.labels(event.slot.key).inc()
        log.info("registered %s for %s", event.version_id, event.slot.key)
    return await repository.get_version(deps.sessions, event.version_id)
