"""Time the CNN pipeline's vectorised parts on 1M synthetic candles, next to plain numpy baselines.

    .venv/bin/python bench/train_cnn_parts.py [--candles 1000000] [--repeats 3]

Goals: indicators (CNN channels incl. pattern flags) + first-touch labels <= 2 s; backtest <= 1 s.
Each figure is the best of ``--repeats`` runs; the baseline is one plain numpy pass over the same
arrays (log returns, a cumulative-sum rolling mean, running maxima), measured in the same run, so
the ratio says how many "array passes" the part costs on this machine.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from services.trainer.backtest import BacktestConfig, run_backtest
from shared.ml import cnn_model, patterns
from shared.ml.features import compute_features
from shared.ml.labels import PatternLabelConfig, binary_labels

LABEL = PatternLabelConfig(future_n_candles=24, profit_threshold_pct=2.0, loss_threshold_pct=1.0)
BACKTEST = BacktestConfig(take_profit_pct=2.0, stop_loss_pct=1.0, fee_pct=0.1, max_holding_candles=24)


def synthetic_candles(count: int, seed: int = 0) -> pd.DataFrame:
    """A random walk with wicks and volume, open = previous close."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, count)))
    open_ = np.concatenate([[100.0], close[:-1]])
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.004, count)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.004, count)))
    volume = rng.lognormal(3, 0.5, count)
    return pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": volume})


def best_of(repeats: int, work: Callable[[], object]) -> float:
    """Best wall time of ``repeats`` calls, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def numpy_pass(candles: pd.DataFrame) -> None:
    """Baseline: log returns, a 20-candle rolling mean and running maxima over the OHLC arrays."""
    for name in ("open", "high", "low", "close"):
        values = candles[name].to_numpy()
        returns = np.diff(np.log(values))
        sums = np.cumsum(returns)
        _ = (sums[20:] - sums[:-20]) / 20.0
        _ = np.maximum.accumulate(values)


def main() -> None:
    """Run the benchmark and print seconds, goals and ratios to the baseline."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--candles", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    candles = synthetic_candles(args.candles)
    signal = np.random.default_rng(1).random(args.candles)  # p(win); ~10 % of candles >= 0.9
    baseline = best_of(args.repeats, lambda: numpy_pass(candles))

    parts = {
        "features (features.py)": lambda: compute_features(candles),
        "pattern flags (8 patterns)": lambda: patterns.detect_all(candles),
        "first-touch labels": lambda: binary_labels(candles, LABEL),
        "channels + labels (total)": lambda: (cnn_model.compute_channels(candles), binary_labels(candles, LABEL)),
        "backtest (p >= 0.9 signals)": lambda: run_backtest(candles, signal, BacktestConfig(entry_threshold=0.9)),
        "backtest (every candle signals)": lambda: run_backtest(candles, np.ones(args.candles, bool), BACKTEST),
    }
    goals = {"channels + labels (total)": 2.0, "backtest (p >= 0.9 signals)": 1.0}
    trades = run_backtest(candles, signal, BacktestConfig(entry_threshold=0.9)).number_of_trades
    print(f"{args.candles:,} candles, best of {args.repeats}; baseline numpy pass {baseline:.3f} s")
    print(f"{'part':34} {'seconds':>8} {'goal':>6} {'x baseline':>11}")
    for name, work in parts.items():
        seconds = best_of(args.repeats, work)
        goal = f"{goals[name]:.1f}" if name in goals else "-"
        print(f"{name:34} {seconds:8.3f} {goal:>6} {seconds / baseline:11.1f}")
    print(f"backtest at p >= 0.9 made {trades:,} trades")


if __name__ == "__main__":
    main()
