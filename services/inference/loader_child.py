"""The loader child: ``python -m services.inference.loader_child ARTIFACT_ROOT [NICENESS]``.

Reads requests from stdin and answers on stdout (:mod:`services.inference.loader` describes both). The
protocol keeps a private copy of stdout; file descriptor 1 then points at stderr, so a library that prints
cannot corrupt an answer. Exits at the end of its input.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from services.inference.loader import frame, read_frame
from shared.artifacts import ArtifactStore, sha256_bytes
from shared.errors import ArtifactError
from shared.messages import ArtifactRef
from shared.ml.predictor import load_predictor


def answer(store: ArtifactStore, request: dict[str, Any]) -> tuple[dict[str, Any], bytes | None]:
    """Load, verify and check one version; the answer header and, for a checked forest, its file."""
    from shared.ml.xgboost_model import XGBoostPredictor

    try:
        ref = ArtifactRef(sha256=request["sha256"], path=request["path"], size=request.get("size"))
        predictor = load_predictor(store, ref, expected_schema_hash=request["schema_hash"], serving=True)
    except ArtifactError as error:
        return {"ok": False, "error": str(error)}, None
    if not isinstance(predictor, XGBoostPredictor) or not predictor.verify_forest() or predictor.forest is None:
        return {"ok": True, "kind": "in_process"}, None
    forest_file = predictor.forest.to_bytes()
    return {"ok": True, "kind": "forest", "forest_sha256": sha256_bytes(forest_file),
            "feature_schema_hash": predictor.feature_schema_hash, "n_features": predictor.n_features,
            "threshold": predictor.threshold, "scale": predictor.scale}, forest_file


def main() -> int:
    protocol = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    store = ArtifactStore(Path(sys.argv[1]))
    if len(sys.argv) > 2 and int(sys.argv[2]) > 0:
        os.nice(int(sys.argv[2]))
    requests = sys.stdin.buffer
    while (request := read_frame(requests)) is not None:
        try:
            header, payload = answer(store, json.loads(request))
        except Exception as error:  # any other failure: the service loads this version in process
            header, payload = {"ok": True, "kind": "in_process", "note": repr(error)[:500]}, None
        protocol.write(frame(json.dumps(header).encode()) + (frame(payload) if payload is not None else b""))
        protocol.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
