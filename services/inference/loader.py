"""Versions prepared in a child process: the candle loop shares neither the GIL nor its CPU priority with a load.

A version's load (file reads, sha256, XGBoost's parser, the forest's check against the booster) in a worker
thread holds the GIL between its C calls, and every candle arriving meanwhile waited behind it. The loader
child (``python -m services.inference.loader_child``, at a lower CPU priority) does all of it: it loads the
bundle as :func:`shared.ml.predictor.load_predictor` does for serving (sha256 of every file, feature schema,
servable), checks the compiled forest bit for bit against the booster, and sends back only the forest's
arrays (safetensors) and the decision parameters. The service builds a forest-only
:class:`~shared.ml.xgboost_model.XGBoostPredictor` from them: the same numbers, no booster in process.

A version without a checked forest (a CNN, a forest that does not compile or disagrees) is reported as
``in_process`` and loaded in process as before. A refused artifact raises :class:`ArtifactError` with the
child's reason. A child that dies, hangs or answers nonsense is killed and restarted on the next request,
and this request is loaded in process: a loader problem never fails an activation that would load.

Protocol (no pickle): each message is one or two frames, a frame being a 4-byte big-endian length and its
bytes. Request: a JSON frame ``{"path", "sha256", "size", "schema_hash"}``. Answer: a JSON frame
``{"ok", "kind", ...}``; with ``kind == "forest"`` a second frame holds the forest file, whose sha256 the
header names.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import sys
from pathlib import Path
from typing import Any, BinaryIO

from prometheus_client import Counter

from shared.artifacts import sha256_bytes
from shared.errors import ArtifactError
from shared.messages import ArtifactRef
from shared.ml.predictor import Predictor

log = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")
MAX_FRAME = 1 << 30


def frame(data: bytes) -> bytes:
    """``data`` as one frame."""
    return _LENGTH.pack(len(data)) + data


def read_frame(stream: BinaryIO) -> bytes | None:
    """The next frame of a blocking stream; None at end of stream."""
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(head)
    if length > MAX_FRAME:
        raise ValueError(f"frame of {length} bytes")
    data = stream.read(length)
    if len(data) < length:
        return None
    return data


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > MAX_FRAME:
        raise ValueError(f"frame of {length} bytes")
    return await reader.readexactly(length)


def forest_predictor(header: dict[str, Any], forest_file: bytes) -> Predictor:
    """The forest-only predictor of a ``kind == "forest"`` answer (its forest's sha256 checked first)."""
    from shared.ml.xgboost_model import CompiledForest, XGBoostPredictor

    if sha256_bytes(forest_file) != header.get("forest_sha256"):
        raise ValueError("the loader's forest does not match its sha256")
    forest = CompiledForest.from_bytes(forest_file)
    if forest.n_features != int(header["n_features"]):
        raise ValueError("the loader's forest has another feature count")
    return XGBoostPredictor(booster=None, feature_schema_hash=str(header["feature_schema_hash"]),
                            n_features=int(header["n_features"]), threshold=float(header["threshold"]),
                            scale=float(header["scale"]), forest=forest)


LEFT_REASONS = ("not_prepared", "loader_failed", "unusable_answer")
"""Why a version is left to the service: no checked forest, the child failed or hung, its answer was unusable."""


class LoaderProcess:
    """The service's side of the loader child: one request at a time, restarted when it fails."""

    def __init__(self, artifact_root: Path, *, niceness: int = 10, timeout: float = 60.0,
                 in_process: Counter | None = None) -> None:
        self.artifact_root = artifact_root
        self.in_process = in_process
        """Counts the versions left to the service, by reason (:data:`LEFT_REASONS`)."""
        if in_process is not None:  # every reason's series exists from the start: increase() sees the first one
            for reason in LEFT_REASONS:
                in_process.labels(reason)
        self.niceness = niceness
        self.timeout = timeout
        self._process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.returncode is None else None

    async def start(self) -> None:
        """Start the child (idempotent); it imports its libraries before its first request."""
        if self._process is None or self._process.returncode is not None:
            if self._process is not None:
                self.restarts += 1
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "services.inference.loader_child", str(self.artifact_root), str(self.niceness),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)

    async def prepare(self, ref: ArtifactRef, schema_hash: str) -> Predictor | None:
        """A version prepared in the child, or None: load it in process (no checked forest, or the child failed).

        Raises :class:`ArtifactError` when the child refused the artifact (corrupt, wrong schema, unservable).
        """
        request = json.dumps({"path": ref.path, "sha256": ref.sha256, "size": ref.size,
                              "schema_hash": schema_hash}).encode()
        async with self._lock:
            try:
                async with asyncio.timeout(self.timeout):
                    await self.start()
                    process = self._process
                    assert process is not None and process.stdin is not None and process.stdout is not None
                    process.stdin.write(frame(request))
                    await process.stdin.drain()
                    header = json.loads(await _read_frame(process.stdout))
                    forest_file = await _read_frame(process.stdout) if header.get("kind") == "forest" else b""
            except (OSError, EOFError, ValueError, TimeoutError, asyncio.IncompleteReadError) as error:
                log.warning("the loader process failed (%r); loading %s in process", error, ref.path)
                await self._kill()
                return self._leave("loader_failed")
        if not header.get("ok"):
            raise ArtifactError(str(header.get("error") or "refused by the loader"))
        if header.get("kind") != "forest":
            return self._leave("not_prepared")
        try:
            return forest_predictor(header, forest_file)
        except (ValueError, KeyError, ArtifactError) as error:
            log.warning("the loader's answer for %s is unusable (%r); loading in process", ref.path, error)
            return self._leave("unusable_answer")

    def _leave(self, reason: str) -> Predictor | None:
        """Count a version left to the service; its answer (None: load it in process)."""
        if self.in_process is not None:
            self.in_process.labels(reason).inc()
        return None

    async def close(self, timeout: float = 5.0) -> None:
        """Let the child exit (end of its input), killing it after ``timeout``."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        if process.stdin is not None:
            with contextlib.suppress(Exception):
                process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            await self._kill()

    async def _kill(self) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
