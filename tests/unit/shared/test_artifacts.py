"""Content-addressed artifacts: atomic, verified, tamper-evident."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.artifacts import ArtifactStore, sha256_bytes
from shared.errors import ArtifactError


def test_put_is_content_addressed_and_idempotent(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    first = store.put(b"model bytes", ".ubj")
    again = store.put(b"model bytes", ".ubj")
    assert first == again
    assert first.sha256 == sha256_bytes(b"model bytes")
    assert first.path.endswith(f"{first.sha256}.ubj")
    assert store.get(first) == b"model bytes"
    assert not list(tmp_path.rglob(".tmp-*"))


def test_corrupted_blob_is_refused(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    ref = store.put(b"original")
    (tmp_path / ref.path).write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        store.get(ref)


def test_missing_blob_is_refused(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    ref = store.put(b"x")
    (tmp_path / ref.path).unlink()
    with pytest.raises(ArtifactError, match="unreadable"):
        store.get(ref)


def test_bundle_round_trip_and_member_tampering(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    ref = store.put_bundle({"model.ubj": b"m", "schema.json": b"{}"}, {"family": "xgboost"})
    files, metadata = store.get_bundle(ref)
    assert files == {"model.ubj": b"m", "schema.json": b"{}"}
    assert metadata == {"family": "xgboost"}
    member = next(p for p in tmp_path.rglob("*.ubj"))
    member.write_bytes(b"evil")
    with pytest.raises(ArtifactError):
        store.get_bundle(ref)


def test_a_blob_that_is_not_a_bundle_is_refused(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    ref = store.put(b'{"kind": "something else", "files": {}}')
    with pytest.raises(ArtifactError, match="not a tradeloop bundle"):
        store.get_bundle(ref)
