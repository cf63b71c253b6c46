"""Loading a version for serving: a Predictor per family, native formats only (no pickle)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from shared.artifacts import ArtifactStore
from shared.errors import ArtifactError
from shared.messages import Action, ArtifactRef, Family
from shared.ml.features import feature_schema_hash


@dataclass(frozen=True, slots=True)
class Decision:
    """One prediction: action, confidence in [0, 1] and the model's raw score (predicted % return)."""

    action: Action
    confidence: float
    score: float


class Predictor(Protocol):
    """A loaded model: ``predict`` maps feature rows to decisions; loaded once, called many times."""

    family: Family
    feature_schema_hash: str

    def predict(self, features: np.ndarray) -> list[Decision]:
        """Return one decision per row of ``features`` (float32, shape [n, n_features])."""
        ...


Loader = Callable[[dict[str, bytes], dict[str, Any]], Predictor]
_LOADERS: dict[Family, Loader] = {}


def register_loader(family: Family, loader: Loader) -> None:
    """Register how a family's bundle becomes a Predictor."""
    _LOADERS[family] = loader


def load_predictor(
    store: ArtifactStore, ref: ArtifactRef, expected_schema_hash: str | None = None, *, serving: bool = False
) -> Predictor:
    """Load and verify a version's bundle (sha256 of every file, feature schema) into a Predictor.

    ``serving``: the version is to predict on live candles, so its inputs must be what this code
    computes from candles (:func:`ensure_servable`); a version trained on another registered feature
    schema is refused.
    """
    files, metadata = store.get_bundle(ref)
    try:
        family = Family(metadata["family"])
    except (KeyError, ValueError) as error:
        raise ArtifactError(f"bundle {ref.path} names no known family") from error
    if family not in _LOADERS:
        _import_builtin_loader(family)
    loader = _LOADERS.get(family)
    if loader is None:
        raise ArtifactError(f"no loader for family {family}")
    predictor = loader(files, metadata)
    if expected_schema_hash is not None and predictor.feature_schema_hash != expected_schema_hash:
        raise ArtifactError(
            f"feature schema mismatch: artifact {predictor.feature_schema_hash}, expected {expected_schema_hash}"
        )
    if serving:
        ensure_servable(predictor)
    return predictor


def ensure_servable(predictor: Predictor) -> None:
    """Raise :class:`ArtifactError` unless inference computes this predictor's inputs from candles.

    XGBoost versions need the serving feature schema (``shared.ml.features``); a CNN's loader already
    refuses a channel schema other than the serving one.
    """
    if predictor.family is Family.XGBOOST:
        serving = feature_schema_hash()
        if predictor.feature_schema_hash != serving:
            raise ArtifactError(
                f"trained on feature schema {predictor.feature_schema_hash[:12]}…, but inference computes "
                f"{serving[:12]}… from candles: this version cannot be served"
            )


_BUILTIN = {Family.XGBOOST: "shared.ml.xgboost_model", Family.CNN: "shared.ml.cnn_model"}


def _import_builtin_loader(family: Family) -> None:
    """Import only the family's module (torch is loaded for CNN versions only)."""
    importlib.import_module(_BUILTIN[family])
