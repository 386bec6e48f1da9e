"""A predictor's calibrated answer or "unknown": the bundle's out-of-distribution rule applied to a batch.

The scoring itself is evaluation/ood.py; here it meets a Predictor (torch model or exported session). The kNN
score needs penultimate features: the torch model and the ONNX export (its second output) have them; the other
exported forms (int8, OpenVINO, TorchScript) fall back to the max-softmax score with its own validation threshold,
and say so once.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch

from ..data.batches import normalize
from ..errors import ConfigError
from ..evaluation.calibration import softmax
from ..evaluation.ood import Unknown, parse_min_confidence
from ..models.bundle import read_ood_bank
from ..models.features import features_and_logits
from .export import FEATURES_NAME, INPUT_NAME, OUTPUT_NAME


def unknown_rule(predictor: Any) -> Unknown:
    """The bundle's rule, its feature bank loaded (checked against model.json) when the rule needs it."""
    meta = predictor.meta
    record = meta.get("ood")
    has_features = predictor.model is not None or _session_features(predictor)
    bank = None
    if record and record.get("score") == "knn" and has_features and predictor.bundle_dir is not None:
        bank = read_ood_bank(predictor.bundle_dir, meta)
    rule = Unknown(record, bank, predictor.temperature or 1.0, features_available=has_features)
    if record and rule.score != record.get("score"):
        print(f"note: the {predictor.backend} backend has no penultimate features; unknown inputs are found by "
              f"the {rule.score} score instead of {record.get('score')}", file=sys.stderr)
    return rule


def _session_features(predictor: Any) -> bool:
    """An ONNX Runtime session of an export that has the features output (exports since it was added)."""
    if predictor.backend != "onnx" or not hasattr(predictor.session, "get_outputs"):
        return False
    return FEATURES_NAME in [o.name for o in predictor.session.get_outputs()]


def _onnx_features(predictor: Any, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    arr = np.ascontiguousarray(x.cpu().float().numpy())
    fixed = not predictor.meta.get("exports", {}).get("onnx", {}).get("dynamic_batch", True)
    parts = [predictor.session.run([OUTPUT_NAME, FEATURES_NAME], {INPUT_NAME: arr[i:i + 1] if fixed else arr})
             for i in (range(len(arr)) if fixed else [0])]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def note_uncalibrated(predictor: Any) -> Any:
    """A bundle from before calibration still predicts, with its raw softmax; say so once, at load."""
    if predictor.temperature is None and not predictor.meta.get("pretrained") and not predictor.multilabel:
        print(f"note: {predictor.bundle_dir or predictor.source} has no calibration (made before picstory stored "
              "one): probabilities are uncalibrated softmax outputs and no unknown threshold applies; train again "
              "to get both", file=sys.stderr)
    return predictor


@torch.inference_mode()
def scored_predictions(predictor: Any, x_uint8: torch.Tensor, tta: str = "none",
                       min_confidence: Any = None) -> list[tuple[np.ndarray, dict]]:
    """(probabilities, verdict) per image of a uint8 batch already fitted to the model's size."""
    if getattr(predictor, "multilabel", False):  # labels at their own thresholds: no single answer to withhold
        if min_confidence:
            raise ConfigError("--min-confidence applies to single-label models; a multi-label model answers every "
                              "label at or above its tuned threshold (model.json 'thresholds')")
        return [(p, {}) for p in predictor.predict_proba(x_uint8, tta)]
    rule = predictor.unknown
    thresholds = parse_min_confidence(min_confidence, predictor.classes)
    logits = feats = None
    if predictor.model is None and rule.score == "knn":
        x = normalize(x_uint8, predictor._mean, predictor._std)
        probs, feats = _onnx_features(predictor, x)
        if tta != "none":
            probs = predictor.predict_proba(x_uint8, tta)
    elif predictor.model is not None and rule.score in ("knn", "energy"):
        x = normalize(x_uint8.to(predictor.device), predictor._mean, predictor._std)
        f, z = features_and_logits(predictor.model, x.contiguous(memory_format=torch.channels_last))
        logits, feats = z.cpu().numpy(), f.cpu().numpy()
        probs = softmax(logits, rule.temperature) if tta == "none" else predictor.predict_proba(x_uint8, tta)
    else:
        probs = predictor.predict_proba(x_uint8, tta)
    scores = rule.scores(logits, feats, probs)
    return list(zip(probs, rule.verdicts(probs, predictor.classes, scores, thresholds)))





def with_min_confidence(verdict: dict, probs: np.ndarray, classes: list[str], thresholds: dict[str, float]) -> dict:
    """A verdict with the user's minimum confidence applied on top of the bundle's rule (serve's query value)."""
    top = int(np.argmax(probs))
    need = thresholds.get(classes[top])
    if need is None or probs[top] >= need:
        return verdict
    reason = "; ".join(x for x in (verdict.get("unknown_reason"), f"confidence {probs[top]:.3f} < {need:g}") if x)
    return {**verdict, "label": None, "unknown": True, "unknown_reason": reason}


def batch_verdicts(predictor: Any, x_uint8: torch.Tensor) -> list[tuple[np.ndarray, dict]]:
    """What the server's inference thread computes per batch; a predictor without ``predict_scored`` (a test
    double, a custom object) answers with its probabilities and the plain top-1 label."""
    if hasattr(predictor, "predict_scored"):
        return predictor.predict_scored(x_uint8)
    probs = predictor.predict_proba(x_uint8)
    return [(p, {"label": predictor.classes[int(np.argmax(p))], "unknown": False}) for p in probs]
__all__ = ["unknown_rule", "note_uncalibrated", "scored_predictions", "parse_min_confidence", "with_min_confidence",
           "batch_verdicts"]
