"""docs/asyncapi.json is generated from the code and kept current."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_committed_asyncapi_document_matches_the_code(tmp_path: Path) -> None:
    out = tmp_path / "asyncapi.json"
    subprocess.run(
        [sys.executable, "-m", "faststream", "docs", "gen", "shared.asyncapi:build_app", "--factory", "--out", str(out)],
        cwd=ROOT, check=True, capture_output=True,
    )
    generated = json.loads(out.read_text())
    committed = json.loads((ROOT / "docs" / "asyncapi.json").read_text())
    assert generated == committed, "run `make asyncapi` and commit docs/asyncapi.json"
    channels = set(generated["channels"])
    assert "tradeloop.cmd.retrain-model:trainer" in channels
    assert {"RetrainModel", "ActivateModel", "ModelActivated", "PredictionMade"} <= set(generated["components"]["schemas"])
