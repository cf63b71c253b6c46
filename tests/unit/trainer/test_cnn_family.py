"""CNN family: training on synthetic candles, bundle round trip, honest splits, reproducibility."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import safetensors.torch
import torch

from services.trainer.families.cnn import CnnTrainConfig, CnnTrainingError, CnnTrainResult, train_cnn
from shared.artifacts import ArtifactStore
from shared.errors import ArtifactError
from shared.messages import Action, Family, RetrainErrorCode
from shared.ml import cnn_model
from shared.ml.labels import PatternLabelConfig, binary_labels
from shared.ml.predictor import load_predictor

LENGTH = 20
LABEL = PatternLabelConfig(future_n_candles=10, profit_threshold_pct=2.0, loss_threshold_pct=1.0)
CONFIG = CnnTrainConfig(
    label=LABEL,
    sequence_length=LENGTH,
    num_epochs=2,
    batch_size=64,
    perform_cross_validation=True,
    cv_num_splits=2,
    perform_backtesting=True,
)


def synthetic_candles(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    """A random walk (nothing to learn honestly) with realistic wicks and volume."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.concatenate([[100.0], close[:-1]])
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.004, n)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.004, n)))
    volume = rng.lognormal(3, 0.5, n)
    return pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": volume})


CANDLES = synthetic_candles()
EPOCHS_SEEN: list[tuple[int, float, float]] = []


@pytest.fixture(scope="module")
def trained() -> CnnTrainResult:
    return train_cnn(CANDLES, CONFIG, seed=1, on_epoch=lambda *row: EPOCHS_SEEN.append(row))


def test_bundle_round_trip_gives_identical_predictions(trained: CnnTrainResult, tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    ref = store.put_bundle(trained.files, trained.metadata)
    predictor = load_predictor(store, ref, expected_schema_hash=cnn_model.channel_schema_hash(LENGTH))
    assert isinstance(predictor, cnn_model.CnnPredictor) and predictor.family is Family.CNN
    windows = np.asarray(cnn_model.build_windows(CANDLES, LENGTH)[trained.test_window_ends - LENGTH + 1])
    probabilities = predictor.probabilities(windows)
    np.testing.assert_array_equal(probabilities, trained.test_probabilities)
    decisions = predictor.predict(windows.reshape(len(windows), -1))
    assert [d.score for d in decisions] == probabilities.tolist()
    assert [d.action for d in decisions] == [Action.BUY if p >= 0.5 else Action.HOLD for p in probabilities]
    latest = cnn_model.latest_window(CANDLES, LENGTH)  # inference: just enough candles
    newest = np.asarray(cnn_model.build_windows(CANDLES, LENGTH)[-1:])  # training: the whole history
    np.testing.assert_allclose(latest, newest, rtol=1e-5, atol=1e-6)
    assert predictor.probabilities(latest)[0] == pytest.approx(predictor.probabilities(newest)[0], abs=1e-5)


def test_bundle_holds_safetensors_and_json_only(trained: CnnTrainResult) -> None:
    assert set(trained.files) == {"model.safetensors", "architecture.json", "scaler.json", "feature_schema.json"}
    state = safetensors.torch.load(trained.files["model.safetensors"])
    assert all(isinstance(tensor, torch.Tensor) for tensor in state.values())
    architecture = json.loads(trained.files["architecture.json"])
    assert architecture["key"] == "default_simple" and architecture["sequence_length"] == LENGTH
    schema = json.loads(trained.files["feature_schema.json"])
    assert schema["hash"] == trained.metadata["feature_schema_hash"] == cnn_model.channel_schema_hash(LENGTH)
    assert schema["schema"]["channels"] == list(cnn_model.CHANNEL_NAMES)
    assert trained.metadata["family"] == "cnn" and trained.metadata["pattern"] == "bullFlag"
    json.dumps(trained.metadata, allow_nan=False)


def test_split_is_time_ordered_with_a_purge_gap(trained: CnnTrainResult) -> None:
    split = trained.split
    assert split["train"][1] + LABEL.future_n_candles < split["validation"][0]
    assert split["validation"][1] + LABEL.future_n_candles < split["test"][0]
    assert split["test"][1] == len(CANDLES) - LABEL.future_n_candles - 1
    assert trained.training_samples > 1500 and trained.validation_samples > 300 and trained.test_samples > 300


def test_scaler_is_fitted_on_the_training_part_only(trained: CnnTrainResult) -> None:
    scaler = json.loads(trained.files["scaler.json"])
    channels = cnn_model.compute_channels(CANDLES).astype(np.float64)
    first, last = trained.split["train"]
    train_rows = channels[first - LENGTH + 1 : last + 1]
    assert not np.isnan(train_rows).any()
    std = train_rows.std(axis=0)
    std[std == 0] = 1.0
    np.testing.assert_allclose(scaler["mean"], train_rows.mean(axis=0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(scaler["std"], std, rtol=1e-12)
    all_rows = channels[~np.isnan(channels).any(axis=1)]
    assert not np.allclose(scaler["mean"], all_rows.mean(axis=0), rtol=1e-6)
    assert not np.allclose(scaler["std"], all_rows.std(axis=0), rtol=1e-6)


def test_same_seed_same_model_and_metrics(trained: CnnTrainResult) -> None:
    config = dataclasses.replace(CONFIG, perform_cross_validation=False, perform_backtesting=False)
    again = train_cnn(CANDLES, config, seed=1)
    assert again.files["model.safetensors"] == trained.files["model.safetensors"]
    assert {k: v for k, v in trained.metrics.items() if not k.startswith(("cv_", "backtest_"))} == again.metrics
    other = train_cnn(CANDLES, dataclasses.replace(config, num_epochs=1), seed=2)
    assert other.files["model.safetensors"] != trained.files["model.safetensors"]


def test_metrics_cross_validation_backtest_and_progress(trained: CnnTrainResult) -> None:
    assert [row[0] for row in EPOCHS_SEEN] == [1, 2] and trained.history == EPOCHS_SEEN
    for part in ("validation", "test"):
        for name in ("accuracy", "precision", "recall", "f1", "auc"):
            value = trained.metrics[f"{part}_{name}"]
            assert value is not None and 0.0 <= value <= 1.0
    assert [fold["fold"] for fold in trained.cross_validation] == [1.0, 2.0]
    accuracies = [fold["accuracy"] for fold in trained.cross_validation]
    assert trained.metrics["cv_mean_accuracy"] == pytest.approx(float(np.mean(accuracies)))  # type: ignore[arg-type]
    assert trained.backtest is not None
    assert trained.metrics["backtest_number_of_trades"] == trained.backtest.number_of_trades


def test_planted_future_leak_is_caught_by_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    config = dataclasses.replace(
        CONFIG, num_epochs=5, learning_rate=3e-3, perform_cross_validation=False, perform_backtesting=False
    )
    clean = train_cnn(CANDLES, config, seed=1)
    own_channels = cnn_model.compute_channels

    def leaky(candles: pd.DataFrame) -> np.ndarray:
        channels = own_channels(candles)
        channels[:, cnn_model.CHANNEL_NAMES.index("ret_3")] = np.nan_to_num(binary_labels(candles, LABEL))
        return channels

    monkeypatch.setattr(cnn_model, "compute_channels", leaky)
    leaked = train_cnn(CANDLES, config, seed=1)
    positive_rate = clean.metrics["validation_positive_rate"]
    assert positive_rate is not None
    majority = max(positive_rate, 1 - positive_rate)  # accuracy of always guessing the larger class
    honest, peeking = clean.metrics, leaked.metrics
    assert (peeking["validation_accuracy"] or 0.0) > max(0.95, majority + 0.2)
    assert (peeking["validation_auc"] or 0.0) > 0.98
    assert (honest["validation_accuracy"] or 1.0) < majority + 0.05
    assert (honest["validation_auc"] or 1.0) < 0.6


def test_own_channels_never_read_future_candles() -> None:
    full = cnn_model.compute_channels(CANDLES)
    for cut in (500, 1777, 2900):
        np.testing.assert_allclose(cnn_model.compute_channels(CANDLES.iloc[:cut]), full[:cut], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("key", sorted(cnn_model.CNN_ARCHITECTURE_CONFIGS))
def test_architectures(key: str) -> None:
    architecture = cnn_model.Architecture.from_config(cnn_model.CNN_ARCHITECTURE_CONFIGS[key])
    model = cnn_model.PatternCnn(architecture, len(cnn_model.CHANNEL_NAMES), LENGTH)
    kinds = {type(layer) for layer in model.modules()}
    assert (torch.nn.BatchNorm1d in kinds) == (key == "deeper_batchnorm")
    assert (torch.nn.Dropout in kinds) == (key == "dropout_regularized")
    model.eval()
    assert model(torch.zeros(3, len(cnn_model.CHANNEL_NAMES), LENGTH)).shape == (3,)


def test_batchnorm_model_and_pattern_gate_survive_the_bundle() -> None:
    config = CnnTrainConfig(
        pattern="doji",
        label=LABEL,
        architecture_key="deeper_batchnorm",
        sequence_length=LENGTH,
        num_epochs=1,
        pattern_windows_only=True,
        min_samples=100,
        decision_threshold=0.0,
    )
    result = train_cnn(CANDLES, config, seed=3)
    predictor = cnn_model.load(result.files, result.metadata)
    windows = np.asarray(cnn_model.build_windows(CANDLES, LENGTH)[result.test_window_ends - LENGTH + 1])
    np.testing.assert_array_equal(predictor.probabilities(windows), result.test_probabilities)
    all_windows = np.asarray(cnn_model.build_windows(CANDLES, LENGTH)[200:600])
    flags = all_windows[:, cnn_model.CHANNEL_NAMES.index("pattern_doji"), -1] == 1.0
    assert 0 < flags.sum() < len(flags)
    actions = [decision.action for decision in predictor.predict(all_windows)]
    assert actions == [Action.BUY if flag else Action.HOLD for flag in flags]


def test_too_few_samples_is_a_coded_error() -> None:
    with pytest.raises(CnnTrainingError) as error:
        train_cnn(CANDLES.iloc[:300], CONFIG, seed=1)
    assert error.value.code is RetrainErrorCode.INSUFFICIENT_SAMPLES


def test_unknown_pattern_and_bad_architecture_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown pattern"):
        train_cnn(CANDLES, dataclasses.replace(CONFIG, pattern="cupAndHandle"), seed=1)
    with pytest.raises(ValueError, match="odd"):
        cnn_model.Architecture.from_config({"filters": [8], "kernel_sizes": [4], "dense_units": 8})


def test_corrupt_or_foreign_bundles_are_refused(trained: CnnTrainResult) -> None:
    broken = {**trained.files, "model.safetensors": b"not a safetensors file"}
    with pytest.raises(ArtifactError, match="unusable"):
        cnn_model.load(broken, trained.metadata)
    schema = json.loads(trained.files["feature_schema.json"])
    foreign = {**trained.files, "feature_schema.json": json.dumps({**schema, "hash": "0" * 64}).encode()}
    with pytest.raises(ArtifactError, match="another channel schema"):
        cnn_model.load(foreign, trained.metadata)
    with pytest.raises(ArtifactError, match="unknown pattern"):
        cnn_model.load(trained.files, {**trained.metadata, "pattern_windows_only": True, "pattern": "cup"})
