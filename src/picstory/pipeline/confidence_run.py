"""After training: calibrate the bundle on the validation split and choose its unknown threshold; at evaluation:
the calibration, unknown and risk–coverage figures of a split. The math is in evaluation/calibration.py and
evaluation/ood.py; this module only feeds them the run's images and writes model.json."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from ..evaluation import calibration as cal
from ..evaluation import ood
from ..evaluation.neighbours import training_features
from ..models.bundle import OOD_BANK_FILE, load_bundle, read_ood_bank, update_meta, write_ood_bank

CURVE_POINTS = 200  # risk–coverage points kept in eval.json


def calibrate_bundle(bundle: Path, val, train, device="cpu", seed: int = 0, progress: bool = True) -> dict:
    """Fit the temperature on ``val`` (a Split), store a feature bank of ``train`` and the unknown thresholds that
    accept ``ood.TARGET_ACCEPT`` of ``val``; returns the model.json fields it wrote."""
    model, meta = load_bundle(bundle, device=device)
    mean, std = meta["mean"], meta["std"]
    logits, feats = ood.logits_and_features(model, val.images, mean, std, device=device)
    labels = val.labels.numpy()
    record = cal.calibrate(logits, labels)
    fields: dict = {"calibration": record}
    if "skipped" in record and progress:
        print(f"calibration: {record['skipped']}", file=sys.stderr)
    if len(labels) < ood.MIN_THRESHOLD_IMAGES:  # a 95 % quantile of a handful of images is no threshold
        if progress:
            print(f"unknown: the validation split has {len(labels)} images (fewer than {ood.MIN_THRESHOLD_IMAGES});"
                  " no unknown threshold is stored", file=sys.stderr)
        update_meta(bundle, **fields, ood=None)  # and none left from an earlier calibration
        return fields
    t = record["temperature"]
    # the whole training split once, cached for the evaluation's neighbours and label-error scan that follow
    bank = ood.sample_bank(training_features(bundle.parent, model, meta, train, device)["features"], seed=seed)
    scores = ood.all_scores(logits, feats, bank, t)
    thresholds = {name: ood.threshold(s) for name, s in scores.items()}
    sha = write_ood_bank(bundle, bank)
    fields["ood"] = {"score": ood.DEFAULT_SCORE, "target_accept": ood.TARGET_ACCEPT, "k": ood.KNN_K,
                     "thresholds": thresholds, "higher_is": "more unusual",
                     "bank": {"file": OOD_BANK_FILE, "rows": int(len(bank)), "dim": int(bank.shape[1]),
                              "dtype": "float16", "sha256": sha, "from": "train split, seeded sample, L2-normalised"}}
    update_meta(bundle, **fields)
    if progress:
        b, a = record["before"], record.get("after")
        done = "" if a is None else (f"calibration: temperature {t:.3f}, validation ECE {b['ece']:.4f} → "
                                     f"{a['ece']:.4f}, NLL {b['nll']:.4f} → {a['nll']:.4f} ({len(labels)} images, "
                                     f"{cal.ECE_BINS} equal-width bins); ")
        print(f"{done}unknown: {ood.DEFAULT_SCORE} score above {thresholds[ood.DEFAULT_SCORE]:.4g} "
              f"(accepts {ood.TARGET_ACCEPT:.0%} of validation images)", file=sys.stderr)
    return fields


def split_confidence(model: torch.nn.Module, meta: dict, bundle: Path, images: torch.Tensor, labels: np.ndarray,
                     device="cpu", probs: np.ndarray | None = None) -> dict:
    """Calibration before / after, the unknown rate and accepted accuracy at the bundle's threshold, and the
    risk–coverage curve of one split. ``probs``: the calibrated (maybe TTA) probabilities, if already computed."""
    logits, feats = ood.logits_and_features(model, images, meta["mean"], meta["std"], device=device)
    t = cal.bundle_temperature(meta)
    raw = cal.softmax(logits)
    probs = cal.softmax(logits, t or 1.0) if probs is None else probs
    out: dict = {"ece": cal.ece(probs, labels), "nll": cal.nll(probs, labels), "brier": cal.brier(probs, labels),
                 "ece_bins": f"{cal.ECE_BINS} equal-width"}
    if t is None:
        out["calibration_note"] = "the bundle predates calibration: uncalibrated probabilities"
    else:
        out["temperature"] = t
        if (meta.get("calibration") or {}).get("skipped"):
            out["calibration_note"] = meta["calibration"]["skipped"]
    out["calibration"] = {"before": cal.calibration_metrics(raw, labels),
                          "after": cal.calibration_metrics(probs, labels),
                          "reliability_before": cal.reliability(raw, labels),
                          "reliability_after": cal.reliability(probs, labels)}
    correct = probs.argmax(1) == labels
    cov, acc = cal.risk_coverage(probs.max(1), correct)
    keep = np.unique(np.linspace(0, len(cov) - 1, min(CURVE_POINTS, len(cov))).round().astype(int))
    out["risk_coverage"] = {"coverage": cov[keep].round(5).tolist(), "accuracy": acc[keep].round(5).tolist(),
                            "accepted_accuracy": cal.accepted_accuracy(probs.max(1), correct)}
    rule = ood.Unknown(meta.get("ood"), read_ood_bank(bundle, meta), t or 1.0)
    scores = rule.scores(logits, feats, probs)
    if scores is not None:
        accepted = scores <= rule.thresholds[rule.score]
        out.update(unknown_score=rule.score, unknown_threshold=float(rule.thresholds[rule.score]),
                   unknown_rate=float(1 - accepted.mean()), coverage=float(accepted.mean()),
                   accepted_accuracy=float(correct[accepted].mean()) if accepted.any() else None)
    return out


__all__ = ["calibrate_bundle", "split_confidence"]
