"""Tiny XGBoost versions stored as real bundles, for inference unit tests (no network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from services.trainer.families.xgboost import bundle
from shared.artifacts import ArtifactStore
from shared.messages import ChallengerRef
from shared.ml.features import FEATURE_NAMES, feature_schema_hash


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> ArtifactStore:
    """An artifact store holding the versions of :func:`refs`."""
    return ArtifactStore(Path(tmp_path_factory.mktemp("artifacts")))


@pytest.fixture(scope="session")
def refs(store: ArtifactStore) -> list[ChallengerRef]:
    """Three stored versions ``v20260101_000000`` … ``v20260103_000000`` (15 trees each)."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(400, len(FEATURE_NAMES))).astype(np.float32)
    refs = []
    for n in range(3):
        y = x[:, n] * 0.01 + rng.normal(0, 0.001, len(x))
        booster = xgb.train({"max_depth": 3, "eta": 0.3, "nthread": 1, "seed": n}, xgb.DMatrix(x, label=y), 15)
        files, metadata = bundle(booster, {"decision_threshold": 0.001, "confidence_scale": 0.01})
        refs.append(ChallengerRef(version_id=f"v2026010{n + 1}_000000", artifact=store.put_bundle(files, metadata),
                                  feature_schema_hash=feature_schema_hash()))
    return refs
