"""Trainer benchmarks, each next to its plain baseline, printed in one run.

    DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/test REDIS_URL=redis://127.0.0.1:6379/0 \\
        .venv/bin/python bench/train.py [--samples 100000] [--features 100] [--candles 1000000] [--repeats 2]

1. XGBoost retrain end to end (database load -> train -> save -> ModelTrained event) on ``--samples``
   closed-trade rows of ``--features`` float32 features in a fresh PostgreSQL database (created on the
   DATABASE_URL server, dropped afterwards; the rows carry a registered 100-feature schema), vs raw
   ``xgboost.train`` (DMatrix + train, same parameters) on the same training rows in memory. Goal <= 1.2x.
2. CNN training throughput (samples/s) of the family's fit loop (the one train_cnn runs: scaled
   windows gathered per batch, per-epoch validation loss, early stopping bookkeeping, progress
   callback) vs a plain torch loop over the same, pre-materialised tensors. Same model, optimiser,
   loss, batch size and thread count (1). Goal >= 0.85x.
3. Indicators + labels (CNN channels incl. pattern flags, first-touch labels) for ``--candles`` candles
   (goal <= 2 s) and the backtest of as many candles (goal <= 1 s), see bench/train_cnn_parts.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import torch
import xgboost as xgb
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from train_cnn_parts import BACKTEST, LABEL, best_of, synthetic_candles

from services.trainer.backtest import BacktestConfig, run_backtest
from services.trainer.evaluation import purged_time_split
from services.trainer.families.cnn import CnnTrainConfig
from services.trainer.families.cnn_data import channels_and_labels, sample_ends, split
from services.trainer.families.cnn_fit import Fold, deterministic, fit, make_loss
from services.trainer.feature_schemas import make_schema, register_feature_schema
from services.trainer.handlers import TrainerDeps, TrainerMetrics, handle_retrain, run_config
from services.trainer.settings import TrainerSettings
from shared.artifacts import ArtifactStore
from shared.broker import make_redis
from shared.cli.demo import redis_database
from shared.db.migrate import upgrade
from shared.db.models import RetrainRun, TrainingSample
from shared.db.session import make_engine, make_sessionmaker
from shared.messages import Family, ModelTrained, RetrainModel, Slot
from shared.ml import cnn_model
from shared.ml.labels import binary_labels
from shared.publishing import EventPublisher
from shared.settings import normalise_database_url
from shared.streams import Stream
from shared.waiting import decode_entry

SLOT = Slot(family=Family.XGBOOST, market="BTC-EUR", timeframe="1h")
BENCH_REDIS_DB = 13


def outcome_rows(count: int, width: int, now: datetime, seed: int = 0) -> dict[str, np.ndarray]:
    """Closed trades spread over the last 29.5 days, held 5 min .. 6 h, label from two features + noise."""
    rng = np.random.default_rng(seed)
    span = timedelta(days=29).total_seconds()
    entries = np.sort(rng.uniform(0, span, count))
    features = rng.normal(size=(count, width)).astype(np.float32)
    labels = 0.01 * features[:, 0] - 0.005 * features[:, 1] + rng.normal(0, 0.01, count)
    return {"entry_s": entries, "exit_s": entries + rng.uniform(300, 6 * 3600, count), "features": features,
            "labels": labels, "origin": np.array(now - timedelta(days=29.5))}


async def insert_outcomes(url: str, rows: dict[str, np.ndarray], schema_hash: str) -> float:
    """Migrate the fresh database and insert the rows; return seconds spent inserting."""
    engine = make_engine(url)
    await upgrade(engine)
    origin: datetime = rows["origin"].item()
    started = time.perf_counter()
    chunk = 10_000
    async with engine.begin() as connection:
        for first in range(0, rows["labels"].shape[0], chunk):
            batch = []
            for i in range(first, min(first + chunk, rows["labels"].shape[0])):
                entry = origin + timedelta(seconds=float(rows["entry_s"][i]))
                batch.append({
                    "symbol": SLOT.market, "timeframe": SLOT.timeframe, "timestamp": entry, "predicted_action": "BUY",
                    "prediction_confidence": 0.6, "features": rows["features"][i],
                    "feature_count": rows["features"].shape[1], "feature_schema_hash": schema_hash, "executed": True,
                    "entry_time": entry, "exit_time": origin + timedelta(seconds=float(rows["exit_s"][i])),
                    "target_label": float(rows["labels"][i]), "outcome_known": True,
                })
            await connection.execute(TrainingSample.__table__.insert(), batch)
    seconds = time.perf_counter() - started
    await engine.dispose()
    return seconds


async def xgboost_end_to_end(args: argparse.Namespace, url: str, redis_url: str) -> None:
    schema = make_schema([f"f{i:03d}" for i in range(args.features)])
    rows = outcome_rows(args.samples, args.features, datetime.now(UTC))
    inserted = await insert_outcomes(url, rows, schema.hash)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    await register_feature_schema(sessions, schema)
    redis = make_redis(redis_url)
    async for key in redis.scan_iter(match="tradeloop*", count=1000):
        await redis.delete(key)
    settings = TrainerSettings(consumer="bench", outcome_feature_schema=schema.hash, redis_url=redis_url,
                               database_url=url)
    command = RetrainModel(slot=SLOT, requested_by="bench")
    run = run_config(settings, command)
    split_rows = purged_time_split(rows["entry_s"], rows["exit_s"], settings.validation_fraction)
    x_train = np.ascontiguousarray(rows["features"][split_rows.train])
    y_train = rows["labels"][split_rows.train]
    booster_params = run.params.booster_params()

    def raw() -> None:
        dtrain = xgb.DMatrix(x_train, label=y_train, nthread=run.params.nthread)
        xgb.train(booster_params, dtrain, num_boost_round=run.params.num_boost_round)

    runs: list[float] = []
    baselines: list[float] = []
    with tempfile.TemporaryDirectory() as root:
        deps = TrainerDeps(settings, sessions, ArtifactStore(Path(root)), EventPublisher(redis),
                           TrainerMetrics.create(None))
        for attempt in range(args.repeats):  # alternate, so load from elsewhere hits both alike
            started = time.perf_counter()
            await handle_retrain(command, key=f"bench-{attempt}-{uuid.uuid4().hex[:6]}", deps=deps)
            runs.append(time.perf_counter() - started)
            baselines.append(best_of(1, raw))
        entries = await redis.xrange(Stream.MODEL_TRAINED.value)
        events = [decode_entry(Stream.MODEL_TRAINED, fields) for _id, fields in entries]
        async with sessions() as session:
            durations = [dict(d) for d in (await session.execute(select(RetrainRun.durations))).scalars()]
    await redis.aclose()
    await engine.dispose()
    assert len(events) == args.repeats and all(isinstance(e, ModelTrained) for e in events), events
    event = events[-1]
    assert isinstance(event, ModelTrained) and event.training_samples == y_train.shape[0]
    rounds = run.params.num_boost_round
    baseline, best = min(baselines), min(runs)
    stages = min(durations, key=lambda d: float(d.get("total_seconds", 1e9)))
    print(f"\n[1] XGBoost retrain end to end: {args.samples:,} samples x {args.features} float32 features "
          f"(inserted in {inserted:.1f} s), {rounds} rounds, depth {booster_params['max_depth']}, "
          f"nthread {booster_params['nthread']}")
    print(f"    trained on {event.training_samples:,} rows (validation {event.validation_samples:,}; "
          f"validation accuracy {event.metrics['validation_accuracy']:.3f}, MAE {event.metrics['validation_mae']:.4f})")
    print(f"    end to end (load -> train -> save -> event), best of {args.repeats}: {best:7.2f} s")
    print(f"    raw xgboost.train (DMatrix + train, same rows):     {baseline:7.2f} s")
    ratios = sorted(run / base for run, base in zip(runs, baselines, strict=True))
    print(f"    ratio {best / baseline:.3f}x  (goal <= 1.2x; per-pair ratios {', '.join(f'{r:.2f}' for r in ratios)})")
    shown = ("loading", "prepare", "fit", "evaluate", "bundle", "training", "saving", "total")
    print("    stages: " + ", ".join(f"{name} {float(stages[f'{name}_seconds']):.2f}s"
                                     for name in shown if f"{name}_seconds" in stages))


def cnn_throughput(args: argparse.Namespace) -> None:
    candles = synthetic_candles(args.cnn_candles, seed=1)
    config = CnnTrainConfig(sequence_length=30, num_epochs=args.epochs, batch_size=32, early_stopping_patience=99)
    channels = cnn_model.compute_channels(candles)
    labels = binary_labels(candles, config.label)
    train, validation, _test = split(sample_ends(channels, labels, config), config)
    architecture = cnn_model.Architecture.from_config(cnn_model.CNN_ARCHITECTURE_CONFIGS[config.architecture_key])
    fold, _ = Fold.create(channels, labels, train, validation, config.sequence_length)
    epochs_seen: list[int] = []

    def ours() -> None:
        with deterministic(7, config.torch_threads):
            fit(fold, architecture, config, 7, early_stopping=True, on_epoch=lambda e, *_: epochs_seen.append(e))

    inputs = torch.from_numpy(np.ascontiguousarray(fold.windows[train - config.sequence_length + 1]))
    targets = torch.from_numpy(labels[train].astype(np.float32))

    def plain() -> None:
        previous = torch.get_num_threads()
        torch.set_num_threads(config.torch_threads)
        torch.manual_seed(7)
        model = cnn_model.PatternCnn(architecture, len(cnn_model.CHANNEL_NAMES), config.sequence_length)
        loss_function = make_loss(labels[train])
        optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
        generator = torch.Generator().manual_seed(7)
        model.train()
        for _epoch in range(config.num_epochs):
            order = torch.randperm(inputs.shape[0], generator=generator)
            for start in range(0, inputs.shape[0], config.batch_size):
                index = order[start : start + config.batch_size]
                optimiser.zero_grad()
                loss = loss_function(model(inputs[index]), targets[index])
                loss.backward()
                optimiser.step()
        torch.set_num_threads(previous)

    ours_runs, plain_runs = [], []
    for _ in range(args.repeats):  # alternate, so load from elsewhere hits both alike
        ours_runs.append(best_of(1, ours))
        plain_runs.append(best_of(1, plain))
    ours_seconds, plain_seconds = min(ours_runs), min(plain_runs)
    seen = train.shape[0] * config.num_epochs
    print(f"\n[2] CNN training: {train.shape[0]:,} training windows x {config.num_epochs} epochs "
          f"(+{validation.shape[0]:,} validation windows scored per epoch), batch {config.batch_size}, "
          f"'{config.architecture_key}', {config.torch_threads} thread")
    print(f"    family fit loop: {seen / ours_seconds:9,.0f} samples/s ({ours_seconds:.2f} s)")
    print(f"    plain torch loop: {seen / plain_seconds:8,.0f} samples/s ({plain_seconds:.2f} s)")
    pairs = sorted(plain / ours for ours, plain in zip(ours_runs, plain_runs, strict=True))
    print(f"    ratio {plain_seconds / ours_seconds:.3f}x  (goal >= 0.85x; per-pair ratios "
          f"{', '.join(f'{r:.2f}' for r in pairs)})")


def candle_parts(args: argparse.Namespace) -> None:
    candles = synthetic_candles(args.candles)
    signal = np.random.default_rng(1).random(args.candles)
    indicators = best_of(args.repeats, lambda: channels_and_labels(candles, LABEL))
    backtest = best_of(args.repeats, lambda: run_backtest(candles, signal, BacktestConfig(entry_threshold=0.9)))
    every = best_of(args.repeats, lambda: run_backtest(candles, np.ones(args.candles, bool), BACKTEST))
    print(f"\n[3] {args.candles:,} candles, best of {args.repeats} (load average {os.getloadavg()[0]:.2f})")
    print(f"    indicators + labels (channels incl. 8 pattern flags, first-touch labels): {indicators:.3f} s (goal <= 2 s)")
    print(f"    backtest, p >= 0.9 entries:                                                {backtest:.3f} s (goal <= 1 s)")
    print(f"    backtest, a signal on every candle:                                        {every:.3f} s")


async def with_fresh_database(args: argparse.Namespace) -> None:
    server = normalise_database_url(os.environ.get("DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"))
    redis_url = redis_database(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), BENCH_REDIS_DB)
    name = f"tradeloop_bench_{uuid.uuid4().hex[:8]}"
    admin = create_async_engine(make_url(server), isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        await xgboost_end_to_end(args, make_url(server).set(database=name).render_as_string(hide_password=False),
                                 redis_url)
    finally:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=100)
    parser.add_argument("--candles", type=int, default=1_000_000)
    parser.add_argument("--cnn-candles", type=int, default=30_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip", choices=["xgboost", "cnn", "candles"], action="append", default=[])
    args = parser.parse_args()
    print(f"bench/train.py on {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.2f}), "
          f"torch {torch.__version__}, xgboost {xgb.__version__}; timings are wall clock, A/B runs alternate")
    if "xgboost" not in args.skip:
        asyncio.run(with_fresh_database(args))
    if "cnn" not in args.skip:
        cnn_throughput(args)
    if "candles" not in args.skip:
        candle_parts(args)


if __name__ == "__main__":
    main()
