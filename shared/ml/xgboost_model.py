"""XGBoost regressor of % return, stored as UBJ (native, no pickle) with a JSON feature schema."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import xgboost as xgb

from shared.errors import ArtifactError
from shared.messages import Action, Family
from shared.ml.predictor import Decision, register_loader

MODEL_FILE = "model.ubj"
SCHEMA_FILE = "feature_schema.json"


def decide(scores: np.ndarray, *, threshold: float, scale: float) -> list[Decision]:
    """Map predicted returns to actions: BUY above ``threshold``, SELL below ``-threshold``, else HOLD.

    Confidence is ``|r| / (|r| + scale)`` where ``scale`` is the model's validation MAE: a prediction
    as large as the model's typical error gives 0.5.
    """
    magnitude = np.abs(scores)
    confidence = magnitude / (magnitude + max(scale, 1e-12))
    actions = np.where(scores > threshold, 1, np.where(scores < -threshold, -1, 0))
    labels = {1: Action.BUY, -1: Action.SELL, 0: Action.HOLD}
    return [
        Decision(action=labels[int(a)], confidence=float(c), score=float(s))
        for a, c, s in zip(actions, confidence, scores, strict=True)
    ]


@dataclass
class XGBoostPredictor:
    """A loaded booster; single-threaded predict (OpenMP spin-up dominates small batches)."""

    booster: xgb.Booster
    feature_schema_hash: str
    n_features: int
    threshold: float
    scale: float
    family: Family = Family.XGBOOST

    def predict(self, features: np.ndarray) -> list[Decision]:
        rows = np.ascontiguousarray(features, dtype=np.float32).reshape(-1, self.n_features)
        scores = np.asarray(self.booster.inplace_predict(rows), dtype=np.float64).reshape(-1)
        return decide(scores, threshold=self.threshold, scale=self.scale)


def load(files: dict[str, bytes], metadata: dict[str, Any]) -> XGBoostPredictor:
    """Build a predictor from a verified bundle."""
    try:
        schema = json.loads(files[SCHEMA_FILE])
        booster = xgb.Booster()
        booster.load_model(bytearray(files[MODEL_FILE]))
    except (KeyError, ValueError, xgb.core.XGBoostError) as error:
        raise ArtifactError(f"xgboost bundle unusable: {error}") from error
    booster.set_param({"nthread": 1})
    n_features = len(schema["schema"]["names"])
    if booster.num_features() != n_features:
        raise ArtifactError(f"model expects {booster.num_features()} features, schema names {n_features}")
    return XGBoostPredictor(
        booster=booster,
        feature_schema_hash=str(schema["hash"]),
        n_features=n_features,
        threshold=float(metadata.get("decision_threshold", 0.001)),
        scale=float(metadata.get("confidence_scale", 0.01)),
    )


register_loader(Family.XGBOOST, load)
