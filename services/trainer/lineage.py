"""Lineage helpers: fingerprints of the training rows, library versions and the code version."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
from pathlib import Path
from typing import Any

import numpy as np

_LIBRARIES = ("tradeloop", "numpy", "pandas", "xgboost-cpu", "xgboost", "torch", "safetensors", "scikit-learn")
_ROOT = Path(__file__).resolve().parents[2]
_CODE_DIRS = ("services/trainer", "shared/ml")


def fingerprint(*arrays: np.ndarray) -> str:
    """sha256 over the exact bytes (and shapes) of ``arrays``: the identity of a training set."""
    digest = hashlib.sha256()
    for array in arrays:
        contiguous = np.ascontiguousarray(array)
        digest.update(f"{contiguous.dtype.str}{contiguous.shape}".encode())
        digest.update(contiguous.data)
    return digest.hexdigest()


@functools.cache
def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape a model (missing ones are left out)."""
    versions: dict[str, str] = {}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


@functools.cache
def code_version() -> dict[str, str]:
    """The trainer's code identity: package version and sha256 of the training and ML sources."""
    digest = hashlib.sha256()
    for folder in _CODE_DIRS:
        for path in sorted((_ROOT / folder).rglob("*.py")):
            digest.update(str(path.relative_to(_ROOT)).encode())
            digest.update(path.read_bytes())
    return {"package": library_versions().get("tradeloop", "unknown"), "source_sha256": digest.hexdigest()}


def environment() -> dict[str, Any]:
    """What lineage records about the software that trained a version."""
    return {"libraries": library_versions(), "code": code_version()}
