"""Seed 003 on closed trades: purge by holding period, error codes, lineage; family configuration and dispatch."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from services.trainer.datasets import Samples
from services.trainer.evaluation import purged_time_split
from services.trainer.families.cnn_family import CnnFamily
from services.trainer.families.xgboost import XGBoostParams
from services.trainer.families.xgboost_family import XGBoostFamily
from services.trainer.feature_schemas import make_schema, schema_hash, serving_schema
from services.trainer.handlers import FAMILIES
from services.trainer.pipeline import RetrainError, RunConfig, train_xgboost
from services.trainer.settings import TrainerSettings
from shared.messages import Family, RetrainErrorCode, RetrainModel, RetrainOverrides, Slot
from shared.ml.features import feature_schema_hash

HOUR = np.timedelta64(3600, "s")
XGB = Slot(family=Family.XGBOOST, market="BTC-EUR", timeframe="1h")
CNN = Slot(family=Family.CNN, market="BTC-EUR", timeframe="1h", pattern="bullFlag")


def _trades(n: int, seed: int = 0, width: int = 20) -> Samples:
    """Trades entered every hour, held 1..12 hours (so neighbours overlap), label from feature 0."""
    rng = np.random.default_rng(seed)
    entries = np.datetime64("2026-11-01T00:00:00", "ns") + np.arange(n) * HOUR
    exits = entries + rng.integers(1, 13, n) * HOUR
    features = rng.normal(size=(n, width)).astype(np.float32)
    labels = 0.01 * features[:, 0] + rng.normal(0, 0.003, n)
    return Samples(features, labels, entries, n, label_ends=exits, source="trade_outcomes")


def _config(**changes: object) -> RunConfig:
    base: dict[str, object] = {"min_samples": 100, "window_days": 30, "horizon": 5, "validation_fraction": 0.2,
                               "decision_threshold": 0.001, "params": XGBoostParams(40, 3, 0.1, 7)}
    return RunConfig(**{**base, **changes})  # type: ignore[arg-type]


def test_no_validation_trade_overlaps_a_training_trades_holding_period() -> None:
    samples = _trades(500)
    split = purged_time_split(samples.times, samples.label_ends, 0.2)  # type: ignore[arg-type]
    assert split.validation[0] == 400 and split.purged > 0
    first_validation_entry = samples.times[split.validation].min()
    assert (samples.label_ends[split.train] < first_validation_entry).all()  # type: ignore[index]
    dropped = np.setdiff1d(np.arange(400), split.train)
    assert (samples.label_ends[dropped] >= first_validation_entry).all()  # type: ignore[index]


def test_outcome_training_reports_seed_003_metrics_and_lineage() -> None:
    trained = train_xgboost(_trades(600), _config())
    assert set(trained.metrics) >= {"train_accuracy", "validation_accuracy", "train_mae", "validation_mae"}
    assert (trained.metrics["validation_accuracy"] or 0) > 0.7  # feature 0 drives the label
    lineage = trained.lineage
    assert lineage["source"] == "trade_outcomes" and lineage["bootstrap"] is False
    assert lineage["samples_train"] + lineage["purge"]["purged_rows"] == 480 and lineage["samples_validation"] == 120
    assert {"libraries", "code", "seeds", "rows_fingerprint"} <= set(lineage)
    assert trained.feature_schema_hash == feature_schema_hash()


def test_error_codes_on_trades() -> None:
    with pytest.raises(RetrainError) as few:
        train_xgboost(_trades(80), _config())
    assert few.value.code is RetrainErrorCode.INSUFFICIENT_SAMPLES
    samples = _trades(300)
    broken = samples.features.copy()
    broken[::2, 3] = np.nan
    labels = samples.labels.copy()
    labels[1::4] = np.inf
    with pytest.raises(RetrainError) as invalid:
        train_xgboost(dataclasses.replace(samples, features=broken, labels=labels), _config(min_samples=120))
    assert invalid.value.code is RetrainErrorCode.TOO_FEW_VALID_SAMPLES
    assert invalid.value.details["valid_samples"] == 75


def test_another_schema_ships_in_the_bundle() -> None:
    schema = make_schema([f"x{i}" for i in range(100)])
    assert schema.hash == schema_hash(schema.schema) != serving_schema().hash
    trained = train_xgboost(dataclasses.replace(_trades(300, width=100), schema=schema), _config())
    assert trained.feature_schema_hash == schema.hash and trained.metadata["feature_schema_hash"] == schema.hash
    assert b'"x99"' in trained.files["feature_schema.json"]


def test_family_dispatch_and_refused_overrides() -> None:
    assert set(FAMILIES) == {Family.XGBOOST, Family.CNN}
    settings = TrainerSettings()
    refusals = [
        (XGBoostFamily(), RetrainModel(slot=XGB, overrides=RetrainOverrides(num_epochs=3))),
        (XGBoostFamily(), RetrainModel(slot=XGB.model_copy(update={"pattern": "doji"}))),
        (CnnFamily(), RetrainModel(slot=CNN, overrides=RetrainOverrides(max_depth=3))),
        (CnnFamily(), RetrainModel(slot=CNN, overrides=RetrainOverrides(architecture="resnet"))),
        (CnnFamily(), RetrainModel(slot=CNN.model_copy(update={"pattern": None}))),
        (CnnFamily(), RetrainModel(slot=CNN.model_copy(update={"pattern": "cupAndHandle"}))),
        (CnnFamily(), RetrainModel(slot=CNN, overrides=RetrainOverrides(batch_size=1))),
    ]
    for family, command in refusals:
        with pytest.raises(RetrainError) as error:
            family.configure(command, settings)  # type: ignore[attr-defined]
        assert error.value.code is RetrainErrorCode.INVALID_PARAMETERS, command


def test_cnn_configuration_merges_overrides_into_seed_000_defaults() -> None:
    settings = TrainerSettings(cnn_num_epochs=7, backtest_fee_pct=0.1)
    overrides = RetrainOverrides(horizon=6, sequence_length=24, batch_size=16, perform_cross_validation=False,
                                 cv_num_splits=4, architecture="dropout_regularized", learning_rate=0.01, seed=3)
    job = CnnFamily().configure(RetrainModel(slot=CNN, overrides=overrides), settings)
    config = job.train
    assert (config.pattern, config.architecture_key, config.sequence_length, config.num_epochs) == (
        "bullFlag", "dropout_regularized", 24, 7)
    assert config.label.future_n_candles == 6 and config.perform_cross_validation is False
    assert config.cv_num_splits == 4 and config.learning_rate == 0.01 and job.seed == 3
    assert config.backtest is not None and config.backtest.max_holding_candles == 6
    assert config.backtest.fee_pct == 0.1 and config.backtest.take_profit_pct == config.label.profit_threshold_pct
    job = XGBoostFamily().configure(RetrainModel(slot=XGB, overrides=RetrainOverrides(window_days=7)), settings)
    assert job.run.window_days == 7 and job.run.min_samples == 100 and job.feature_schema == "serving"
