"""CNN inputs: candle-window channels, windows and the per-channel scaler (training and serving).

A sample is the window of ``sequence_length`` candles ending at candle ``t``, laid out channels
first (``[channels, sequence_length]``, as ``torch.nn.Conv1d`` wants). Channels are scale-free
features of :mod:`shared.ml.features` plus one 0/1 flag per pattern of :mod:`shared.ml.patterns`
(the model for one pattern sees every window, with that pattern's flag among its inputs).
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from shared.errors import ArtifactError
from shared.ml import features, patterns

CHANNEL_SET_VERSION = 1
BASE_CHANNELS: tuple[str, ...] = (
    "ret_1", "ret_3", "rsi_14", "macd_hist", "bb_pct_b", "bb_width", "volatility_12", "range_rel",
    "body_rel", "upper_wick_rel", "lower_wick_rel", "volume_z_20", "stoch_14", "sma_ratio_10_30",
)  # fmt: skip
CHANNEL_NAMES: tuple[str, ...] = BASE_CHANNELS + tuple(f"pattern_{name}" for name in patterns.PATTERN_NAMES)
assert patterns.PATTERN_LOOKBACK <= features.LOOKBACK


def channel_schema(sequence_length: int) -> dict[str, object]:
    """Describe the model input (channel names and order, window length, layout, versions)."""
    return {
        "version": CHANNEL_SET_VERSION,
        "channels": list(CHANNEL_NAMES),
        "sequence_length": sequence_length,
        "layout": "windows x channels x sequence_length",
        "dtype": "float32",
        "lookback": features.LOOKBACK,
        "base_feature_schema_hash": features.feature_schema_hash(),
    }


def channel_schema_hash(sequence_length: int) -> str:
    """Return the sha256 of :func:`channel_schema`; the predictor refuses other inputs by this hash."""
    return hashlib.sha256(json.dumps(channel_schema(sequence_length), sort_keys=True).encode()).hexdigest()


def required_candles(sequence_length: int) -> int:
    """Candles needed to build the window ending at the newest candle."""
    return sequence_length + features.LOOKBACK - 1


_FEATURE_COLUMNS = tuple(features.FEATURE_NAMES.index(name) for name in BASE_CHANNELS)


PARALLEL_CANDLES = 200_000
"""From this many candles on, pattern flags are computed in a worker thread while the features are
computed (numpy releases the GIL on large arrays); below it threads cost more than they save."""


def compute_channels(candles: pd.DataFrame) -> NDArray[np.float32]:
    """Return ``[candles, channels]`` float32 in :data:`CHANNEL_NAMES` order; rows before the
    features' full lookback are NaN. Channel ``t`` reads only candles up to ``t``.

    The base channels are :func:`shared.ml.features.feature_matrix`'s columns (what
    ``compute_features`` wraps in a DataFrame), cast to float32 column by column.
    """
    ohlcv = candles[features.OHLCV].to_numpy(dtype=np.float64)
    if len(candles) >= PARALLEL_CANDLES:
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(patterns.detect_all, candles)
            matrix = features.feature_matrix(ohlcv)
            flags = pending.result()
    else:
        matrix, flags = features.feature_matrix(ohlcv), patterns.detect_all(candles)
    columns = np.empty((len(candles), len(CHANNEL_NAMES)), dtype=np.float32, order="F")  # contiguous columns
    for target, source in enumerate(_FEATURE_COLUMNS):
        columns[:, target] = matrix[:, source]
    for offset, flag in enumerate(flags.values()):
        columns[:, len(BASE_CHANNELS) + offset] = flag
    out = np.ascontiguousarray(columns)  # rows contiguous: windows are slices of rows
    out[: features.LOOKBACK - 1] = np.nan
    return out


def windows_from_channels(channels: NDArray[np.float32], sequence_length: int) -> NDArray[np.float32]:
    """Return a read-only view ``[candles - L + 1, channels, L]``; row ``j`` ends at candle ``j + L - 1``."""
    if channels.shape[0] < sequence_length:
        return np.empty((0, channels.shape[1], sequence_length), dtype=np.float32)
    return np.lib.stride_tricks.sliding_window_view(channels, sequence_length, axis=0)


def build_windows(candles: pd.DataFrame, sequence_length: int) -> NDArray[np.float32]:
    """Channels -> windows; used by training (all candles) and inference (the newest candles)."""
    return windows_from_channels(compute_channels(candles), sequence_length)


def latest_window(candles: pd.DataFrame, sequence_length: int) -> NDArray[np.float32]:
    """Return the ``[1, channels, L]`` window ending at the newest candle (computed on just enough rows)."""
    needed = required_candles(sequence_length)
    if len(candles) < needed:
        raise ValueError(f"need {needed} candles, got {len(candles)}")
    return np.array(build_windows(candles.iloc[-needed:], sequence_length)[-1:])


@dataclass(frozen=True, slots=True)
class Scaler:
    """Per-channel standardisation ``(x - mean) / std`` (std 0 is replaced by 1)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    fitted_rows: tuple[int, int]

    @classmethod
    def fit(cls, channels: NDArray[np.float32], first_row: int, last_row: int) -> Scaler:
        """Fit on candle rows ``first_row .. last_row`` (inclusive) of a ``[candles, channels]`` matrix."""
        part = channels[first_row : last_row + 1].astype(np.float64)
        if part.shape[0] == 0 or np.isnan(part).any():
            raise ValueError("scaler rows must be non-empty and complete")
        std = part.std(axis=0)
        std[std == 0] = 1.0
        return cls(tuple(part.mean(axis=0).tolist()), tuple(std.tolist()), (first_row, last_row))

    def transform(self, values: NDArray[np.float32]) -> NDArray[np.float32]:
        """Scale ``[n, channels]`` rows or ``[n, channels, L]`` windows in float32 (element by element,
        so scaling rows then windowing equals windowing then scaling, bit for bit)."""
        shape = (1, len(self.mean)) + (1,) * (values.ndim - 2)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(shape)
        std = np.asarray(self.std, dtype=np.float32).reshape(shape)
        return np.asarray((values.astype(np.float32) - mean) / std, dtype=np.float32)

    def to_json(self) -> bytes:
        """Serialise (names included, so a reordered channel list is detected)."""
        payload = {"channels": list(CHANNEL_NAMES), **asdict(self)}
        return json.dumps(payload, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Scaler:
        """Inverse of :meth:`to_json`."""
        payload = json.loads(data)
        if payload["channels"] != list(CHANNEL_NAMES):
            raise ArtifactError("scaler channels differ from this code's channels")
        first, last = payload["fitted_rows"]
        return cls(tuple(payload["mean"]), tuple(payload["std"]), (int(first), int(last)))
