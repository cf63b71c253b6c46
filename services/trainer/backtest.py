"""Fast long-only backtest of a signal series with take profit, stop loss, fees and a holding limit.

Rules (they match backtesting.py 0.6 run with ``trade_on_close=True`` on candles whose open equals
the previous close; see tests/unit/trainer/test_backtest.py):

* a signal at candle ``s`` (``signal[s]`` true, or probability ``>= entry_threshold``) while flat
  buys at ``open[s+1]``, investing all equity (the entry fee comes out of it);
* from the entry candle on, the trade exits at the first candle whose low reaches the stop
  ``entry x (1 - stop_loss%)`` or whose high reaches the target ``entry x (1 + take_profit%)``; when
  both are reached on one candle the stop is assumed first. Fills are at the barrier, or at that
  candle's open when it gaps through (stop: ``min(open, stop)``, target: ``max(open, target)``);
* otherwise it exits at the close of its ``max_holding_candles``-th candle (the entry candle
  counts), or at the last close when the data ends first (``end_of_data``);
* a signal on the exit candle itself may open the next trade (at the next open);
* fee: ``fee_pct`` of the traded value on each side. A trade's ``return_pct`` is
  ``exit/entry - 1 - fee x (1 + exit/entry)`` and equity is multiplied by
  ``(exit/entry) x (1 - fee) / (1 + fee)``.

Speed: first touches of every candidate entry come from one vectorised scan
(:func:`shared.ml.labels.first_touch`); the only Python loop walks from trade to trade.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from shared.ml.labels import first_touch

FloatArray = NDArray[np.float64]
EXIT_REASONS: tuple[str, ...] = ("stop_loss", "take_profit", "max_holding", "end_of_data")


@dataclass(frozen=True, slots=True)
class BacktestConfig:
    """Seed 000's ``backtest_*`` parameters; percentages in percent (2.0 = 2 %)."""

    entry_threshold: float = 0.5
    take_profit_pct: float = 2.0
    stop_loss_pct: float = 1.0
    fee_pct: float = 0.25
    max_holding_candles: int = 24

    def __post_init__(self) -> None:
        if self.max_holding_candles < 1:
            raise ValueError("max_holding_candles must be >= 1")
        if self.take_profit_pct <= 0 or not 0 < self.stop_loss_pct < 100 or not 0 <= self.fee_pct < 10:
            raise ValueError("take_profit_pct, stop_loss_pct must be positive; fee_pct in [0, 10)")


@dataclass(frozen=True, slots=True)
class BacktestResult:
    """Trades (one row each: entry_bar, exit_bar, entry_price, exit_price, exit_reason, return_pct)
    and statistics. Sharpe ratios are not annualised: ``sharpe_per_trade`` is mean / std (ddof 1)
    of trade returns, ``sharpe_per_bar`` the same over per-candle equity returns. ``max_drawdown``
    is the largest fall from a peak of the per-candle marked-to-market equity curve (fraction).
    ``profit_factor`` is gross winning returns / gross losing returns (inf without losers)."""

    trades: pd.DataFrame
    equity_curve: FloatArray
    number_of_trades: int
    win_rate: float
    total_return: float
    sharpe_per_trade: float
    sharpe_per_bar: float
    max_drawdown: float
    profit_factor: float

    def summary(self) -> dict[str, float]:
        """Return the statistics as plain floats (e.g. for ModelTrained.metrics)."""
        return {
            "number_of_trades": float(self.number_of_trades),
            "win_rate": self.win_rate,
            "total_return": self.total_return,
            "sharpe_per_trade": self.sharpe_per_trade,
            "sharpe_per_bar": self.sharpe_per_bar,
            "max_drawdown": self.max_drawdown,
            "profit_factor": self.profit_factor,
        }


def signal_mask(signal: np.ndarray | pd.Series, entry_threshold: float) -> NDArray[np.bool_]:
    """Bool signals pass through; probabilities become ``p >= entry_threshold`` (NaN is no signal)."""
    values = np.asarray(signal)
    if values.dtype == np.bool_:
        return values
    with np.errstate(invalid="ignore"):
        return np.asarray(values.astype(np.float64) >= entry_threshold)


def _chain(candidates: NDArray[np.int64], exit_bars: NDArray[np.int64]) -> list[int]:
    """Walk trade to trade: after a trade exits at bar e, the next one starts at the first signal >= e."""
    following = np.searchsorted(candidates, exit_bars, side="left").tolist()
    chosen: list[int] = []
    position, count = 0, candidates.shape[0]
    while position < count:
        chosen.append(position)
        position = following[position]
    return chosen


def run_backtest(candles: pd.DataFrame, signal: np.ndarray | pd.Series, config: BacktestConfig) -> BacktestResult:
    """Backtest ``signal`` (bool or probability per candle) on OHLC ``candles``; see the module rules."""
    open_ = candles["open"].to_numpy(dtype=np.float64)
    high = candles["high"].to_numpy(dtype=np.float64)
    low = candles["low"].to_numpy(dtype=np.float64)
    close = candles["close"].to_numpy(dtype=np.float64)
    size = close.shape[0]
    mask = signal_mask(signal, config.entry_threshold)
    if mask.shape[0] != size:
        raise ValueError(f"signal has {mask.shape[0]} values for {size} candles")
    candidates = np.flatnonzero(mask[: max(size - 1, 0)]).astype(np.int64)
    entry_bars = candidates + 1
    entry_prices = open_[entry_bars]
    stop = entry_prices * (1.0 - config.stop_loss_pct / 100.0)
    target = entry_prices * (1.0 + config.take_profit_pct / 100.0)
    holding = config.max_holding_candles
    touch = first_touch(high, low, entry_bars, target, stop, holding)
    stopped, hit_target = touch.lower_first, touch.upper_first
    timed_exit = np.minimum(entry_bars + holding - 1, size - 1)
    exit_bars = np.where(stopped, entry_bars + touch.lower, np.where(hit_target, entry_bars + touch.upper, timed_exit))
    chosen = np.asarray(_chain(candidates, exit_bars), dtype=np.int64)

    entry_bar, exit_bar = entry_bars[chosen], exit_bars[chosen]
    entry_price = entry_prices[chosen]
    was_stopped, was_target = stopped[chosen], hit_target[chosen]
    reason = np.where(was_stopped, 0, np.where(was_target, 1, np.where(entry_bar + holding - 1 < size, 2, 3)))
    exit_price = np.where(
        was_stopped,
        np.minimum(open_[exit_bar], stop[chosen]),
        np.where(was_target, np.maximum(open_[exit_bar], target[chosen]), close[exit_bar]),
    )
    fee = config.fee_pct / 100.0
    ratio = exit_price / entry_price
    returns = ratio - 1.0 - fee * (1.0 + ratio)
    multiplier = ratio * (1.0 - fee) / (1.0 + fee)
    trades = pd.DataFrame(
        {
            "entry_bar": entry_bar,
            "exit_bar": exit_bar,
            "entry_price": entry_price,
            "exit_price": exit_price,
            "exit_reason": pd.Categorical.from_codes(reason, categories=list(EXIT_REASONS)),
            "return_pct": returns * 100.0,
        }
    )
    equity = equity_curve(close, entry_bar, exit_bar, entry_price, multiplier, fee)
    return BacktestResult(
        trades=trades,
        equity_curve=equity,
        number_of_trades=int(chosen.shape[0]),
        win_rate=float(np.mean(returns > 0)) if returns.size else float("nan"),
        total_return=float(equity[-1] - 1.0) if size else 0.0,
        sharpe_per_trade=_sharpe(returns),
        sharpe_per_bar=_sharpe(np.diff(equity) / equity[:-1]) if size > 1 else float("nan"),
        max_drawdown=float(np.max(1.0 - equity / np.maximum.accumulate(equity))) if size else 0.0,
        profit_factor=_profit_factor(returns),
    )


def backtest_probabilities(
    candles: pd.DataFrame, at: NDArray[np.int64], probabilities: FloatArray, config: BacktestConfig
) -> BacktestResult:
    """Backtest probabilities known only at candles ``at`` (e.g. a test part): the run covers
    ``at[0]`` up to ``max_holding_candles`` past ``at[-1]``; bars without a probability never signal.
    Trade bars in the result count from ``at[0]``."""
    first = int(at[0])
    last = min(int(at[-1]) + config.max_holding_candles + 1, len(candles) - 1)
    signal = np.full(last - first + 1, np.nan)
    signal[at - first] = probabilities
    return run_backtest(candles.iloc[first : last + 1], signal, config)


def equity_curve(
    close: FloatArray,
    entry_bar: NDArray[np.int64],
    exit_bar: NDArray[np.int64],
    entry_price: FloatArray,
    multiplier: FloatArray,
    fee: float,
) -> FloatArray:
    """Per-candle equity (starting at 1): realised after each exit, marked to the close (before the
    exit fee) on the candles ``entry_bar .. exit_bar - 1`` of an open trade."""
    realised = np.cumprod(multiplier)
    before = np.concatenate([[1.0], realised[:-1]])
    last_exit = np.searchsorted(exit_bar, np.arange(close.shape[0]), side="right") - 1
    equity = np.where(last_exit >= 0, realised[np.maximum(last_exit, 0)] if realised.size else 1.0, 1.0)
    lengths = exit_bar - entry_bar
    trade_of_bar = np.repeat(np.arange(entry_bar.shape[0]), lengths)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    open_bars = np.repeat(entry_bar, lengths) + np.arange(trade_of_bar.shape[0]) - starts
    equity[open_bars] = before[trade_of_bar] / (1.0 + fee) * close[open_bars] / entry_price[trade_of_bar]
    return np.asarray(equity, dtype=np.float64)


def _sharpe(returns: FloatArray) -> float:
    if returns.shape[0] < 2:
        return float("nan")
    spread = float(np.std(returns, ddof=1))
    return float(np.mean(returns)) / spread if spread > 0 else float("nan")


def _profit_factor(returns: FloatArray) -> float:
    gains, losses = float(returns[returns > 0].sum()), float(-returns[returns < 0].sum())
    if losses > 0:
        return gains / losses
    return float("inf") if gains > 0 else float("nan")
