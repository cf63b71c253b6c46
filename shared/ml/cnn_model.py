"""CNN family: bundle format and predictor; re-exports the inputs (:mod:`shared.ml.cnn_inputs`) and the
network (:mod:`shared.ml.cnn_network`) so ``cnn_model`` stays the one import for training and serving.

Bundle files: ``model.safetensors`` (state dict, no pickle), ``architecture.json``, ``scaler.json``
(per-channel mean/std fitted on the training part only) and ``feature_schema.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
from numpy.typing import NDArray

from shared.errors import ArtifactError
from shared.messages import Action, Family
from shared.ml.cnn_inputs import (
    BASE_CHANNELS,
    CHANNEL_NAMES,
    CHANNEL_SET_VERSION,
    PARALLEL_CANDLES,
    Scaler,
    build_windows,
    channel_schema,
    channel_schema_hash,
    compute_channels,
    latest_window,
    required_candles,
    windows_from_channels,
)
from shared.ml.cnn_network import CNN_ARCHITECTURE_CONFIGS, Architecture, PatternCnn, predict_probabilities
from shared.ml.predictor import Decision, register_loader

__all__ = [
    "ARCHITECTURE_FILE",
    "BASE_CHANNELS",
    "CHANNEL_NAMES",
    "CHANNEL_SET_VERSION",
    "CNN_ARCHITECTURE_CONFIGS",
    "MODEL_FILE",
    "PARALLEL_CANDLES",
    "SCALER_FILE",
    "SCHEMA_FILE",
    "Architecture",
    "CnnPredictor",
    "PatternCnn",
    "Scaler",
    "build_windows",
    "channel_schema",
    "channel_schema_hash",
    "compute_channels",
    "latest_window",
    "load",
    "make_bundle",
    "predict_probabilities",
    "required_candles",
    "windows_from_channels",
]

MODEL_FILE, ARCHITECTURE_FILE, SCALER_FILE, SCHEMA_FILE = (
    "model.safetensors", "architecture.json", "scaler.json", "feature_schema.json",
)  # fmt: skip


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
