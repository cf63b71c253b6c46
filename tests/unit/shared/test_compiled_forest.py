"""The compiled forest predicts exactly XGBoost's numbers, and is used only when it verifiably does."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb

from shared.errors import ArtifactError
from shared.ml import xgboost_model
from shared.ml.features import FEATURE_NAMES, feature_schema_hash
from shared.ml.xgboost_model import (
    FOREST_FILE,
    MODEL_FILE,
    SCHEMA_FILE,
    CompiledForest,
    bundle_files,
    compile_verified,
    load,
)

N_FEATURES = len(FEATURE_NAMES)


def _booster(*, depth: int, rounds: int, seed: int = 0, objective: str = "reg:squarederror",
             missing_rate: float = 0.1, **params: object) -> xgb.Booster:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(1500, N_FEATURES)).astype(np.float32)
    x[rng.random(x.shape) < missing_rate] = np.nan  # default directions both ways
    y = np.nan_to_num(x[:, 0]) * 0.01 + np.nan_to_num(x[:, 3]) * 0.002 + rng.normal(0, 0.01, 1500) + 0.003
    if objective.startswith("binary"):
        y = (y > 0.003).astype(np.float64)
    trained = xgb.train({"max_depth": depth, "eta": 0.05, "nthread": 1, "objective": objective, "seed": seed,
                         **params}, xgb.DMatrix(x, y), rounds)
    served = xgb.Booster()
    served.load_model(bytearray(trained.save_raw("ubj")))  # what inference loads
    served.set_param({"nthread": 1})
    return served


def _rows(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(count, N_FEATURES)).astype(np.float32)
    rows[rng.random(rows.shape) < 0.03] = np.nan
    rows[rng.random(rows.shape) < 0.005] = np.inf
    rows[rng.random(rows.shape) < 0.005] = -np.inf
    return rows


def _bits(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).reshape(-1).view(np.uint32)


@pytest.mark.parametrize(("depth", "rounds", "extra"), [
    (1, 30, {}), (4, 200, {}), (5, 200, {}), (6, 80, {}), (8, 20, {}),
    (4, 50, {"max_leaves": 5, "grow_policy": "lossguide"}),  # unbalanced trees: leaves at many levels
    (3, 40, {"base_score": 0.25}), (4, 30, {"num_parallel_tree": 3, "subsample": 0.7}),
])
def test_forest_predictions_are_xgboost_bits(depth: int, rounds: int, extra: dict[str, object]) -> None:
    booster = _booster(depth=depth, rounds=rounds, **extra)
    forest = CompiledForest.compile(booster, N_FEATURES)
    assert forest is not None
    rows = _rows(3000, depth)
    np.testing.assert_array_equal(_bits(forest.predict(rows)), _bits(booster.inplace_predict(rows)))
    for single in rows[:50]:  # serving's usual call: one row
        assert _bits(forest.predict(single[None, :])) == _bits(booster.inplace_predict(single[None, :]))
    assert forest.agrees_with(booster, forest.check_rows())


def test_unsupported_models_are_not_compiled() -> None:
    logistic = _booster(depth=3, rounds=10, objective="binary:logistic")
    assert CompiledForest.compile(logistic, N_FEATURES) is None
    assert CompiledForest.compile(_booster(depth=4, rounds=5), N_FEATURES - 15) is None  # splits on unknown features


def test_a_forest_that_disagrees_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    booster = _booster(depth=3, rounds=20)
    original = CompiledForest.predict
    monkeypatch.setattr(CompiledForest, "predict", lambda self, rows: original(self, rows) + np.float32(1e-3))
    assert compile_verified(booster, N_FEATURES) is None


def _bundle(booster: xgb.Booster) -> tuple[dict[str, bytes], dict[str, object]]:
    schema = {"hash": feature_schema_hash(), "schema": {"names": list(FEATURE_NAMES)}}
    return bundle_files(booster, schema, N_FEATURES), {"decision_threshold": 0.001, "confidence_scale": 0.01}


def test_the_bundle_carries_the_forest_and_the_loaded_predictor_decides_like_xgboost() -> None:
    booster = _booster(depth=4, rounds=120)
    files, metadata = _bundle(booster)
    assert set(files) == {MODEL_FILE, SCHEMA_FILE, FOREST_FILE}
    predictor = load(files, metadata)
    rows = _rows(400, 5)
    before = predictor.predict(rows)  # the booster: loading does not wait for the forest's check
    assert predictor.forest is None and predictor.candidate is not None
    assert predictor.verify_forest() and predictor.forest is not None  # compiled at training, checked here
    expected = xgboost_model.decide(np.asarray(booster.inplace_predict(rows), dtype=np.float64),
                                    threshold=0.001, scale=0.01)
    assert predictor.predict(rows) == expected == before
    np.testing.assert_array_equal(_bits(predictor.scores(rows)), _bits(booster.inplace_predict(rows)))


def test_a_bundle_without_a_forest_predicts_through_xgboost() -> None:
    booster = _booster(depth=3, rounds=10, objective="binary:logistic")  # does not compile
    files, metadata = _bundle(booster)
    assert FOREST_FILE not in files
    predictor = load(files, metadata)
    assert not predictor.verify_forest() and predictor.forest is None
    rows = _rows(50, 6)
    np.testing.assert_array_equal(_bits(predictor.scores(rows)), _bits(booster.inplace_predict(rows)))


def test_a_forest_of_another_model_is_not_used() -> None:
    """A forest file that does not belong to the booster (a hand-built bundle) loses to XGBoost, not the reverse."""
    booster, other = _booster(depth=4, rounds=60), _booster(depth=4, rounds=60, seed=9)
    files, metadata = _bundle(booster)
    files[FOREST_FILE] = bundle_files(other, {}, N_FEATURES)[FOREST_FILE]
    predictor = load(files, metadata)
    assert not predictor.verify_forest() and predictor.forest is None
    rows = _rows(100, 7)
    np.testing.assert_array_equal(_bits(predictor.scores(rows)), _bits(booster.inplace_predict(rows)))


def test_a_malformed_forest_file_is_refused() -> None:
    files, metadata = _bundle(_booster(depth=3, rounds=10))
    files[FOREST_FILE] = b"not safetensors"
    with pytest.raises(ArtifactError, match="forest file unusable"):
        load(files, metadata)


def test_forest_round_trips_through_its_file() -> None:
    booster = _booster(depth=5, rounds=80)
    forest = CompiledForest.compile(booster, N_FEATURES)
    assert forest is not None
    again = CompiledForest.from_bytes(forest.to_bytes())
    rows = _rows(500, 8)
    np.testing.assert_array_equal(_bits(again.predict(rows)), _bits(forest.predict(rows)))
