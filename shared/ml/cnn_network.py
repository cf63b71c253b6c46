"""CNN network: seed 000's architectures, the 1-D conv net and batched probability prediction."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

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
