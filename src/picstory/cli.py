"""Command line. It only parses and calls the library; every flag is generated: train's from config.py, the other
commands' from options.py."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing

from . import commands
from . import config as C
from . import options as O
from .errors import UserError
from .files import DISK_FULL, disk_full

TRAIN_SECTIONS = ("data", "model", "augment", "train", "eval", "run")


def _add_config_flags(p: argparse.ArgumentParser, skip: tuple = ("data",)) -> None:
    """One flag per config field, default None so that only what the user typed overrides the preset."""
    for section in TRAIN_SECTIONS:
        group = p.add_argument_group(f"{section} options")
        for key, (sec, f) in C.FIELDS.items():
            if sec != section or key in skip:
                continue
            flag = "--" + key.replace("_", "-")
            default = C.default_of(key)
            help_ = f"{f.metadata['help']} (default: {default if default != '' else 'none'})"
            if C.field_python_type(key) is bool:
                group.add_argument(flag, dest=key, default=None, action=argparse.BooleanOptionalAction, help=help_)
            else:
                choices = f.metadata.get("choices")
                group.add_argument(flag, dest=key, default=None, metavar=_metavar(key, choices), help=help_)


def _add_options(p: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of an options dataclass (options.py), with its default, type, choices and bounds."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        if isinstance(typ, types.UnionType):  # `float | None`: the flag takes a float
            typ = next(t for t in typing.get_args(typ) if t is not type(None))
        meta, flag = f.metadata, "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = "none" if default in (None, "") else default
        kw: dict = {"dest": f.name, "default": default, "help": f"{meta['help']} (default: {shown})"}
        if typ is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(typ) is list or typ is list:
            p.add_argument(flag, action="append", metavar="VALUE", **{**kw, "default": []})
        else:
            p.add_argument(flag, type=_checked(flag, typ, meta), choices=meta.get("choices"),
                           metavar=None if meta.get("choices") else {int: "N", float: "X"}.get(typ, "VALUE"), **kw)


def _checked(flag: str, typ: type, meta: dict):
    def parse(text: str):
        try:
            value = typ(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {typ.__name__}, got {text!r}") from None
        low, high = meta.get("min"), meta.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"≥ {low}" if high is None else f"≤ {high}" if low is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value

    parse.__name__ = typ.__name__  # argparse names the type in its messages
    return parse


def _metavar(key: str, choices) -> str:
    if choices:
        return "{" + ",".join(choices) + "}"
    return {int: "N", float: "X"}.get(C.field_python_type(key), "VALUE")


class Parser(argparse.ArgumentParser):
    """No abbreviated flags: ``--epoch`` must not silently mean ``--epochs``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def _reject_unknown(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]) -> None:
    """argparse reports unknown flags from the top-level parser; report them from the sub-command, with a
    close match."""
    sub = parser
    for dest in ("command", "data_command"):
        actions = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        if actions and getattr(args, dest, None):
            sub = actions[0].choices[getattr(args, dest)]
    known = [o for a in sub._actions for o in a.option_strings]
    flag = next((a.split("=")[0] for a in extra if a.startswith("-")), extra[0])
    sub.error(f"unrecognized argument {flag}{C.suggest(flag, known)}")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="picstory", description="A folder of labelled images → a trained, evaluated, "
                                "explained, exported and served image classifier.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    p.add_argument("--version", action="version", version=f"picstory {__import__('picstory').__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)

    data = sub.add_parser("data", help="check or export a data set").add_subparsers(
        dest="data_command", metavar="ACTION", required=True, parser_class=Parser)
    chk = data.add_parser("check", help="audit a data set: counts, bad files, duplicates, leaks → report")
    chk.add_argument("data", metavar="DATA")
    _add_options(chk, O.DataCheckOptions)
    iss = data.add_parser("issues", help="likely label errors from a cross-validation's out-of-fold probabilities")
    iss.add_argument("run", metavar="RUN", help="a --folds run (its parent folder or one fold)")
    _add_options(iss, O.DataIssuesOptions)
    exp = data.add_parser("export", help="write a built-in data set as PNG class folders (train/ test/)")
    exp.add_argument("data", metavar="builtin:NAME")
    exp.add_argument("out", metavar="DIR")

    tr = sub.add_parser("train", help="train a classifier → runs/NAME/")
    tr.add_argument("data", metavar="DATA", nargs="?", help="class folders, file-name labels, CSV, IDX, builtin:NAME")
    tr.add_argument("--config", default=None, help="a config.yaml (e.g. from an earlier run) to reproduce")
    tr.add_argument("--resume", default=None, metavar="RUN", help="continue an interrupted run")
    tr.add_argument("--quiet", action="store_true", help="no progress output")
    tr.add_argument("--nproc", type=int, default=None, metavar="N",
                    help="train in N processes on this machine (torchrun/DDP; --batch-size stays the global batch)")
    _add_config_flags(tr)

    ev = sub.add_parser("eval", help="metrics of a run on its test split or on DATA")
    ev.add_argument("run", metavar="RUN")
    ev.add_argument("data", metavar="DATA", nargs="?")
    _add_options(ev, O.EvalOptions)

    pr = sub.add_parser("predict", help="classify images with a run, a bundle or a pretrained model name")
    pr.add_argument("target", metavar="RUN|MODEL")
    pr.add_argument("images", metavar="IMAGE", nargs="+", help="files, folders or glob patterns")
    _add_options(pr, O.PredictOptions)

    si = sub.add_parser("similar", help="the nearest training images of any image (the model's own features)")
    si.add_argument("run", metavar="RUN")
    si.add_argument("images", metavar="IMAGE", nargs="+", help="files, folders or glob patterns")
    _add_options(si, O.SimilarOptions)

    ex = sub.add_parser("export", help="export a run's model with a parity check")
    ex.add_argument("run", metavar="RUN")
    _add_options(ex, O.ExportOptions)

    sv = sub.add_parser("serve", help="HTTP server with an upload page for a run's model")
    sv.add_argument("run", metavar="RUN")
    _add_options(sv, O.ServeOptions)

    sw = sub.add_parser("sweep", help="train a grid of configurations and compare them")
    sw.add_argument("data", metavar="DATA")
    _add_options(sw, O.SweepOptions)
    _add_config_flags(sw)

    tu = sub.add_parser("tune", help="search hyper-parameters with Optuna (TPE + pruning) → tune.html")
    tu.add_argument("data", metavar="DATA")
    _add_options(tu, O.TuneOptions)
    _add_config_flags(tu)

    lf = sub.add_parser("lr-find", help="learning-rate range test → suggested LR and plot")
    lf.add_argument("data", metavar="DATA")
    _add_config_flags(lf)

    rn = sub.add_parser("runs", help="table of runs")
    rn.add_argument("dir", metavar="DIR", nargs="?", default="runs")
    _add_options(rn, O.RunsOptions)

    mo = sub.add_parser("monitor", help="drift and low-confidence report from the prediction log")
    mo.add_argument("run", metavar="RUN")
    _add_options(mo, O.MonitorOptions)

    dr = sub.add_parser("doctor", help="is the model good enough, and if not, what to try next")
    dr.add_argument("run", metavar="RUN")
    _add_options(dr, O.DoctorOptions)

    md = sub.add_parser("models", help="list model names")
    md.add_argument("pattern", nargs="?", default="")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "torch" not in sys.modules:  # read once, when torch loads its OpenMP runtime (device.passive_wait_env)
        from .device import passive_wait_env

        passive_wait_env()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        _reject_unknown(parser, args, extra)
    try:
        return int(run_command(args, argv) or 0)
    except UserError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `picstory predict … | head`: the reader has all it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout at exit
        return 1
    except OSError as e:  # a path the system refused (read-only, full, gone) that no command named itself
        if args.debug:
            raise
        print(f"error: {_os_error(e)}", file=sys.stderr)
        return 1


def _os_error(e: OSError) -> str:
    where = e.filename or "a file"
    if e.errno in DISK_FULL and e.filename:
        return str(disk_full(e.filename))
    return f"cannot write or read {where}: {e.strerror or e}; choose a writable folder or check the path"


def run_command(args: argparse.Namespace, argv: list[str]) -> int | None:
    return getattr(commands, "cmd_" + args.command.replace("-", "_"))(args, argv)


if __name__ == "__main__":
    sys.exit(main())
