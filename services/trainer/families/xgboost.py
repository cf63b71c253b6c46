"""Family 1: XGBoost regression of % return; native UBJ artifact, no pickle."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import xgboost as xgb

from services.trainer.feature_schemas import SchemaRef, serving_schema
from shared.messages import Family
from shared.ml import xgboost_model

MODEL_TYPE = "xgboost_continuous"


@dataclass(frozen=True)
class XGBoostParams:
    """Hyper-parameters of one fit."""

    num_boost_round: int
    max_depth: int
    learning_rate: float
    seed: int
    nthread: int = 1

    def booster_params(self) -> dict[str, Any]:
        return {
            "objective": "reg:squarederror",
            "eval_metric": "mae",
            "tree_method": "hist",
            "max_depth": self.max_depth,
            "eta": self.learning_rate,
            "subsample": 0.8,
            "colsample_bytree": 0.8,
            "min_child_weight": 5,
            "seed": self.seed,
            "nthread": self.nthread,  # default 1: predictable next to other work; results do not depend on it
        }


def fit(x_train: np.ndarray, y_train: np.ndarray, params: XGBoostParams) -> xgb.Booster:
    """Train a booster on float32 rows."""
    rows = np.ascontiguousarray(x_train, dtype=np.float32)
    dtrain = xgb.DMatrix(rows, label=y_train, nthread=params.nthread)
    return xgb.train(params.booster_params(), dtrain, num_boost_round=params.num_boost_round)


def predict(booster: xgb.Booster, rows: np.ndarray, nthread: int = 1) -> np.ndarray:
    """Predicted % returns for ``rows``."""
    booster.set_param({"nthread": nthread})
    return np.asarray(booster.inplace_predict(np.ascontiguousarray(rows, dtype=np.float32)), dtype=np.float64)


def bundle(
    booster: xgb.Booster, metadata: dict[str, Any], schema: SchemaRef | None = None
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Return the artifact files (UBJ model, feature schema JSON, compiled forest) and the manifest metadata."""
    schema = schema or serving_schema()
    document = {"hash": schema.hash, "schema": schema.schema}
    files = xgboost_model.bundle_files(booster, document, booster.num_features())
    return files, {"family": Family.XGBOOST.value, "model_type": MODEL_TYPE, "feature_schema_hash": schema.hash,
                   **metadata}
