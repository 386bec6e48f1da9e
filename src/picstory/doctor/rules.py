"""The diagnosis rules: each a small function over the loaded run that returns a Finding or None."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Callable, Mapping

from .findings import (
    BIGGER_MODEL,
    PRETRAINED,
    Finding,
    _accuracy,
    _col,
    _finite,
    _lower_lr_steps,
    _pct,
    _peak_lr,
    _recalls,
    _run_path,
    _train_counts,
    baselines,
    cfg_value,
    data_spec,
    plural,
    run_classes,
    run_confusion,
    train_cmd,
)


def check_diverged(run: Mapping) -> Finding | None:
    rows, reason = run.get("metrics") or [], str((run.get("summary") or {}).get("stop_reason") or "")
    bad = [r for r in rows if not _finite([r.get("train_loss") or 0.0, r.get("val_loss") or 0.0])]
    if not reason.lower().startswith("nan") and not bad:
        return None
    m = re.search(r"epoch (\d+)", reason)
    epoch = int(m.group(1)) if m else int(bad[0].get("epoch") or 0)
    return Finding(
        "diverged", "problem", f"Training diverged: the loss became NaN at epoch {epoch}",
        f"The loss became NaN (not a number) at epoch {epoch}, so the weights are garbage from there on. This "
        "almost always means the learning rate is too high for this model and batch size.",
        _lower_lr_steps(run, 10), {"epoch": epoch, "gain": 1.0})


def check_spikes(run: Mapping, jump: float = 0.5) -> Finding | None:
    """Val loss jumping by more than ``jump`` (a fraction) from one epoch to the next, or train loss by half that."""
    rows = run.get("metrics") or []
    spikes = []
    for prev, cur in zip(rows, rows[1:]):
        for key, limit in (("val_loss", jump), ("train_loss", jump / 2)):
            a, b = prev.get(key), cur.get(key)
            if a and b and _finite([a, b]) and b > a * (1 + limit) and b - a > 0.1:
                spikes.append((b / a - 1, key, a, b, int(prev["epoch"]), int(cur["epoch"])))
    if not spikes or check_diverged(run):
        return None
    rise, key, a, b, e0, e1 = max(spikes)
    what = "Validation" if key == "val_loss" else "Training"
    more = f" It happened {len(spikes)} times in this run." if len(spikes) > 1 else ""
    return Finding(
        "unstable", "problem" if len(spikes) > 1 else "warning", f"Unstable training: loss spikes (epoch {e1})",
        f"{what} loss jumped from {a:.2f} at epoch {e0} to {b:.2f} at epoch {e1} (+{100 * rise:.0f}%).{more} "
        "Steps that are too large knock the model out of a good region; a lower learning rate or a warmup "
        "makes training steadier.", _lower_lr_steps(run, 3), {"epoch": e1, "rise": rise, "count": len(spikes)})


def check_lr_too_high(run: Mapping, factor: float = 3.0) -> Finding | None:
    suggested, used = (run.get("lr_find") or {}).get("suggested_lr"), _peak_lr(run)
    if not suggested or not used or used <= factor * suggested:
        return None
    return Finding(
        "lr_too_high", "warning", "The learning rate is higher than the LR finder suggests",
        f"The peak learning rate {used:.2g} is {used / suggested:.0f}× the LR finder's suggestion "
        f"({suggested:.2g}); the loss is likely to be noisy or stuck.",
        [train_cmd(run, f"--lr {suggested:.2g}")], {"used": used, "suggested": suggested})


def check_underfitting(run: Mapping) -> Finding | None:
    rows, s = run.get("metrics") or [], run.get("summary") or {}
    vl, ta, va = _col(rows, "val_loss"), _col(rows, "train_acc"), _col(rows, "val_acc")
    if len(rows) < 2 or not _finite(vl + ta + va):
        return None
    best = vl.index(min(vl))
    stopped_by_limit = str(s.get("stop_reason") or "max epochs").startswith("max epochs")
    # ≥ 5 % over the last three epochs: a one-cycle schedule's annealing tail gives a percent or two for free
    w = min(4, len(rows))
    improving = len(rows) >= 3 and best >= len(rows) - 2 and stopped_by_limit and (vl[-w] - vl[-1]) / vl[-w] >= 0.05
    low_fit = ta[-1] < 0.9 and ta[-1] - va[-1] < 0.05
    if not (improving or low_fit):
        return None
    text, e = [], [int(r["epoch"]) for r in rows]
    if low_fit:
        text.append(f"Even on its training images the model reaches only {_pct(ta[-1])} accuracy (validation "
                    f"{_pct(va[-1])}): it is too small or trained too briefly to fit the data.")
    if improving:
        text.append(f"Validation loss was still falling when training hit the epoch limit ({vl[-w]:.2f} at "
                    f"epoch {e[-w]} → {vl[-1]:.2f} at epoch {e[-1]}): more epochs will likely help.")
    epochs = int(s.get("epochs_run") or len(rows))
    steps = [train_cmd(run, f"--epochs {2 * epochs}")]
    lr = _peak_lr(run)
    if low_fit and lr:
        steps.append(train_cmd(run, f"--lr {3 * lr:.2g}"))
    model = str(s.get("model") or cfg_value(run, "model", "model") or "")
    if low_fit:
        steps.append(train_cmd(run, f"--model {BIGGER_MODEL.get(model, PRETRAINED)}", same_recipe=False))
    return Finding("underfitting", "problem" if low_fit else "warning",
                   "Underfitting: the model has not learned all it can" if low_fit else "Still learning when stopped",
                   " ".join(text), steps, {"gain": 1 - ta[-1] if low_fit else 0.5 * (1 - va[-1])})


def check_overfitting(run: Mapping, rise_limit: float = 0.10, gap_limit: float = 0.08) -> Finding | None:
    rows = run.get("metrics") or []
    vl, tl = _col(rows, "val_loss"), _col(rows, "train_loss")
    ta, va = _col(rows, "train_acc"), _col(rows, "val_acc")
    if len(rows) < 4 or not _finite(vl + tl):
        return None
    b = vl.index(min(vl))
    e = [int(r["epoch"]) for r in rows]
    rise = (vl[-1] - vl[b]) / vl[b] if vl[b] > 0 else 0.0
    loss_flag = len(rows) - b >= 3 and rise >= rise_limit and tl[-1] < tl[b]
    gap_b, gap = ta[b] - va[b], ta[-1] - va[-1]
    gap_flag = _finite([gap, gap_b]) and gap >= gap_limit and gap - gap_b >= gap_limit / 2
    if not (loss_flag or gap_flag):
        return None
    text = []
    if loss_flag:
        text.append(f"Validation loss rose from {vl[b]:.2f} at epoch {e[b]} to {vl[-1]:.2f} at epoch {e[-1]} "
                    f"(+{100 * rise:.0f}%) while training loss kept falling ({tl[b]:.2f} → {tl[-1]:.2f}): the "
                    "model memorises the training images instead of learning what generalises.")
    if _finite([gap, gap_b]) and gap > 0:
        text.append(f"Training accuracy is {_pct(ta[-1])} against {_pct(va[-1])} on validation, a gap of "
                    f"{100 * gap:.1f} points ({100 * gap_b:.1f} at epoch {e[b]}).")
    text.append("More training images help most; otherwise regularise:")
    severe = rise >= 0.25 or gap >= 0.15
    return Finding("overfitting", "problem" if severe else "warning", f"Overfitting since epoch {e[b]}",
                   " ".join(text), _overfit_steps(run, e[b]),
                   {"since_epoch": e[b], "val_loss_best": vl[b], "val_loss_last": vl[-1], "gap": gap,
                    "gain": max(gap, 0.0)})


def _overfit_steps(run: Mapping, best_epoch: int) -> list[str]:
    size = int((run.get("summary") or {}).get("img_size") or cfg_value(run, "data", "img_size", 0) or 0)
    aug = [f"--translate {max(0.15, float(cfg_value(run, 'augment', 'translate', 0) or 0)):g}"]
    if float(cfg_value(run, "augment", "erase", 0) or 0) < 0.25:
        aug.append("--erase 0.25")
    if size >= 96 and not cfg_value(run, "augment", "rrc_scale", 0):
        aug.append("--rrc-scale 0.35")  # random-resized-crop suits photos, not centred digits or icons
    reg = [f"--weight-decay {max(0.1, 2 * float(cfg_value(run, 'train', 'weight_decay', 0.05) or 0)):g}"]
    if float(cfg_value(run, "train", "label_smoothing", 0) or 0) < 0.1:
        reg.append("--label-smoothing 0.1")
    if not cfg_value(run, "model", "drop_rate", 0):
        reg.append("--drop-rate 0.2")
    steps = [train_cmd(run, *aug), train_cmd(run, *reg)]
    patience = int(cfg_value(run, "train", "patience", 5) or 0)
    if patience == 0 or patience > 3:
        steps.append(train_cmd(run, "--patience 3", f"--epochs {best_epoch + 3}"))
    model = str((run.get("summary") or {}).get("model") or cfg_value(run, "model", "model") or "")
    if model != PRETRAINED and size >= 64:
        steps.append(train_cmd(run, f"--model {PRETRAINED}", same_recipe=False))
    return steps


# ---------------------------------------------------------------- rules: classes and data


def check_leaks(run: Mapping) -> Finding | None:
    leaks = (run.get("data") or {}).get("leaks") or []
    into_test = [lk for lk in leaks if "test" in lk.get("splits", []) and len(set(lk.get("splits", []))) > 1]
    if not leaks:
        return None
    acc, split = _accuracy(run)
    n = len(into_test) or len(leaks)
    where = "the test split and another split" if into_test else "more than one split"
    example = " and ".join(repr(p) for p in (into_test or leaks)[0].get("paths", [])[:2])
    inflated = f": the {split} accuracy of {_pct(acc)} is inflated" if into_test and acc is not None else ""
    return Finding(
        "leak", "problem" if into_test else "warning", f"{plural(n, 'identical image')} shared between splits",
        f"Identical copies of {plural(n, 'image')} sit in {where} (e.g. {example}){inflated}, because the model "
        "is scored on images it was trained on. Remove one copy of each and train again.",
        [f"picstory data check {shlex.quote(data_spec(run))}", train_cmd(run)], {"count": n, "gain": 0.0})


def check_imbalance(run: Mapping, ratio_limit: float = 3.0, recall_gap: float = 0.1) -> Finding | None:
    counts, recalls = _train_counts(run), _recalls(run)
    if len(counts) < 2 or not recalls or min(counts.values()) <= 0:
        return None
    top = max(counts.values())
    ratio = top / min(counts.values())
    rare = [c for c in counts if counts[c] * ratio_limit <= top and c in recalls]
    common = [recalls[c] for c in recalls if c not in rare]
    if ratio < ratio_limit or not rare or not common:
        return None
    avg = sum(common) / len(common)
    weak = sorted((c for c in rare if recalls[c] < avg - recall_gap), key=lambda c: recalls[c])
    if not weak:
        return None
    c, big = weak[0], max(counts, key=counts.get)
    others = f" ({plural(len(weak) - 1, 'more rare class')} also weak)" if len(weak) > 1 else ""
    steps = [] if cfg_value(run, "train", "class_weights") == "auto" else [train_cmd(run, "--class-weights auto")]
    if not cfg_value(run, "train", "balanced_sampling"):
        steps.append(train_cmd(run, "--balanced-sampling"))
    steps.append(f"Collect more images of {', '.join(repr(w) for w in weak[:5])}.")
    gap = avg - recalls[c]
    return Finding(
        "imbalance", "problem" if gap >= 0.2 else "warning", f"Rare class {c!r} is poorly recognised",
        f"The training set is imbalanced ({ratio:.0f}:1): {c!r} has {counts[c]} images against {top} for "
        f"{big!r}, and its recall is {recalls[c]:.2f} against {avg:.2f} for the common classes{others}: the "
        "model learns to favour the common classes.", steps,
        {"ratio": ratio, "classes": weak, "gain": gap * counts[c] / sum(counts.values())})


def check_near_baseline(run: Mapping, share: float = 0.25) -> Finding | None:
    """Accuracy that closes less than ``share`` of the gap between always answering the majority class and 100 %
    (a problem below half of that): on imbalanced data a high accuracy can be nearly nothing learnt."""
    acc, split = _accuracy(run)
    b = baselines(run)
    if acc is None or not b or b["majority_baseline"] >= 1.0:
        return None
    base, balanced = b["majority_baseline"], b["balanced_accuracy"]
    gain = acc - base
    if gain > share * (1 - base):
        return None
    steps = [] if cfg_value(run, "train", "class_weights") == "auto" else [train_cmd(run, "--class-weights auto")]
    steps += [train_cmd(run, f"--epochs {2 * int((run.get('summary') or {}).get('epochs_run') or 10)}"),
              f"picstory data check {shlex.quote(data_spec(run))}"]
    return Finding(
        "near_baseline", "problem" if gain <= share / 2 * (1 - base) else "warning",
        "Accuracy is barely above the majority baseline",
        f"{split.capitalize()} accuracy {_pct(acc)} against {_pct(base)} for always answering "
        f"{b['majority_class']!r} (the majority-class baseline on the {b['where']}); balanced accuracy, the mean "
        f"recall over classes, is {_pct(balanced)}. The model has learnt little beyond the class frequencies.",
        steps, {"accuracy": acc, "majority_baseline": base, "balanced_accuracy": balanced,
                "gain": max(0.0, (1 - base) * share - gain)})


def check_weak_classes(run: Mapping, target: float | None) -> Finding | None:
    recalls = _recalls(run)
    weak = sorted((c for c in recalls if recalls[c] < target), key=lambda c: recalls[c]) if target else []
    if not weak:
        return None
    listed = ", ".join(f"{c!r} {recalls[c]:.2f}" for c in weak[:6]) + (" …" if len(weak) > 6 else "")
    steps = [f"Collect more (and more varied) images of {', '.join(repr(c) for c in weak[:5])}."]
    if cfg_value(run, "train", "class_weights") != "auto":
        steps.insert(0, train_cmd(run, "--class-weights auto"))
    return Finding("weak_classes", "problem", f"{plural(len(weak), 'class')} below the recall target {target:.2f}",
                   f"Recall (the share of a class's images the model finds) is below {target:.2f} for: {listed}.",
                   steps, {"classes": weak, "gain": target - recalls[weak[0]]})


def _catch_all(cm: list[list[float]], limit: float = 0.5) -> tuple[int, float] | None:
    """The predicted class that absorbs at least ``limit`` of all errors, and its share."""
    k = len(cm)
    errors = sum(cm[i][j] for i in range(k) for j in range(k) if i != j)
    wrong_as = [sum(cm[i][j] for i in range(k) if i != j) for j in range(k)]
    j = max(range(k), key=wrong_as.__getitem__) if k else 0
    return (j, wrong_as[j] / errors) if k >= 3 and errors >= 5 and wrong_as[j] >= limit * errors else None


def check_catch_all(run: Mapping) -> Finding | None:
    cm, where = run_confusion(run)
    classes = run_classes(run)
    found = _catch_all(cm) if len(classes) == len(cm) else None
    if not found:
        return None
    j, share = found
    c = classes[j]
    steps = [train_cmd(run, f"--epochs {2 * int((run.get('summary') or {}).get('epochs_run') or 10)}")]
    if cfg_value(run, "train", "class_weights") != "auto":
        steps.append(train_cmd(run, "--class-weights auto"))
    return Finding(
        "catch_all", "warning", f"The model answers {c!r} when unsure",
        f"{100 * share:.0f}% of the errors on the {where} are wrong predictions of {c!r}: the model falls back on "
        f"{c!r} instead of telling the classes apart, typical of a model that is undertrained or trained on data "
        f"where {c!r} is common.", steps, {"class": c, "share": share, "gain": share * 0.5})


def check_confused_pairs(run: Mapping) -> Finding | None:
    cm, where = run_confusion(run)
    classes, k = run_classes(run), len(cm)
    if k < 3 or len(classes) != k:
        return None
    errors = sum(cm[i][j] for i in range(k) for j in range(k) if i != j)
    sink = _catch_all(cm)
    pairs = sorted(((cm[i][j] + cm[j][i], i, j) for i in range(k) for j in range(i + 1, k)), reverse=True)
    total = sum(map(sum, cm))
    if errors < 8 or pairs[0][0] < 3 or pairs[0][0] / errors < max(0.15, 2 / len(pairs)):
        return None  # too few errors, or spread evenly: no pair stands out
    n, i, j = pairs[0]
    if sink and sink[0] in (i, j):
        return None  # a symptom of the catch-all class, reported by check_catch_all
    share = n / errors
    a, b = classes[i], classes[j]
    more = [f"{classes[q]!r}/{classes[r]!r} ({100 * m / errors:.0f}%)" for m, q, r in pairs[1:3] if m]
    text = (f"{a!r} and {b!r} are confused {plural(n, 'time')}: {100 * share:.0f}% of all {errors:g} errors on the "
            f"{where} ({_taken(cm, classes, i, j)}).")
    text += f" Next most confused: {', '.join(more)}." if more else ""
    steps = [f"Look at the mistakes gallery in {Path(str(run.get('dir') or 'RUN')) / 'report.html'}, then add "
             f"more (and more varied) training images of {a!r} and {b!r}."]
    size = int((run.get("summary") or {}).get("img_size") or 0)
    native = (run.get("data") or {}).get("kind") in ("builtin", "idx")  # fixed small images: no detail to gain
    if 0 < size < 160 and not native:
        steps.insert(0, train_cmd(run, f"--img-size {2 * size}"))  # fine details need pixels
    severe = share >= 0.25 and errors / max(total, 1) >= 0.02
    return Finding("confused_pair", "warning" if severe else "info", f"{a!r} and {b!r} are often confused",
                   text, steps, {"pair": [a, b], "share": share, "count": n, "gain": n / max(total, 1)})


def _taken(cm: list[list[float]], classes: list[str], i: int, j: int) -> str:
    """"12 'dog' taken for 'cat', 3 the other way round", the larger direction first."""
    if cm[j][i] > cm[i][j]:
        i, j = j, i
    back = f", {cm[j][i]:g} the other way round" if cm[j][i] else ", never the other way round"
    return f"{cm[i][j]:g} {classes[i]!r} taken for {classes[j]!r}{back}"


def check_mislabelled(run: Mapping, trusted_accuracy: float = 0.8) -> Finding | None:
    if (run.get("label_issues") or {}).get("rows"):
        return _confident_learning_finding(run)
    suspects = (run.get("eval") or {}).get("suspects") or []
    if not suspects:
        return None
    s0, n = suspects[0], plural(len(suspects), "training image")
    acc, _ = _accuracy(run)
    # a weak model disagrees with many correct labels: then the list is mostly the model's own mistakes
    weak = acc is not None and acc < trusted_accuracy
    caveat = (f" With {_pct(acc)} accuracy the model is still weak, so many of these may be its own mistakes "
              "rather than wrong labels." if weak else " Wrong labels teach the model wrong things.")
    return Finding(
        "mislabelled", "warning" if len(suspects) >= 5 and not weak else "info", f"{n} probably mislabelled",
        f"The model confidently puts {n} in another class than their label, e.g. {s0.get('path', '?')!r} is "
        f"labelled {s0.get('label')!r} but looks like {s0.get('pred')!r} "
        f"({_pct(float(s0.get('confidence') or 0))}).{caveat}",
        [f"picstory doctor {_run_path(run)} --export-relabel relabel",
         "Check the copies in relabel/<label>/ by eye, fix the wrong labels in your data folder, train again."],
        {"count": len(suspects)})


def _confident_learning_finding(run: Mapping) -> Finding:
    """Out-of-fold probabilities exist: confident learning's estimate replaces the top-loss list."""
    found = run["label_issues"]
    count, n, r0 = found["count"], found["n"], found["rows"][0]
    acc, _ = _accuracy(run)
    weak = acc is not None and acc < 0.8
    share = count / max(n, 1)
    return Finding(
        "mislabelled", "warning" if share >= 0.01 and not weak else "info",
        f"{plural(count, 'training image')} probably mislabelled ({_pct(share)})",
        f"Confident learning on the out-of-fold probabilities of the cross-validation flags {count} of {n} training "
        f"images, e.g. {r0['path']!r} is labelled {r0['label']!r} but looks like {r0['suggested']!r} "
        f"(p = {r0['p_suggested']:.2f}, p(label) = {r0['self_confidence']:.2f}). Each was judged by a model that "
        "never trained on it, so the list is not the model's memory of its own labels."
        + (f" With {_pct(acc)} accuracy the models are still weak: many of these may be their mistakes." if weak
           else ""),
        [f"picstory data issues {_run_path(run)} --export-relabel relabel",
         "Check the copies in relabel/<label>/ by eye, fix the wrong labels in your data, train again."],
        {"count": count, "share": share})


def check_few_images(run: Mapping, minimum: int = 20) -> Finding | None:
    counts = _train_counts(run)
    few = sorted((c for c in counts if counts[c] < minimum), key=counts.get)
    if not few:
        return None
    listed = ", ".join(f"{c!r} ({counts[c]})" for c in few[:6]) + (" …" if len(few) > 6 else "")
    steps = [f"Collect at least {minimum} (better 100) images of each of these classes."]
    if str((run.get("summary") or {}).get("model") or "") != PRETRAINED:
        # pretrained features need far fewer examples per class
        steps.insert(0, train_cmd(run, f"--model {PRETRAINED}", same_recipe=False))
    return Finding("few_images", "warning" if counts[few[0]] < minimum / 2 else "info",
                   f"{plural(len(few), 'class')} with fewer than {minimum} training images",
                   f"Few examples per class make the model guess: {listed}.", steps, {"classes": few})


def check_bad_files(run: Mapping) -> Finding | None:
    bad = (run.get("data") or {}).get("bad_files") or []
    if not bad:
        return None
    return Finding("bad_files", "info", f"{plural(len(bad), 'file')} could not be read (skipped)",
                   f"For example {bad[0].get('path')!r}: {bad[0].get('reason')}.",
                   [f"picstory data check {shlex.quote(data_spec(run))}"], {"count": len(bad)})


ECE_CAVEAT = 0.05  # above this expected calibration error the probabilities should not be read as odds


def check_calibration(run: Mapping) -> Finding | None:
    """From eval.json: how far off the raw confidences were and what the stored temperature made of them. A model
    still miscalibrated after scaling (or stored without calibration) is ready only with a caveat."""
    ev = run.get("eval") or {}
    cal = ev.get("calibration") or {}
    if not cal or ev.get("ece") is None:
        return None
    before, after, t = (cal.get("before") or {}).get("ece"), ev["ece"], ev.get("temperature")
    facts = {"ece_before": before, "ece_after": after, "temperature": t}
    split = ev.get("split", "test")
    if t is None or ev.get("calibration_note"):
        if after <= ECE_CAVEAT:
            return None
        return Finding("miscalibrated", "warning", f"Uncalibrated confidence: ECE {after:.3f}",
                       f"The {split} probabilities are off by {after:.1%} on average (ECE, 15 equal-width bins) and "
                       f"no temperature is stored ({ev.get('calibration_note') or 'an older bundle'}); a \"90 %\" "
                       "answer is not right 9 times in 10.", [train_cmd(run)], facts)
    way = "over-confident" if t > 1 else "under-confident"
    if after > ECE_CAVEAT:
        return Finding("miscalibrated", "warning", f"Still miscalibrated after temperature scaling: ECE {after:.3f}",
                       f"The model was {way} (ECE {before:.3f} on the {split} split); temperature {t:.2f} brings "
                       f"it only to {after:.3f}, above {ECE_CAVEAT}. Read its probabilities as rankings, not odds; "
                       "more validation images or a longer, regularised run usually help.",
                       [train_cmd(run, "--val-fraction 0.2")], facts)
    if before is None or before <= ECE_CAVEAT / 2:
        return None
    return Finding("calibrated", "info", f"{way.capitalize()}: ECE {before:.3f} → {after:.3f} after calibration",
                   f"The raw softmax was {way} (ECE {before:.3f} on the {split} split, 15 equal-width bins); the "
                   f"stored temperature {t:.2f} brings it to {after:.3f}, so predict, serve and exports give "
                   "probabilities that can be read as odds.", [], facts)


def check_unknown(run: Mapping) -> Finding | None:
    ev = run.get("eval") or {}
    if "unknown_rate" not in ev:
        return None
    rate, acc, base = ev["unknown_rate"], ev.get("accepted_accuracy"), ev.get("accuracy")
    severity = "warning" if rate > 0.15 else "info"
    gain = f", against {base:.1%} when every image is answered" if base is not None else ""
    return Finding("unknown_inputs", severity, f"{rate:.1%} of the {ev.get('split', 'test')} images are answered "
                   "\"unknown\"",
                   f"The {ev['unknown_score']} out-of-distribution score passes its threshold "
                   f"({ev['unknown_threshold']:.4g}, chosen to accept 95 % of the validation images) on {rate:.1%} of "
                   f"the {ev.get('split', 'test')} images; the accepted ones are "
                   f"{'–' if acc is None else f'{acc:.1%}'} accurate{gain}. `--min-confidence` trades more coverage "
                   "for accuracy." + (" Far more than 5 % suggests the test images differ from the validation ones."
                                      if severity == "warning" else ""), [],
                   {"unknown_rate": rate, "accepted_accuracy": acc})


RULES: tuple[Callable[[Mapping], Finding | None], ...] = (
    check_diverged, check_spikes, check_lr_too_high, check_leaks, check_underfitting, check_overfitting,
    check_near_baseline, check_imbalance, check_catch_all, check_confused_pairs, check_mislabelled, check_few_images,
    check_bad_files, check_calibration, check_unknown)
