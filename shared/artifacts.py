"""Content-addressed artifact store: immutable files named by sha256, written to a temp file and renamed.

A version's artifact is a *bundle*: named files (``model.ubj``, ``feature_schema.json``, …) each
stored by its sha256, plus a JSON manifest (itself stored by sha256) listing them. The manifest's
sha256 is the version's artifact hash; loading verifies it and every file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shared.errors import ArtifactError
from shared.messages import ArtifactRef

MANIFEST_KIND = "tradeloop.bundle/1"


def sha256_bytes(data: bytes) -> str:
    """Return the hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


class ArtifactStore:
    """A directory of immutable, content-addressed blobs."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _relative(self, digest: str, suffix: str) -> str:
        return f"sha256/{digest[:2]}/{digest}{suffix}"

    def put(self, data: bytes, suffix: str = "") -> ArtifactRef:
        """Store ``data`` (atomically, idempotently) and return its reference."""
        digest = sha256_bytes(data)
        relative = self._relative(digest, suffix)
        target = self.root / relative
        if target.exists() and sha256_bytes(target.read_bytes()) == digest:
            return ArtifactRef(sha256=digest, path=relative, size=len(data))
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=suffix)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return ArtifactRef(sha256=digest, path=relative, size=len(data))

    def get(self, ref: ArtifactRef) -> bytes:
        """Read a blob and verify its sha256; raise :class:`ArtifactError` if missing or corrupt."""
        path = self.root / ref.path
        try:
            data = path.read_bytes()
        except OSError as error:
            raise ArtifactError(f"artifact {ref.path} unreadable: {error}") from error
        digest = sha256_bytes(data)
        if digest != ref.sha256:
            raise ArtifactError(f"artifact {ref.path} sha256 mismatch: expected {ref.sha256}, found {digest}")
        return data

    def put_bundle(self, files: Mapping[str, bytes], metadata: Mapping[str, Any]) -> ArtifactRef:
        """Store each file, then the manifest naming them; return the manifest's reference."""
        entries = {}
        for name, data in sorted(files.items()):
            suffix = Path(name).suffix
            ref = self.put(data, suffix)
            entries[name] = ref.model_dump()
        manifest = {"kind": MANIFEST_KIND, "files": entries, "metadata": dict(metadata)}
        return self.put(json.dumps(manifest, sort_keys=True, indent=1).encode(), ".manifest.json")

    def get_bundle(self, ref: ArtifactRef) -> tuple[dict[str, bytes], dict[str, Any]]:
        """Load and verify a bundle: returns (files by name, metadata)."""
        try:
            manifest = json.loads(self.get(ref))
            if manifest.get("kind") != MANIFEST_KIND:
                raise ArtifactError(f"{ref.path} is not a tradeloop bundle")
            files = {name: self.get(ArtifactRef(**entry)) for name, entry in manifest["files"].items()}
        except (ValueError, KeyError, TypeError) as error:
            raise ArtifactError(f"bundle {ref.path} malformed: {error}") from error
        return files, dict(manifest.get("metadata", {}))
