"""XGBoost family: seed-003 error codes, purged time split, honest metrics, reproducibility, contract."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from services.trainer.datasets import Samples, bootstrap_samples
from services.trainer.evaluation import direction_accuracy, purged_split
from services.trainer.families.xgboost import XGBoostParams
from services.trainer.pipeline import RetrainError, RunConfig, train_xgboost
from services.trainer.runs import version_candidates
from shared.artifacts import ArtifactStore
from shared.errors import ArtifactError
from shared.messages import Action, RetrainErrorCode
from shared.ml.features import feature_schema_hash
from shared.ml.predictor import load_predictor
from shared.ml.xgboost_model import SCHEMA_FILE, decide


def _config(**changes: object) -> RunConfig:
    base = {"min_samples": 100, "window_days": 30, "horizon": 5, "validation_fraction": 0.2,
            "decision_threshold": 0.001, "params": XGBoostParams(40, 3, 0.1, 7)}
    base.update(changes)
    return RunConfig(**base)  # type: ignore[arg-type]


def _candles(n: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.r_[close[0], close[:-1]]
    times = pd.date_range("2026-01-01", periods=n, freq="1min", tz="UTC")
    return pd.DataFrame({"open_time": times, "open": open_, "high": np.maximum(open_, close) * 1.002,
                         "low": np.minimum(open_, close) * 0.998, "close": close, "volume": rng.uniform(1, 5, n)})


WINDOW_START = datetime(2026, 1, 1, tzinfo=UTC)


def test_purged_split_leaves_a_gap_of_the_label_horizon() -> None:
    split = purged_split(100, 0.2, 7)
    assert (split.train_end, split.validation_start) == (80, 87)
    # the last training label looks 7 rows ahead: it ends before validation starts
    assert split.train_end - 1 + 7 < split.validation_start


def test_insufficient_samples_is_seed_003s_code() -> None:
    samples = bootstrap_samples(_candles(150), WINDOW_START, 5)
    with pytest.raises(RetrainError) as error:
        train_xgboost(samples, _config(min_samples=1000), {})
    assert error.value.code is RetrainErrorCode.INSUFFICIENT_SAMPLES


def test_too_few_valid_samples_when_rows_are_not_finite() -> None:
    samples = bootstrap_samples(_candles(400), WINDOW_START, 5)
    features = samples.features.copy()
    features[::2, 0] = np.inf
    poisoned = Samples(features=features, labels=samples.labels, times=samples.times, total=samples.total)
    with pytest.raises(RetrainError) as error:
        train_xgboost(poisoned, _config(min_samples=250), {})
    assert error.value.code is RetrainErrorCode.TOO_FEW_VALID_SAMPLES


def test_same_data_same_command_same_metrics() -> None:
    samples = bootstrap_samples(_candles(900), WINDOW_START, 5)
    first = train_xgboost(samples, _config(), {})
    second = train_xgboost(samples, _config(), {})
    assert first.metrics == second.metrics
    assert first.lineage["rows_fingerprint"] == second.lineage["rows_fingerprint"]
    assert first.files == second.files


def test_validation_rows_come_after_training_rows() -> None:
    samples = bootstrap_samples(_candles(900), WINDOW_START, 5)
    trained = train_xgboost(samples, _config(), {})
    train_last = pd.Timestamp(trained.lineage["train_period"][1])
    validation_first = pd.Timestamp(trained.lineage["validation_period"][0])
    assert validation_first - train_last > pd.Timedelta(minutes=5)


def test_planted_leak_is_detected_by_the_honest_split() -> None:
    """A feature that peeks at the label makes validation accuracy jump; the real features don't."""
    samples = bootstrap_samples(_candles(1500, seed=3), WINDOW_START, 5)
    honest = train_xgboost(samples, _config(), {})
    leaked_features = samples.features.copy()
    leaked_features[:, 0] = samples.labels  # the future return itself
    leaked = Samples(leaked_features, samples.labels, samples.times, samples.total)
    cheat = train_xgboost(leaked, _config(), {})
    assert cheat.metrics["validation_accuracy"] > 0.9
    assert honest.metrics["validation_accuracy"] < 0.65


def test_bundle_loads_and_predicts_like_the_trained_booster(tmp_path: Path) -> None:
    samples = bootstrap_samples(_candles(900), WINDOW_START, 5)
    trained = train_xgboost(samples, _config(), {})
    store = ArtifactStore(tmp_path)
    ref = store.put_bundle(trained.files, trained.metadata)
    predictor = load_predictor(store, ref, expected_schema_hash=feature_schema_hash())
    rows = samples.features[-10:]
    decisions = predictor.predict(rows)
    assert len(decisions) == 10
    assert all(0 <= d.confidence <= 1 for d in decisions)
    again = load_predictor(store, ref).predict(rows)
    assert [d.score for d in decisions] == [d.score for d in again]


def test_a_version_under_another_feature_schema_is_refused(tmp_path: Path) -> None:
    samples = bootstrap_samples(_candles(900), WINDOW_START, 5)
    trained = train_xgboost(samples, _config(), {})
    store = ArtifactStore(tmp_path)
    ref = store.put_bundle(trained.files, trained.metadata)
    with pytest.raises(Exception, match="feature schema mismatch"):
        load_predictor(store, ref, expected_schema_hash="0" * 64)


def test_decide_maps_returns_to_actions() -> None:
    decisions = decide(np.array([0.01, -0.01, 0.0001]), threshold=0.001, scale=0.01)
    assert [d.action for d in decisions] == [Action.BUY, Action.SELL, Action.HOLD]
    assert decisions[0].confidence == pytest.approx(0.5)


def test_decide_gives_numpys_numbers_bit_for_bit() -> None:
    """The scalar decide against the vectorised formula it replaced, edges included (±threshold, 0, NaN, ±inf)."""
    rng = np.random.default_rng(3)
    scores = np.concatenate([rng.normal(scale=0.004, size=2000), [0.001, -0.001, 0.0, -0.0, np.nan, np.inf, -np.inf]])
    threshold, scale = 0.001, 0.0037
    magnitude = np.abs(scores)
    with np.errstate(invalid="ignore"):  # inf / inf
        confidence = magnitude / (magnitude + scale)
    actions = np.where(scores > threshold, 1, np.where(scores < -threshold, -1, 0))
    decisions = decide(scores, threshold=threshold, scale=scale)
    labels = {1: Action.BUY, -1: Action.SELL, 0: Action.HOLD}
    assert [d.action for d in decisions] == [labels[int(a)] for a in actions]
    assert np.array_equal(np.array([d.confidence for d in decisions]), confidence, equal_nan=True)
    assert np.array_equal(np.array([d.score for d in decisions]), scores, equal_nan=True)
    assert decide(np.array([0.002]), threshold=0.001, scale=0.0)[0].confidence == 0.002 / (0.002 + 1e-12)


def test_direction_accuracy_ignores_zero_returns() -> None:
    assert direction_accuracy(np.array([1.0, -1.0, 1.0]), np.array([0.5, 0.0, -0.1])) == 0.5
    assert direction_accuracy(np.array([1.0]), np.array([0.0])) is None


def test_version_ids_keep_seed_003s_format() -> None:
    candidates = version_candidates(datetime(2025, 11, 12, 15, 0, tzinfo=UTC))
    assert candidates[:2] == ["v20251112_150000", "v20251112_150000_2"]


def test_a_version_of_another_registered_schema_loads_but_is_not_servable(tmp_path: Path) -> None:
    """A model trained on a registered 100-feature schema is a valid artifact, but inference computes the
    serving features from candles: loading it for serving (inference, registry activation) is refused."""
    samples = bootstrap_samples(_candles(900), WINDOW_START, 5)
    trained = train_xgboost(samples, _config(), {})
    schema = json.loads(trained.files[SCHEMA_FILE])
    other = {**trained.files, SCHEMA_FILE: json.dumps({**schema, "hash": "f" * 64}).encode()}
    store = ArtifactStore(tmp_path)
    ref = store.put_bundle(other, {**trained.metadata, "feature_schema_hash": "f" * 64})
    assert load_predictor(store, ref, expected_schema_hash="f" * 64).feature_schema_hash == "f" * 64
    with pytest.raises(ArtifactError, match="cannot be served"):
        load_predictor(store, ref, expected_schema_hash="f" * 64, serving=True)
    served = store.put_bundle(trained.files, trained.metadata)
    assert load_predictor(store, served, serving=True).feature_schema_hash == feature_schema_hash()
