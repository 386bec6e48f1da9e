"""``picstory train``: config → data → model → fit → evaluate → bundle + report, in one run directory."""

from __future__ import annotations

import datetime
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from .. import config as C
from .._version import __version__
from ..data import sources
from ..data.labelfile import format_label_map, parse_label_map
from ..data.split import balance, check_column, describe_balance, fold_splits, manifest_csv, read_manifest, split_source
from ..errors import ConfigError, UserError
from ..files import atomic_write, read_json, remove_temp_files
from ..runs import RunDir, create_run_dir, find_run, refuse_inside, slug
from ..training import callbacks as cbs
from ..training import tracking
from ..training.checkpoint import load_checkpoint, seed_everything, set_rng_state
from ..training.distributed import (
    Dist,
    EpochNaNGuard,
    barrier,
    broadcast_object,
    check_same_data,
    plain_state_dict,
    setup,
    teardown,
    wrap_model,
)
from ..training.engine import Learner
from ..training.optim import build_optimizer, make_schedule, param_groups
from ..training.presets import fit_batch_size, photo_size, preset_values
from ..training.probe import ProbeLearner, check_probe, probe_by_default
from ..training.setup import TrainData, check_multilabel_config, load_train_data


@dataclass
class Run:
    path: Path
    summary: dict

    @property
    def predictor(self):
        from ..deploy.predict import load

        return load(self.path)


def _fp32_cpu(cfg: C.Config) -> bool:
    """Whether this run trains on a CPU in fp32 for lack of native bf16 (the presets differ there)."""
    from ..device import cpu_has_fast_bf16

    t = cfg.train
    on_cpu = t.device == "cpu" or (t.device == "auto" and not torch.cuda.is_available())
    return on_cpu and t.precision != "bf16" and (t.precision == "fp32" or not cpu_has_fast_bf16())


def resolve_config(user: dict, source: sources.Source) -> C.Config:
    """Defaults ← the preset's values for this data ← what the user set. Every 'auto' is decided here, so
    config.yaml holds concrete values and replays the run exactly."""
    cfg = C.from_dict(user)
    img_size = cfg.data.img_size or _auto_img_size(source, cfg.train.device)
    channels = cfg.data.channels
    if channels == "auto":
        from ..data.cache import detect_channels

        channels = str(detect_channels(source))
    if not source.multilabel and probe_by_default(user, cfg, img_size, len(source.records), gray=channels == "1"):
        user = {**user, "preset": "probe"}
        cfg = C.from_dict(user)
    values = preset_values(cfg.train.preset, img_size, _fp32_cpu(cfg), gray=channels == "1")
    values["img_size"] = img_size
    values["batch_size"] = fit_batch_size(values["batch_size"], len(source.records))
    if cfg.data.channels == "auto":
        values["channels"] = channels
    if user.get("lr") == "preset":
        user = {k: v for k, v in user.items() if k != "lr"}
    if "epochs" in user and C.coerce("epochs", user["epochs"]) == 0:  # documented as "0 = the preset's choice"
        user = {k: v for k, v in user.items() if k != "epochs"}
    resolved = C.from_dict({**values, **user})
    model = resolved.model.model
    if model == "auto":
        model = values["model"]
    extra = {"model": model}
    if source.multilabel:  # config.yaml says so whatever made the data multi-label (cells, --label-cols, JSON)
        extra["multi_label"] = True
    if resolved.data.label_map:  # a YAML map file is written out in full, so config.yaml alone replays the run
        extra["label_map"] = format_label_map(parse_label_map(resolved.data.label_map))
    if resolved.model.freeze_epochs < 0:
        from ..models import has_pretrained

        # a pretrained backbone first waits one epoch while the new, random head learns (fine-tuning practice)
        pretrained = resolved.model.pretrained and not resolved.model.weights and has_pretrained(model)
        extra["freeze_epochs"] = 1 if pretrained and resolved.train.epochs >= 3 else 0
    resolved = resolved.updated(**extra)
    if resolved.train.preset == "probe":
        if source.multilabel:
            raise ConfigError("--preset probe fits a single-label (softmax) head; for multi-label data choose "
                                "--preset default or fast")
        check_probe(resolved)
    return resolved


def _auto_img_size(source: sources.Source, device: str = "auto") -> int:
    if source.in_memory:
        return max(16, int(source.arrays.shape[1]))
    from ..data.decode import DecodeError, probe

    sides = []
    for rec in source.records[:: max(1, len(source.records) // 200)]:
        try:
            info = probe(rec.ref)
            sides.append(min(info.width, info.height))
        except DecodeError:
            continue
    side = statistics.median(sides) if sides else 224
    on_gpu = device != "cpu" and torch.cuda.is_available()
    return max(16, int(side)) if side <= 64 else photo_size(side, on_gpu)


def train(data: str | None = None, *, config: str | Path | C.Config | None = None, resume: str | Path | None = None,
          progress: bool = True, command: str = "", callbacks: list | None = None, started: float | None = None,
          **overrides) -> Run:
    """Train a classifier; keyword arguments are config keys (``epochs=3, lr=1e-3, model='picnet-s'``).
    ``callbacks`` adds engine callbacks (objects with on_epoch_end(learner) etc.) to the built-in ones.
    ``started``: the ``time.perf_counter()`` from which ``time_budget`` counts (default: now; the CLI passes its
    process's start)."""
    started = time.perf_counter() if started is None else started
    if resume:
        return _resume(resume, progress=progress, command=command, callbacks=callbacks)
    user = user_config(data, config, overrides)
    source = sources.resolve(user["data"], **C.label_file_options(user))
    cfg = resolve_config(user, source)
    if source.multilabel:  # before a run directory exists: a refused option leaves nothing behind
        check_multilabel_config(cfg)
    for flag, column in (("--stratify-col", cfg.data.stratify_col), ("--report-by", cfg.data.report_by)):
        if column:  # before any training: a misspelt column must not cost a run
            check_column(source, flag, column)
    if source.kind in ("folder", "filenames"):
        refuse_inside(cfg.run.out, source.root)
    return _fit(cfg, source, run_dir=None, checkpoint=None, progress=progress, command=command,
                callbacks=callbacks, budget=(started, frozenset(user)) if cfg.train.time_budget else None)


def user_config(data: str | None, config: str | Path | C.Config | None, overrides: dict) -> dict:
    """What the user set: a config (object or YAML file) under the keyword overrides, checked key by key."""
    user: dict = {}
    if isinstance(config, C.Config):
        user.update(_flat(config))
    elif config:
        user.update(_flat(C.load_yaml(config)))
    user.update({k: v for k, v in overrides.items() if v is not None})
    if data:
        user["data"] = data
    if not user.get("data"):
        raise ConfigError("no data given: picstory train DATA (a folder, a CSV, IDX files or builtin:digits)")
    C.from_dict(user)  # fail on a bad key before touching the data
    return user


def make_splits(cfg: C.Config, source: sources.Source, notes: list[str] | None = None) -> dict[str, list[int]]:
    """The run's train / val / test indices: the stratified (group-aware) split, or one fold of a cross-validation."""
    d = cfg.data
    if d.folds and not d.fold:
        raise ConfigError(f"folds {d.folds} without fold: train the cross-validation with picstory.train or "
                          "`picstory train DATA --folds K`, or one fold alone with --fold N")
    if d.folds:
        return fold_splits(source, d.folds, d.fold, d.test_fraction, cfg.train.seed)
    return split_source(source, d.val_fraction, d.test_fraction, cfg.train.seed, d.stratify_col, notes)


def _flat(cfg: C.Config) -> dict:
    return {k: C.get(cfg, k) for k in C.FIELDS}


def _resume(run: str | Path, progress: bool, command: str, callbacks: list | None) -> Run:
    run_dir = find_run(run)
    for folder in (run_dir, RunDir(run_dir).last_checkpoint.parent):  # what killed writes left behind
        remove_temp_files(folder)
    cfg = C.load_yaml(RunDir(run_dir).config)
    summary = read_json(RunDir(run_dir).summary)
    if str(summary.get("stop_reason", "")).startswith("failed"):
        raise UserError(f"{run_dir} {summary['stop_reason']}; fix that and start a new run")
    if summary.get("stop_reason") and summary["stop_reason"] != "interrupted":
        raise UserError(f"{run_dir} already finished ({summary['stop_reason']}); start a new run instead")
    source = sources.resolve(cfg.data.data, **C.label_file_options(cfg))
    if not RunDir(run_dir).last_checkpoint.is_file() and not RunDir(run_dir).bundle.exists():
        # stopped before its first epoch ended: nothing to continue, so it starts again in its own folder
        print(f"{run_dir} has no finished epoch yet: training it from the start", file=sys.stderr)
        return _fit(cfg, source, run_dir=run_dir, checkpoint=None, progress=progress, command=command,
                    callbacks=callbacks)
    ckpt = _checked(load_checkpoint(RunDir(run_dir).last_checkpoint), RunDir(run_dir).last_checkpoint)
    if ckpt["classes"] != source.classes:
        raise UserError(f"cannot resume {run_dir}: the classes changed ({', '.join(ckpt['classes'])} → "
                        f"{', '.join(source.classes)})")
    # both through today's schema: a key added since the run was written takes its default on either side
    if C.dump_yaml(C.from_dict(yaml.safe_load(ckpt["config"]) or {})) != C.dump_yaml(cfg):
        raise UserError(f"cannot resume {run_dir}: config.yaml differs from the checkpoint's config; "
                        "start a new run with --config instead")
    return _fit(cfg, source, run_dir=run_dir, checkpoint=ckpt, progress=progress, command=command,
                callbacks=callbacks)


def _fit(cfg: C.Config, source: sources.Source, run_dir: Path | None, checkpoint: dict | None,
         progress: bool, command: str, callbacks: list | None = None,
         budget: tuple[float, frozenset] | None = None) -> Run:
    """``budget``: (the clock's start, the keys the user set) for --time-budget; None for no budget (and on resume,
    where the planned length is already in config.yaml)."""
    from ..device import register_run, unregister_run

    register_run()  # before choosing threads: runs started side by side see each other
    try:
        return _fit_registered(cfg, source, run_dir, checkpoint, progress, command, callbacks, budget)
    finally:
        unregister_run()


def _fit_registered(cfg: C.Config, source: sources.Source, run_dir: Path | None, checkpoint: dict | None,
                    progress: bool, command: str, callbacks: list | None, budget: tuple[float, frozenset] | None
                    ) -> Run:
    from ..device import pick_device, pick_precision, set_threads

    t, m = cfg.train, cfg.model
    device = pick_device(t.device)
    threads = set_threads(t.threads)
    dist = setup(device)
    check_same_data(dist, source)
    tracking.check_available([n for n in cfg.run.log.split(",") if n])  # before a run directory exists
    seed_everything(t.seed + dist.rank)
    if checkpoint is not None and checkpoint.get("world_size", 1) != dist.world_size and dist.is_main:
        print(f"note: resuming with {dist.world_size} process(es) a run trained with {checkpoint.get('world_size', 1)}"
              ": the global batch, the LR schedule and each epoch's order stay; augmentation draws differ",
              file=sys.stderr)
    if run_dir is None:
        name = cfg.run.name or f"{slug(m.model)}-{slug(cfg.data.data)}"
        run_dir = create_run_dir(cfg.run.out, name) if dist.is_main else None
        run_dir = Path(broadcast_object(dist, str(run_dir) if run_dir else None))
        if dist.is_main:
            try:
                atomic_write(RunDir(run_dir).config, C.dump_yaml(cfg))
            except Exception as e:
                _mark_failed(run_dir, e)
                raise
    fresh = checkpoint is None and dist.is_main  # a failed start marks (or removes) only a folder it made
    notes = list(source.notes)
    try:
        if checkpoint is not None:
            splits = read_manifest(RunDir(run_dir).split, source)
        else:
            splits = make_splits(cfg, source, notes)
            if dist.is_main:
                atomic_write(RunDir(run_dir).split, manifest_csv(source, splits))
        td = load_train_data(cfg, source, splits, device, dist, progress)
        td.data_summary["split"] = balance(source, splits)
        if dist.is_main:
            for note in notes:
                print(f"note: {note}", file=sys.stderr)
            if cfg.data.group_col or cfg.data.stratify_col:
                print(describe_balance(td.data_summary["split"]), file=sys.stderr)
        autocast = pick_precision(t.precision, device)
        if t.precision == "auto":
            cfg, autocast = _resolve_precision(cfg, td, device, autocast, run_dir if dist.is_main else None)
            t = cfg.train
        if t.lr == "auto":
            cfg = _find_lr(cfg, td, device, autocast, run_dir if dist.is_main else None)
            t = cfg.train
        plan = None
        if budget is not None:
            cfg, td, plan = _plan_budget(cfg, td, source, splits, device, autocast, dist, progress, budget)
            if dist.is_main:
                atomic_write(RunDir(run_dir).config, C.dump_yaml(cfg))
        if dist.enabled:  # a timing probe or the LR finder may decide differently per rank: rank 0's choice holds
            cfg = broadcast_object(dist, cfg)
            t, autocast = cfg.train, pick_precision(cfg.train.precision, device)
        if dist.is_main:
            _write_env(run_dir, cfg, device, threads, autocast, source, command, dist.world_size)
            atomic_write(RunDir(run_dir).data, json.dumps(td.data_summary, indent=1))
        learner, model = _build_learner(cfg, td, device, autocast, dist, run_dir, progress)
        learner.callbacks += list(callbacks or [])
        if not t.threads and not dist.enabled:
            learner.callbacks.append(cbs.ThreadShare())
        if plan is not None:
            from ..training.budget import MARGIN, TimeBudget

            deadline = budget[0] + plan.budget_s * (1 - MARGIN / 2) - plan.final_s
            learner.callbacks.append(TimeBudget(deadline, plan.epoch_s, check_batches=not dist.enabled))
        if checkpoint is not None:
            _restore(learner, model, checkpoint)
    except Exception as e:
        if fresh:
            _mark_failed(run_dir, e)
        raise
    start = time.perf_counter() - (checkpoint or {}).get("train_seconds", 0.0)
    learner.train_seconds = lambda: time.perf_counter() - start
    interrupted = False
    try:
        learner.fit()
    except KeyboardInterrupt:
        interrupted = True
        learner.stop_reason = "interrupted"
    train_seconds = time.perf_counter() - start
    if interrupted and dist.enabled:
        # each rank stopped at its own step: no collective can match any more, so no barrier and no summary
        if dist.is_main:
            print(f"interrupted: the last finished epoch is saved; continue with\n  picstory train --resume {run_dir}",
                  file=sys.stderr)
        raise KeyboardInterrupt
    barrier(dist)
    summary = {}
    if dist.is_main:
        summary = _finish(run_dir, cfg, td, learner, train_seconds, device, autocast)
        if plan is not None:
            summary["time_budget"] = {**plan.to_dict(), "actual_s": round(time.perf_counter() - budget[0], 2)}
            atomic_write(RunDir(run_dir).summary, json.dumps(summary, indent=1))
        if interrupted:
            print(f"interrupted: the last finished epoch is saved; continue with\n  picstory train --resume {run_dir}",
                  file=sys.stderr)
    teardown(dist)
    if interrupted:
        raise KeyboardInterrupt
    return Run(path=run_dir, summary=summary)


def _mark_failed(run_dir: Path, error: Exception) -> None:
    """A run that failed before training began: without config.yaml nothing lists it, so the folder goes; else
    summary.json records the reason, `picstory runs` shows "failed: …" and --resume refuses it."""
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    try:
        if not RunDir(run_dir).config.is_file():
            for leftover in run_dir.iterdir():  # only the marker and temp files can be there
                leftover.unlink(missing_ok=True)
            run_dir.rmdir()
            return
        summary = {"stop_reason": f"failed: {reason}",
                   "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        atomic_write(RunDir(run_dir).summary, json.dumps(summary, indent=1), user_error=False)
    except OSError:
        pass  # an unwritable run folder: the original error is the one to report


def _resolve_precision(cfg: C.Config, td: TrainData, device, autocast, run_dir: Path | None):
    """precision auto → a concrete value in config.yaml, so a resumed run computes exactly as it started."""
    from ..device import remembered_bf16_choice

    if device.type == "cpu" and autocast is not None:
        x = next(iter(td.train_batches))[0]
        autocast = torch.bfloat16 if remembered_bf16_choice(cfg.model.model, td.model, x) else None
    cfg = cfg.updated(precision="bf16" if autocast == torch.bfloat16 else "fp16" if autocast else "fp32")
    if run_dir is not None:
        atomic_write(RunDir(run_dir).config, C.dump_yaml(cfg))
    return cfg, autocast


def _plan_budget(cfg: C.Config, td: TrainData, source, splits, device, autocast, dist: Dist, progress: bool,
                 budget: tuple[float, frozenset]) -> tuple[C.Config, TrainData, object]:
    """--time-budget: time a few steps of the preset's model (then of smaller ones while it cannot train enough
    epochs) on this data, and set epochs (and model, warmup) so the whole run fits. Config keys the user set stay."""
    from ..models import create_model
    from ..training import budget as B
    from ..training.presets import model_ladder

    started, fixed = budget
    t = cfg.train
    budget_s = C.parse_duration(t.time_budget)
    max_epochs = t.epochs if "epochs" in fixed else 3 * t.epochs
    ladder = [cfg.model.model] if "model" in fixed else model_ladder(cfg.model.model)
    n_test = len(td.splits["test"].labels)
    for k, name in enumerate(ladder):
        model = td.model if k == 0 else create_model(name, len(td.classes), in_chans=int(cfg.data.channels),
                                                     img_size=cfg.data.img_size).to(device,
                                                                                    memory_format=torch.channels_last)
        step_s, eval_s = B.measure(model, td.train_batches, td.val_batches, autocast, device=device)
        costs = B.Costs(name, step_s, eval_s, len(td.train_batches), len(td.splits["val"].labels) // dist.world_size,
                        n_test, B.tta_passes(cfg.eval.tta), n_train=len(td.splits["train"].labels))
        plan = B.plan_for(budget_s, time.perf_counter() - started, costs, max_epochs)
        if B.enough(plan, max_epochs):
            break
    if dist.enabled:  # every rank timed its own steps: rank 0's plan holds for all
        plan = broadcast_object(dist, plan)
    values = {"epochs": plan.epochs}
    if plan.fraction < 1 and "epoch_fraction" not in fixed:
        values["epoch_fraction"] = plan.fraction
    if "warmup_epochs" not in fixed:  # the preset's warm-up share of the run, kept
        values["warmup_epochs"] = round(t.warmup_epochs * plan.epochs / max(t.epochs, 1), 3)
    if plan.model != cfg.model.model:
        values["model"] = plan.model
    cfg = cfg.updated(**values)
    if plan.model != ladder[0]:
        summary = td.data_summary
        td = load_train_data(cfg, source, splits, device, dist, False)  # the cache is filled: a quick reload
        td.data_summary = summary
    td.train_batches.limit(cfg.train.epoch_fraction)
    if dist.is_main and progress:
        print(plan.line(t.time_budget), file=sys.stderr, flush=True)
    return cfg, td, plan


def _find_lr(cfg: C.Config, td: TrainData, device, autocast, run_dir: Path | None) -> C.Config:
    """--lr auto: the LR range test on this data and model; the found value is written into config.yaml."""
    from ..training.lr_find import suggest_lr

    found = suggest_lr(cfg, td, device, autocast)
    lr = f"{found['suggested_lr']:.3g}"
    print(f"lr-find suggests lr {lr}", file=sys.stderr)
    cfg = cfg.updated(lr=lr)
    if run_dir is not None:
        atomic_write(RunDir(run_dir).lr_find, json.dumps(found))
        atomic_write(RunDir(run_dir).config, C.dump_yaml(cfg))
    return cfg


def prepare(data: str, progress: bool = False, **overrides) -> tuple[C.Config, TrainData, torch.device, object]:
    """Config, data and model exactly as ``train`` builds them, without a run directory (lr-find, benchmarks)."""
    from ..device import pick_device, pick_precision, set_threads

    user = {k: v for k, v in overrides.items() if v is not None}
    user["data"] = data
    C.from_dict(user)
    source = sources.resolve(data, **C.label_file_options(user))
    cfg = resolve_config(user, source)
    device = pick_device(cfg.train.device)
    set_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    splits = make_splits(cfg, source)
    td = load_train_data(cfg, source, splits, device, Dist(), progress)
    return cfg, td, device, pick_precision(cfg.train.precision, device)


def _build_learner(cfg: C.Config, td: TrainData, device, autocast, dist: Dist, run_dir: Path,
                   progress: bool) -> tuple[Learner, torch.nn.Module]:
    from ..models import backbone_parameters, set_backbone_frozen

    t, m = cfg.train, cfg.model
    model = td.model
    backbone = backbone_parameters(model) if m.freeze_epochs > 0 or td.pretrained else None
    groups = param_groups(model, t.weight_decay, backbone, m.backbone_lr_mult if td.pretrained else 1.0)
    lr = float(t.lr)
    opt = build_optimizer(t.optimizer, groups, lr, t.momentum, t.nesterov)
    train_model = wrap_model(model, device, dist, find_unused=m.freeze_epochs > 0)
    if t.compile:
        train_model = torch.compile(train_model)
    steps = len(td.train_batches)
    schedule = make_schedule(t.schedule, t.epochs * steps, int(t.warmup_epochs * steps))
    ema_model = None
    callbacks: list = [cbs.MetricsLog(run_dir), EpochNaNGuard() if dist.enabled else cbs.NaNGuard(),
                       cbs.Progress(progress)]
    if t.ema > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema_model = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(t.ema), use_buffers=True)
        callbacks.append(cbs.EMA(ema_model))
    eval_model = ema_model

    def save_best(L: Learner) -> None:
        best = (ema_model.module if ema_model is not None else model)
        td.save_bundle(RunDir(run_dir).bundle, best, {"best_epoch": L.epoch, "val_accuracy": L.metrics["val_acc"],
                                                  "val_loss": L.metrics["val_loss"]})

    callbacks.append(cbs.BestCheckpoint(save_best, t.monitor))
    if t.patience:
        callbacks.append(cbs.EarlyStopping(t.monitor, t.patience, t.min_delta))
    if t.schedule == "plateau":
        callbacks.append(cbs.PlateauLR(t.monitor))
    if t.progressive:
        callbacks.append(cbs.ProgressiveResize([int(s) for s in t.progressive.split(",")]))
    if m.freeze_epochs > 0:
        callbacks.append(cbs.FreezeBackbone(m.freeze_epochs, lambda frozen: set_backbone_frozen(model, frozen)))
    if cfg.run.log and dist.is_main:
        callbacks += tracking.make_trackers(cfg.run.log, run_dir, _flat(cfg), cfg.run.log_every)
    kind, extra = Learner, {}
    if t.preset == "probe":  # embed once, fit the head on the features (training/probe.py)
        kind, extra = ProbeLearner, {"flip": cfg.augment.hflip > 0, "backbone": m.model, "progress": progress}
    learner = kind(model=train_model, optimizer=opt, train_batches=td.train_batches, val_batches=td.val_batches,
                      lr=lr, schedule=schedule, epochs=t.epochs, num_classes=len(td.classes),
                      loss_weight=td.loss_weight, label_smoothing=t.label_smoothing, grad_clip=t.grad_clip,
                      autocast_dtype=autocast, device=device, callbacks=callbacks, eval_model=eval_model,
                      is_main=dist.is_main, multilabel=td.multilabel, pos_weight=td.pos_weight, **extra)
    callbacks.append(cbs.LastCheckpoint(RunDir(run_dir).last_checkpoint, lambda: {
        "classes": td.classes, "config": C.dump_yaml(cfg), "train_seconds": learner.train_seconds(),
        "world_size": dist.world_size}))
    learner.raw_model = model
    return learner, model


CHECKPOINT_KEYS = {"model": dict, "optimizer": dict, "learner": dict, "rng": dict, "classes": list, "config": str}


def _checked(ckpt: object, path: Path) -> dict:
    """A checkpoint that unpickles safely can still be malformed (a foreign dict, a hand-edited file)."""
    bad = [k for k, kind in CHECKPOINT_KEYS.items() if not isinstance(ckpt, dict) or not isinstance(ckpt.get(k), kind)]
    if bad:
        raise UserError(f"{path}: not a picstory checkpoint (missing or malformed: {', '.join(bad)}); "
                        "start a new run")
    return ckpt


def _restore(learner: Learner, model: torch.nn.Module, ckpt: dict) -> None:
    try:
        model.load_state_dict(plain_state_dict(ckpt["model"]))  # saved through the DDP / compile wrappers
        learner.optimizer.load_state_dict(ckpt["optimizer"])
        if learner.eval_model is not None and "ema" in ckpt:
            learner.eval_model.load_state_dict(ckpt["ema"])
        learner.load_state_dict(ckpt["learner"])
        set_rng_state(ckpt["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        raise UserError(f"the checkpoint does not fit this run's model or optimizer ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else 'no detail'}); start a new run") from None
    print(f"resuming after epoch {learner.epoch}", file=sys.stderr)


def _write_env(run_dir: Path, cfg: C.Config, device, threads: int, autocast, source, command: str,
               world_size: int = 1) -> None:
    env = {"picstory": __version__, "torch": torch.__version__, "python": platform.python_version(),
           "platform": platform.platform(), "device": str(device), "threads": threads, "world_size": world_size,
           "precision": str(autocast).replace("torch.", "") if autocast else "fp32",
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "seed": cfg.train.seed,
           "data_fingerprint": source.fingerprint(), "command": command or " ".join(sys.argv),
           "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    atomic_write(RunDir(run_dir).env, json.dumps(env, indent=1))


def _finish(run_dir: Path, cfg: C.Config, td: TrainData, learner: Learner, train_seconds: float, device,
            autocast) -> dict:
    """Evaluate the best bundle on the test split, then summary.json and report.html."""
    from .evaluation_run import evaluate_run

    best_cb = next(cb for cb in learner.callbacks if isinstance(cb, cbs.BestCheckpoint))
    summary = {"val_accuracy": None, "best_epoch": best_cb.best_epoch, "epochs_run": learner.epoch,
               "train_seconds": round(train_seconds, 2), "stop_reason": learner.stop_reason,
               "classes": td.classes, "class_counts": td.data_summary["class_counts"], "model": cfg.model.model,
               "data": cfg.data.data, "img_size": cfg.data.img_size, "params": td.params, "lr": float(cfg.train.lr),
               "optimizer": cfg.train.optimizer, "device": str(device),
               "precision": str(autocast).replace("torch.", "") if autocast else "fp32",
               "images_per_second": round(td.n_train * learner.epoch / max(train_seconds, 1e-9), 1),
               "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if best_cb.best_epoch:
        row = learner.history[best_cb.best_epoch - 1]
        summary["val_accuracy"] = row["val_acc"]
        if td.multilabel:  # per-label thresholds; temperature scaling and the unknown rule are single-label
            from .evaluation_run import tune_thresholds

            summary.update(task="multilabel", thresholds=tune_thresholds(run_dir, td, device=str(device)))
        else:
            from .confidence_run import calibrate_bundle

            calibrate_bundle(RunDir(run_dir).bundle, td.splits["val"], td.splits["train"], device, cfg.train.seed)
        result = evaluate_run(run_dir, td=td, tta=cfg.eval.tta, write_report=False, summary=summary,
                              device=str(device))
        summary["test_accuracy"] = result.get("accuracy")
        for key in ("micro_f1", "macro_f1", "mAP") if td.multilabel else ():
            summary[f"test_{key}"] = result.get(key)
        for key in ("balanced_accuracy", "majority_baseline", "majority_class"):
            if key in result:
                summary[f"test_{key}" if key == "balanced_accuracy" else key] = result[key]
    else:
        summary["test_accuracy"] = None
    atomic_write(RunDir(run_dir).summary, json.dumps(summary, indent=1))
    from .evaluation_run import finalize_report

    finalize_report(run_dir, summary)
    final = read_json(RunDir(run_dir).summary) or summary
    for tracker in (cb for cb in learner.callbacks if isinstance(cb, tracking.Tracker)):
        tracker.finish_run(final)
    return final


__all__ = ["train", "prepare", "Run", "resolve_config", "user_config", "make_splits"]
