"""The vectorised backtest against backtesting.py (a test-only dependency, requirements-test-extra.txt)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd
import pytest
from backtesting import Backtest, Strategy  # type: ignore[import-untyped]

from services.trainer.backtest import BacktestConfig, BacktestResult, run_backtest

CASH = 1e12  # so backtesting.py's whole-unit orders track fractional sizing to ~1e-10
SIZE = 1 - 1e-9  # "all equity" for backtesting.py (a size of 1 would mean one unit)
# backtesting.py 0.6.6 still calls pandas APIs that pandas 3.1 deprecates
pytestmark = pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning:backtesting")


def random_candles(n: int, seed: int) -> pd.DataFrame:
    """A random walk whose open is exactly the previous close (no gaps)."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.008, n)))
    open_ = np.concatenate([[100.0], close[:-1]])
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.005, n)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.005, n)))
    index = pd.date_range("2024-01-01", periods=n, freq="h")
    return pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": 1.0}, index=index)


def reference(candles: pd.DataFrame, signal: np.ndarray, config: BacktestConfig) -> pd.Series:
    """The same rules in backtesting.py: trade_on_close (entry at close[s] == open[s+1])."""
    take_profit, stop_loss = config.take_profit_pct / 100.0, config.stop_loss_pct / 100.0

    class SignalStrategy(Strategy):  # type: ignore[misc]
        def init(self) -> None:
            pass

        def next(self) -> None:
            bar = len(self.data) - 1
            closing = False
            if self.position and bar - self.trades[0].entry_bar >= config.max_holding_candles:
                trade = self.trades[0]
                trade.sl = None  # the time exit fills at this close, before the next bar's SL/TP
                trade.tp = None
                trade.close()
                closing = True
            if (closing or not self.position) and signal[bar]:
                price = float(self.data.Close[-1])
                self.buy(size=SIZE, sl=price * (1 - stop_loss), tp=price * (1 + take_profit))

    data = candles.rename(columns=str.capitalize)
    test = Backtest(
        data, SignalStrategy, cash=CASH, commission=config.fee_pct / 100.0, trade_on_close=True, finalize_trades=True
    )
    return test.run()


CONFIGS = [
    BacktestConfig(take_profit_pct=2.0, stop_loss_pct=1.0, fee_pct=0.1, max_holding_candles=10),
    BacktestConfig(take_profit_pct=1.5, stop_loss_pct=1.5, fee_pct=0.0, max_holding_candles=5),
    BacktestConfig(take_profit_pct=3.0, stop_loss_pct=0.5, fee_pct=0.25, max_holding_candles=1),
    BacktestConfig(take_profit_pct=0.6, stop_loss_pct=0.6, fee_pct=0.0, max_holding_candles=40),
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("density", [0.05, 0.5])
def test_same_trades_and_pnl_as_backtesting_py(config: BacktestConfig, density: float) -> None:
    candles = random_candles(2500, seed=int(density * 100) + config.max_holding_candles)
    signal = np.random.default_rng(7).random(2500) < density
    signal[-(config.max_holding_candles + 2) :] = False  # every trade closes inside the data
    ours = run_backtest(candles, signal, config)
    theirs = reference(candles, signal, config)
    trades = theirs["_trades"]

    assert ours.number_of_trades == len(trades) == theirs["# Trades"] > 10
    np.testing.assert_array_equal(ours.trades["entry_bar"], trades["EntryBar"] + 1)
    np.testing.assert_array_equal(ours.trades["exit_bar"], trades["ExitBar"])
    np.testing.assert_allclose(ours.trades["entry_price"], trades["EntryPrice"], rtol=1e-12)
    np.testing.assert_allclose(ours.trades["exit_price"], trades["ExitPrice"], rtol=1e-12)
    np.testing.assert_allclose(ours.trades["return_pct"] / 100, trades["ReturnPct"], rtol=1e-9, atol=1e-12)
    assert ours.total_return == pytest.approx(theirs["Return [%]"] / 100, rel=1e-6, abs=1e-9)
    assert ours.win_rate == pytest.approx(theirs["Win Rate [%]"] / 100)
    assert ours.profit_factor == pytest.approx(theirs["Profit Factor"], rel=1e-9)
    if config.fee_pct == 0:  # with a fee, backtesting.py books a time exit's fee one candle later
        equity = theirs["_equity_curve"]["Equity"].to_numpy() / CASH
        np.testing.assert_allclose(ours.equity_curve, equity, rtol=1e-8)
        assert ours.max_drawdown == pytest.approx(-theirs["Max. Drawdown [%]"] / 100, rel=1e-6)


def hand_made(rows: list[tuple[float, float, float, float]]) -> pd.DataFrame:
    open_, high, low, close = (np.array(column) for column in zip(*rows, strict=True))
    return pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": 1.0})


def single_trade(rows: list[tuple[float, float, float, float]], **settings: Any) -> BacktestResult:
    signal = np.zeros(len(rows), dtype=bool)
    signal[0] = True
    config = BacktestConfig(take_profit_pct=2.0, stop_loss_pct=1.0, fee_pct=0.0, max_holding_candles=3)
    return run_backtest(hand_made(rows), signal, dataclasses.replace(config, **settings))


FLAT = (100.0, 100.2, 99.8, 100.0)


def test_stop_first_when_both_barriers_are_touched_in_one_candle() -> None:
    trade = single_trade([FLAT, (100.0, 103.0, 98.0, 100.0), FLAT, FLAT]).trades.iloc[0]
    assert (trade.exit_reason, trade.exit_bar, trade.exit_price) == ("stop_loss", 1, 99.0)


def test_gap_through_a_barrier_fills_at_the_open() -> None:
    rows = [FLAT, FLAT, (97.0, 97.5, 96.0, 97.0), FLAT]
    assert single_trade(rows).trades.iloc[0].exit_price == 97.0
    rows = [FLAT, FLAT, (105.0, 106.0, 104.0, 105.0), FLAT]
    trade = single_trade(rows).trades.iloc[0]
    assert (trade.exit_reason, trade.exit_price) == ("take_profit", 105.0)


def test_time_exit_at_the_close_and_end_of_data() -> None:
    rows = [FLAT, FLAT, FLAT, (100.0, 100.5, 99.9, 100.4), FLAT]
    trade = single_trade(rows).trades.iloc[0]
    assert (trade.exit_reason, trade.exit_bar, trade.exit_price) == ("max_holding", 3, 100.4)
    trade = single_trade(rows[:3]).trades.iloc[0]
    assert (trade.exit_reason, trade.exit_bar) == ("end_of_data", 2)


def test_fees_and_statistics() -> None:
    result = single_trade([FLAT, (100.0, 102.5, 99.5, 102.0), FLAT], fee_pct=0.5)
    trade = result.trades.iloc[0]
    assert trade.return_pct == pytest.approx((1.02 - 1 - 0.005 * 2.02) * 100)
    assert result.total_return == pytest.approx(1.02 * 0.995 / 1.005 - 1)
    assert result.win_rate == 1.0 and result.profit_factor == float("inf")
    assert result.equity_curve[1] == pytest.approx(1.02 * 0.995 / 1.005)


def test_probabilities_use_the_entry_threshold_and_no_signal_means_no_trade() -> None:
    candles = random_candles(300, seed=1)
    probabilities = np.where(np.arange(300) % 50 == 0, 0.7, 0.4)
    probabilities[-1] = np.nan
    assert run_backtest(candles, probabilities, BacktestConfig(entry_threshold=0.6)).number_of_trades == 6
    empty = run_backtest(candles, np.zeros(300, dtype=bool), BacktestConfig())
    assert empty.number_of_trades == 0 and empty.total_return == 0.0 and (empty.equity_curve == 1.0).all()
