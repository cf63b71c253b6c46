"""XGBoost regressor of % return, stored as UBJ (native, no pickle) with a JSON feature schema."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import safetensors.numpy
import xgboost as xgb

from shared.errors import ArtifactError
from shared.messages import Action, Family
from shared.ml.predictor import Decision, register_loader

MODEL_FILE = "model.ubj"
SCHEMA_FILE = "feature_schema.json"
FOREST_FILE = "forest.safetensors"
"""The trees compiled at training (:class:`CompiledForest` arrays); optional, verified against the booster at load."""

log = logging.getLogger(__name__)

MAX_COMPILED_DEPTH = 12
"""Deeper trees are not compiled (a padded tree holds 2**depth leaves): they predict through XGBoost."""
CHECK_ROWS = 256
"""Rows a compiled forest must predict bit for bit like XGBoost before it is used."""


def decide(scores: np.ndarray, *, threshold: float, scale: float) -> list[Decision]:
    """Map predicted returns to actions: BUY above ``threshold``, SELL below ``-threshold``, else HOLD.

    Confidence is ``|r| / (|r| + scale)`` where ``scale`` is the model's validation MAE: a prediction
    as large as the model's typical error gives 0.5. Computed on Python floats (float64, the same IEEE
    operations numpy would do): serving decides one or two rows a call, where numpy's per-call cost was
    most of the time.
    """
    floor = max(scale, 1e-12)
    decisions = []
    for score in np.asarray(scores, dtype=np.float64).reshape(-1).tolist():
        magnitude = abs(score)
        action = Action.BUY if score > threshold else Action.SELL if score < -threshold else Action.HOLD
        decisions.append(Decision(action=action, confidence=magnitude / (magnitude + floor), score=score))
    return decisions


def same_bits(predicted: np.ndarray, expected: Any) -> bool:
    """True when two float32 prediction vectors are equal bit for bit (NaNs included)."""
    left = np.asarray(predicted, dtype=np.float32).reshape(-1)
    right = np.asarray(expected, dtype=np.float32).reshape(-1)
    return left.shape == right.shape and bool(np.array_equal(left.view(np.uint32), right.view(np.uint32)))


class CompiledForest:
    """A gbtree regressor's trees as padded complete binary trees in numpy arrays, evaluated for all trees at once.

    XGBoost's ``inplace_predict`` costs ~200 µs per call whatever the row count (it builds a proxy matrix and
    a model view, walks every tree for its depth, parses a JSON config); serving predicts a few rows per call.
    This evaluator does what XGBoost's CPU predictor does — at each split ``value < condition`` goes left, a
    missing value (NaN) follows the default direction; the prediction is the base score plus each tree's
    leaf, added in tree order in float32 — as a handful of vectorised steps per tree level. Every tree is
    padded to the deepest one: a leaf above the bottom is repeated over all the bottom slots below it, so
    a row just walks ``depth`` levels (heap order: children of ``i`` at ``2i+1`` and ``2i+2``).

    :meth:`compile` returns None for what this does not model (other boosters or objectives, several targets
    or classes, categorical splits, very deep trees) and :meth:`agrees_with` checks a forest against the
    booster bit for bit. The trainer stores a forest that passes both in the bundle (:data:`FOREST_FILE`);
    :func:`load` uses it only after it agrees with the booster again.
    """

    def __init__(self, *, base: np.float32, depth: int, features: np.ndarray, conditions: np.ndarray,
                 default_left: np.ndarray, leaves: np.ndarray, n_features: int,
                 stored_check_rows: np.ndarray | None = None) -> None:
        trees = leaves.shape[0]
        self.stored_check_rows = stored_check_rows
        """The check rows made at training and kept in the file: verifying at load then costs two
        predict calls and no row construction (a loading thread competes with the serving loop)."""
        self.base = base
        self.depth = depth
        self.trees = trees
        self.n_features = n_features
        self._internal = (1 << depth) - 1
        self._features = features.reshape(-1)
        self._conditions = conditions.reshape(-1)
        self._flip_missing = ~default_left.reshape(-1)  # a missing value goes right where default_left is 0
        self._leaves = leaves.reshape(-1)
        self._tree_internal = (np.arange(trees, dtype=np.int64) * max(self._internal, 1))[None, :]
        self._tree_leaves = (np.arange(trees, dtype=np.int64) * (1 << depth))[None, :] - self._internal

    @classmethod
    def compile(cls, booster: xgb.Booster, n_features: int) -> CompiledForest | None:
        """The forest of ``booster`` (read from its JSON model document), or None when it is not a
        single-target gbtree regressor with numerical splits only. Done once, at training."""
        learner = json.loads(bytes(booster.save_raw("json")))["learner"]
        params = learner["learner_model_param"]
        gbm = learner["gradient_booster"]
        if (gbm.get("name") != "gbtree" or learner["objective"]["name"] != "reg:squarederror"
                or int(params.get("num_target", "1")) != 1 or int(params.get("num_class", "0")) > 1):
            return None
        base_text = str(params["base_score"]).strip("[]")
        if "," in base_text:
            return None
        trees = gbm["model"]["trees"]
        if np.any(np.asarray(gbm["model"].get("tree_info", []), dtype=np.int64) != 0):
            return None
        lefts = [np.asarray(tree["left_children"], dtype=np.int64) for tree in trees]
        rights = [np.asarray(tree["right_children"], dtype=np.int64) for tree in trees]
        if any(np.any(np.asarray(tree["split_type"]) != 0) or len(tree.get("categories", ())) for tree in trees):
            return None
        layouts = [_layout(left, right) for left, right in zip(lefts, rights, strict=True)]
        depth = max((int(level.max()) for level, _heap in layouts), default=0)
        if depth > MAX_COMPILED_DEPTH:
            return None
        internal = max((1 << depth) - 1, 1)
        features = np.zeros((len(trees), internal), dtype=np.int64)
        conditions = np.zeros((len(trees), internal), dtype=np.float32)
        default_left = np.zeros((len(trees), internal), dtype=bool)
        leaves = np.zeros((len(trees), 1 << depth), dtype=np.float32)
        for index, tree in enumerate(trees):
            left = lefts[index]
            level, heap = layouts[index]
            split = (left != -1) & (level >= 0)
            values = np.asarray(tree["split_conditions"], dtype=np.float32)
            features[index, heap[split]] = np.asarray(tree["split_indices"], dtype=np.int64)[split]
            conditions[index, heap[split]] = values[split]
            default_left[index, heap[split]] = np.asarray(tree["default_left"], dtype=np.int64)[split] != 0
            for node in np.flatnonzero((left == -1) & (level >= 0)):  # a leaf: its value in every bottom slot below its heap position
                span = 1 << (depth - int(level[node]))
                first = (int(heap[node]) + 1) * span - 1 - ((1 << depth) - 1)
                leaves[index, first : first + span] = values[node]
        if features.size and int(features.max()) >= n_features:
            return None
        return cls(base=np.float32(float(base_text)), depth=depth, features=features, conditions=conditions,
                   default_left=default_left, leaves=leaves, n_features=n_features)

    def to_bytes(self) -> bytes:
        """The forest as safetensors (numpy arrays only, no pickle): what :data:`FOREST_FILE` holds."""
        trees = self.trees
        return bytes(safetensors.numpy.save({
            "base": np.array([self.base], dtype=np.float32),
            "depth": np.array([self.depth], dtype=np.int64),
            "n_features": np.array([self.n_features], dtype=np.int64),
            "features": self._features.reshape(trees, -1),
            "conditions": self._conditions.reshape(trees, -1),
            "default_left": ~self._flip_missing.reshape(trees, -1),
            "leaves": self._leaves.reshape(trees, -1),
            "check_rows": self.check_rows() if self.stored_check_rows is None else self.stored_check_rows,
        }))

    @classmethod
    def from_bytes(cls, data: bytes) -> CompiledForest:
        """Read :meth:`to_bytes`' output; raise :class:`ArtifactError` when it is not a consistent forest."""
        try:
            arrays = safetensors.numpy.load(data)
            depth = int(arrays["depth"][0])
            features, leaves = arrays["features"].astype(np.int64), arrays["leaves"].astype(np.float32)
            forest = cls(base=np.float32(arrays["base"][0]), depth=depth, features=features,
                         conditions=arrays["conditions"].astype(np.float32),
                         default_left=arrays["default_left"].astype(bool), leaves=leaves,
                         n_features=int(arrays["n_features"][0]),
                         stored_check_rows=arrays["check_rows"].astype(np.float32))
        except Exception as error:
            raise ArtifactError(f"forest file unusable: {error!r}") from error
        internal = max((1 << depth) - 1, 1)
        if (not 0 <= depth <= MAX_COMPILED_DEPTH or features.shape[1:] != (internal,)
                or leaves.shape != (features.shape[0], 1 << depth)
                or (features.size and not 0 <= int(features.min()) <= int(features.max()) < forest.n_features)
                or forest.stored_check_rows is None or forest.stored_check_rows.ndim != 2
                or forest.stored_check_rows.shape[1] != forest.n_features):
            raise ArtifactError("forest file is inconsistent")
        return forest

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """float32 predictions of float32 ``rows`` [n, n_features] (XGBoost's numbers)."""
        rows = np.ascontiguousarray(rows, dtype=np.float32).reshape(-1, self.n_features)
        count = rows.shape[0]
        flat = rows.reshape(-1)
        offsets = np.arange(count, dtype=np.int64)[:, None] * self.n_features
        missing = bool(np.isnan(flat).any())
        heap = np.zeros((count, self.trees), dtype=np.int64)
        for _level in range(self.depth):
            node = heap + self._tree_internal
            values = flat[offsets + self._features[node]]
            right = ~(values < self._conditions[node])  # NaN compares False: right, unless default_left
            if missing:
                right = np.where(np.isnan(values), self._flip_missing[node], right)
            heap = 2 * heap + 1 + right
        terms = np.empty((count, self.trees + 1), dtype=np.float32)
        terms[:, 0] = self.base
        terms[:, 1:] = self._leaves[heap + self._tree_leaves]
        return np.add.accumulate(terms, axis=1, dtype=np.float32)[:, -1]  # type: ignore[no-any-return]

    def agrees_with(self, booster: xgb.Booster, rows: np.ndarray) -> bool:
        """True when this forest predicts ``rows`` with exactly XGBoost's bits."""
        return same_bits(self.predict(rows), booster.inplace_predict(np.ascontiguousarray(rows, dtype=np.float32)))

    def check_rows(self, count: int = CHECK_ROWS, seed: int = 0) -> np.ndarray:
        """Rows that reach every side of the splits: values at, just below and just above each feature's
        split conditions, plus NaN, ±inf, zeros and normal noise."""
        rng = np.random.default_rng(seed)
        rows = rng.normal(size=(count, self.n_features)).astype(np.float32)
        internal = self._features.reshape(self.trees, -1)
        conditions = self._conditions.reshape(self.trees, -1)
        for feature in range(self.n_features):
            used = np.unique(conditions[internal == feature])
            if used.size == 0:
                continue
            candidates = np.concatenate([used, np.nextafter(used, np.float32(-np.inf)),
                                         np.nextafter(used, np.float32(np.inf))]).astype(np.float32)
            pick = rng.random(count) < 0.8
            rows[pick, feature] = rng.choice(candidates, size=int(pick.sum()))
        special = np.array([np.nan, np.inf, -np.inf, 0.0], dtype=np.float32)
        mask = rng.random(rows.shape) < 0.05
        rows[mask] = rng.choice(special, size=int(mask.sum()))
        return rows


def _layout(left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each reachable node's depth (root 0) and position in a complete binary tree laid out as a heap
    (children of i at 2i+1 and 2i+2); unreachable (deleted) nodes get level -1."""
    level = np.full(left.shape[0], -1, dtype=np.int64)
    heap = np.zeros(left.shape[0], dtype=np.int64)
    level[0] = 0
    stack = [0]
    while stack:
        node = stack.pop()
        child = int(left[node])
        if child != -1:
            other = int(right[node])
            level[child] = level[other] = level[node] + 1
            heap[child], heap[other] = 2 * heap[node] + 1, 2 * heap[node] + 2
            stack += [child, other]
    return level, heap


@dataclass
class XGBoostPredictor:
    """A loaded booster; single-threaded predict (OpenMP spin-up dominates small batches).

    ``forest`` (the bundle's compiled forest, once :meth:`verify_forest` found it predicts like the booster)
    predicts instead of the booster: the same numbers without XGBoost's per-call overhead. Until then, and
    for a bundle without a forest, the booster predicts. Inference checks the forest before it swaps a
    version in, in steps between candles (:meth:`pending_forest`, :meth:`settle_forest`).
    """

    booster: xgb.Booster | None
    """None for a version prepared by another process (inference's loader), which checked the forest there."""
    feature_schema_hash: str
    n_features: int
    threshold: float
    scale: float
    family: Family = Family.XGBOOST
    forest: CompiledForest | None = field(default=None, repr=False)
    candidate: CompiledForest | None = field(default=None, repr=False)
    """The bundle's forest, read but not yet verified."""

    def verify_forest(self) -> bool:
        """Check the bundle's forest against the booster on its check rows (a few ms, blocking); use it from
        now on when it agrees bit for bit. Return whether predictions go through the forest."""
        pending = self.pending_forest()
        if pending is not None and self.booster is not None:
            forest, rows = pending
            self.settle_forest(forest, forest.agrees_with(self.booster, rows))
        return self.forest is not None

    def pending_forest(self) -> tuple[CompiledForest, np.ndarray] | None:
        """The bundle's forest still to check and its check rows (float32, contiguous); None: nothing to check.

        The check is: the forest's predictions of the rows (any split into row chunks: rows are independent)
        have exactly the bits of ``booster.inplace_predict(rows)``; report it with :meth:`settle_forest`.
        """
        candidate = self.candidate
        if candidate is None or self.booster is None:
            return None
        rows = candidate.stored_check_rows if candidate.stored_check_rows is not None else candidate.check_rows()
        return candidate, np.ascontiguousarray(rows, dtype=np.float32)

    def settle_forest(self, forest: CompiledForest, agrees: bool) -> bool:
        """Use ``forest`` (from :meth:`pending_forest`) from now on if it agreed with the booster; return
        whether predictions go through a forest."""
        if self.candidate is forest:
            self.candidate = None
        if agrees and forest.n_features == self.n_features:
            self.forest = forest
        else:
            log.warning("the bundle's compiled forest disagrees with its booster; predicting through XGBoost")
        return self.forest is not None

    def scores(self, features: np.ndarray) -> np.ndarray:
        """The model's raw predictions (float32 as XGBoost returns them) for rows [n, n_features]."""
        rows = np.ascontiguousarray(features, dtype=np.float32).reshape(-1, self.n_features)
        if self.forest is not None:
            return self.forest.predict(rows)
        if self.booster is None:
            raise ArtifactError("this predictor has neither a checked forest nor a booster")
        return np.asarray(self.booster.inplace_predict(rows)).reshape(-1)

    def predict(self, features: np.ndarray) -> list[Decision]:
        scores = np.asarray(self.scores(features), dtype=np.float64).reshape(-1)
        return decide(scores, threshold=self.threshold, scale=self.scale)


def compile_verified(booster: xgb.Booster, n_features: int) -> CompiledForest | None:
    """A :class:`CompiledForest` of ``booster`` that predicts its check rows bit for bit like it, else None."""
    try:
        forest = CompiledForest.compile(booster, n_features)
        if forest is None:
            return None
        if not forest.agrees_with(booster, forest.check_rows()):
            log.warning("compiled forest disagrees with XGBoost; predicting through XGBoost")
            return None
        return forest
    except Exception:  # a model layout this does not know: XGBoost still predicts it
        log.warning("could not compile the forest; predicting through XGBoost", exc_info=True)
        return None


def load(files: dict[str, bytes], metadata: dict[str, Any]) -> XGBoostPredictor:
    """Build a predictor from a verified bundle."""
    try:
        schema = json.loads(files[SCHEMA_FILE])
        booster = xgb.Booster()
        booster.load_model(bytearray(files[MODEL_FILE]))
    except (KeyError, ValueError, xgb.core.XGBoostError) as error:
        raise ArtifactError(f"xgboost bundle unusable: {error}") from error
    booster.set_param({"nthread": 1})
    n_features = len(schema["schema"]["names"])
    if booster.num_features() != n_features:
        raise ArtifactError(f"model expects {booster.num_features()} features, schema names {n_features}")
    return XGBoostPredictor(
        booster=booster,
        feature_schema_hash=str(schema["hash"]),
        n_features=n_features,
        threshold=float(metadata.get("decision_threshold", 0.001)),
        scale=float(metadata.get("confidence_scale", 0.01)),
        candidate=CompiledForest.from_bytes(files[FOREST_FILE]) if FOREST_FILE in files else None,
    )


def bundle_files(booster: xgb.Booster, schema_document: dict[str, Any], n_features: int) -> dict[str, bytes]:
    """The files of an XGBoost bundle: the UBJ model, the feature schema and, when the trees compile and
    agree with the booster, the compiled forest."""
    files = {MODEL_FILE: bytes(booster.save_raw("ubj")),
             SCHEMA_FILE: json.dumps(schema_document, sort_keys=True).encode()}
    forest = compile_verified(booster, n_features)
    if forest is not None:
        files[FOREST_FILE] = forest.to_bytes()
    return files


register_loader(Family.XGBOOST, load)
