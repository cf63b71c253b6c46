"""CNN family: candle-window channels, architectures, scaler, bundle format and predictor.

A sample is the window of ``sequence_length`` candles ending at candle ``t``, laid out channels
first (``[channels, sequence_length]``, as ``torch.nn.Conv1d`` wants). Channels are scale-free
features of :mod:`shared.ml.features` plus one 0/1 flag per pattern of :mod:`shared.ml.patterns`
(the model for one pattern sees every window, with that pattern's flag among its inputs).

Bundle files: ``model.safetensors`` (state dict, no pickle), ``architecture.json``, ``scaler.json``
(per-channel mean/std fitted on the training part only) and ``feature_schema.json``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import safetensors
import safetensors.torch
import torch
from numpy.typing import NDArray
from torch import nn

from shared.errors import ArtifactError
from shared.messages import Action, Family
from shared.ml import features, patterns
from shared.ml.predictor import Decision, register_loader

CHANNEL_SET_VERSION = 1
BASE_CHANNELS: tuple[str, ...] = (
    "ret_1", "ret_3", "rsi_14", "macd_hist", "bb_pct_b", "bb_width", "volatility_12", "range_rel",
    "body_rel", "upper_wick_rel", "lower_wick_rel", "volume_z_20", "stoch_14", "sma_ratio_10_30",
)  # fmt: skip
CHANNEL_NAMES: tuple[str, ...] = BASE_CHANNELS + tuple(f"pattern_{name}" for name in patterns.PATTERN_NAMES)
MODEL_FILE, ARCHITECTURE_FILE, SCALER_FILE, SCHEMA_FILE = (
    "model.safetensors", "architecture.json", "scaler.json", "feature_schema.json",
)  # fmt: skip
assert patterns.PATTERN_LOOKBACK <= features.LOOKBACK

CNN_ARCHITECTURE_CONFIGS: dict[str, dict[str, Any]] = {
    "default_simple": {
        "filters": [16], "kernel_sizes": [3], "pool_sizes": [2],
        "dense_units": 32, "use_batch_norm": False, "dropout_rate": 0.0,
    },
    "deeper_batchnorm": {
        "filters": [32, 32, 64], "kernel_sizes": [5, 3, 3], "pool_sizes": [1, 2, 2],
        "dense_units": 64, "use_batch_norm": True, "dropout_rate": 0.0,
    },
    "dropout_regularized": {
        "filters": [32, 64], "kernel_sizes": [3, 3], "pool_sizes": [2, 2],
        "dense_units": 64, "use_batch_norm": False, "dropout_rate": 0.3,
    },
}  # fmt: skip
"""Seed 000's ``cnn_architecture_configs``: conv blocks (odd kernels, "same" padding, max-pool),
then flatten -> dense -> one logit (p(win) after a sigmoid)."""


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


def compute_channels(candles: pd.DataFrame) -> NDArray[np.float32]:
    """Return ``[candles, channels]`` float32 in :data:`CHANNEL_NAMES` order; rows before the
    features' full lookback are NaN. Channel ``t`` reads only candles up to ``t``."""
    out = np.empty((len(candles), len(CHANNEL_NAMES)), dtype=np.float32)
    out[:, : len(BASE_CHANNELS)] = features.compute_features(candles)[list(BASE_CHANNELS)].to_numpy(np.float32)
    out[:, len(BASE_CHANNELS) :] = np.stack(list(patterns.detect_all(candles).values()), axis=1)
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


@dataclass(frozen=True, slots=True)
class Architecture:
    """A validated entry of :data:`CNN_ARCHITECTURE_CONFIGS`."""

    filters: tuple[int, ...]
    kernel_sizes: tuple[int, ...]
    pool_sizes: tuple[int, ...]
    dense_units: int
    use_batch_norm: bool
    dropout_rate: float

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Architecture:
        """Validate a config dict (equal-length lists, odd kernels, dropout in [0, 1))."""
        arch = cls(
            filters=tuple(int(v) for v in config["filters"]),
            kernel_sizes=tuple(int(v) for v in config["kernel_sizes"]),
            pool_sizes=tuple(int(v) for v in config.get("pool_sizes", [1] * len(config["filters"]))),
            dense_units=int(config["dense_units"]),
            use_batch_norm=bool(config.get("use_batch_norm", False)),
            dropout_rate=float(config.get("dropout_rate", 0.0)),
        )
        if not arch.filters or len({len(arch.filters), len(arch.kernel_sizes), len(arch.pool_sizes)}) != 1:
            raise ValueError("filters, kernel_sizes and pool_sizes must be non-empty and equally long")
        if any(k % 2 == 0 or k < 1 for k in arch.kernel_sizes) or not 0 <= arch.dropout_rate < 1:
            raise ValueError("kernel sizes must be odd; dropout_rate in [0, 1)")
        return arch


class PatternCnn(nn.Module):
    """Conv1d blocks -> flatten -> dense -> one logit."""

    def __init__(self, architecture: Architecture, in_channels: int, sequence_length: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, length = in_channels, sequence_length
        for filters, kernel, pool in zip(
            architecture.filters, architecture.kernel_sizes, architecture.pool_sizes, strict=True
        ):
            layers.append(nn.Conv1d(channels, filters, kernel, padding=kernel // 2))
            if architecture.use_batch_norm:
                layers.append(nn.BatchNorm1d(filters))
            layers.append(nn.ReLU())
            if pool > 1:
                layers.append(nn.MaxPool1d(pool))
                length //= pool
            if architecture.dropout_rate > 0:
                layers.append(nn.Dropout(architecture.dropout_rate))
            channels = filters
        if length < 1:
            raise ValueError(f"sequence_length {sequence_length} too short for the pooling")
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = [nn.Flatten(), nn.Linear(channels * length, architecture.dense_units), nn.ReLU()]
        if architecture.dropout_rate > 0:
            head.append(nn.Dropout(architecture.dropout_rate))
        self.head = nn.Sequential(*head, nn.Linear(architecture.dense_units, 1))

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """Return one logit per window of ``[n, channels, L]``."""
        logits: torch.Tensor = self.head(self.features(windows))
        return logits.squeeze(-1)


def predict_probabilities(
    model: PatternCnn, scaled: NDArray[np.float32], batch_size: int = 4096
) -> NDArray[np.float64]:
    """Return p(win) per scaled window (eval mode, no gradients)."""
    model.eval()
    parts: list[NDArray[np.float64]] = []
    with torch.no_grad():
        for start in range(0, scaled.shape[0], batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(scaled[start : start + batch_size]))
            parts.append(torch.sigmoid(model(batch)).double().numpy())
    return np.concatenate(parts) if parts else np.empty(0)


def make_bundle(
    model: PatternCnn,
    architecture_key: str,
    architecture: Architecture,
    scaler: Scaler,
    sequence_length: int,
    metadata: Mapping[str, Any],
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Return the bundle files and metadata (``family="cnn"``) for ArtifactStore.put_bundle."""
    state = {name: tensor.detach().contiguous().clone() for name, tensor in model.state_dict().items()}
    schema_hash = channel_schema_hash(sequence_length)
    layout = {"key": architecture_key, "config": asdict(architecture), "in_channels": len(CHANNEL_NAMES)}
    files = {
        MODEL_FILE: bytes(safetensors.torch.save(state)),
        ARCHITECTURE_FILE: json.dumps({**layout, "sequence_length": sequence_length}, sort_keys=True).encode(),
        SCALER_FILE: scaler.to_json(),
        SCHEMA_FILE: json.dumps({"schema": channel_schema(sequence_length), "hash": schema_hash}).encode(),
    }
    return files, {**metadata, "family": Family.CNN.value, "feature_schema_hash": schema_hash}


@dataclass
class CnnPredictor:
    """A loaded CNN: ``predict`` takes raw (unscaled) windows ``[n, channels, L]`` or ``[n, channels*L]``."""

    model: PatternCnn
    scaler: Scaler
    feature_schema_hash: str
    sequence_length: int
    threshold: float
    gate_channel: int | None = None
    """When set (model trained on pattern windows only), BUY needs this flag at the newest candle."""
    family: Family = Family.CNN

    def probabilities(self, windows: np.ndarray) -> NDArray[np.float64]:
        """Return p(win) per window; NaN inputs (incomplete lookback) are refused."""
        raw = np.asarray(windows, dtype=np.float32).reshape(-1, len(CHANNEL_NAMES), self.sequence_length)
        if np.isnan(raw).any():
            raise ValueError("windows contain NaN (not enough candles before the window)")
        return predict_probabilities(self.model, self.scaler.transform(raw))

    def predict(self, features: np.ndarray) -> list[Decision]:
        """BUY when p(win) >= the entry threshold (and the gating pattern fired), else HOLD;
        confidence = score = p(win)."""
        probabilities = self.probabilities(features)
        buy = probabilities >= self.threshold
        if self.gate_channel is not None:
            raw = np.asarray(features).reshape(-1, len(CHANNEL_NAMES), self.sequence_length)
            buy &= raw[:, self.gate_channel, -1] == 1.0
        return [
            Decision(action=Action.BUY if flag else Action.HOLD, confidence=p, score=p)
            for flag, p in zip(buy.tolist(), probabilities.tolist(), strict=True)
        ]


def load(files: Mapping[str, bytes], metadata: Mapping[str, Any]) -> CnnPredictor:
    """Build a predictor from a verified bundle (safetensors weights, JSON architecture and scaler)."""
    try:
        layout = json.loads(files[ARCHITECTURE_FILE])
        schema = json.loads(files[SCHEMA_FILE])
        scaler = Scaler.from_json(files[SCALER_FILE])
        sequence_length = int(layout["sequence_length"])
        model = PatternCnn(Architecture.from_config(layout["config"]), int(layout["in_channels"]), sequence_length)
        model.load_state_dict(safetensors.torch.load(files[MODEL_FILE]), strict=True)
    except (KeyError, ValueError, TypeError, RuntimeError, safetensors.SafetensorError) as error:
        raise ArtifactError(f"cnn bundle unusable: {error}") from error
    if schema["hash"] != channel_schema_hash(sequence_length):
        raise ArtifactError("cnn bundle was built for another channel schema")
    gate: int | None = None
    if metadata.get("pattern_windows_only"):  # trained on pattern windows only: BUY needs the flag
        if (name := f"pattern_{metadata.get('pattern')}") not in CHANNEL_NAMES:
            raise ArtifactError(f"cnn bundle gates on unknown pattern {metadata.get('pattern')!r}")
        gate = CHANNEL_NAMES.index(name)
    model.eval()
    return CnnPredictor(
        model=model,
        scaler=scaler,
        feature_schema_hash=str(schema["hash"]),
        sequence_length=sequence_length,
        threshold=float(metadata.get("decision_threshold", 0.5)),
        gate_channel=gate,
    )


register_loader(Family.CNN, load)
