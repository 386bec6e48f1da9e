"""Command line. It only parses and calls the library; train-like flags are generated from config.py."""

from __future__ import annotations

import argparse
import sys

from . import commands
from . import config as C
from .errors import UserError

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
    chk.add_argument("--out", default=None, help="report folder (default: data-check/NAME)")
    chk.add_argument("--path-col", default="", help="CSV column with image paths")
    chk.add_argument("--label-col", default="", help="CSV column with labels")
    chk.add_argument("--max-bad-fraction", type=float, default=0.05, help="unusable above this share of bad files")
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
    ev.add_argument("--tta", default="none", choices=("none", "flip", "flip+crops"))

    pr = sub.add_parser("predict", help="classify images with a run, a bundle or a pretrained model name")
    pr.add_argument("target", metavar="RUN|MODEL")
    pr.add_argument("images", metavar="IMAGE", nargs="+", help="files, folders or glob patterns")
    pr.add_argument("--top-k", type=int, default=3)
    pr.add_argument("--format", default="table", choices=("table", "json", "csv"))
    pr.add_argument("--tta", default="none", choices=("none", "flip", "flip+crops"))
    pr.add_argument("--backend", default="torch", choices=("torch", "onnx"))

    ex = sub.add_parser("export", help="export a run's model with a parity check")
    ex.add_argument("run", metavar="RUN")
    ex.add_argument("--format", default="onnx", choices=("onnx", "torchscript"))
    ex.add_argument("--opset", type=int, default=17)
    ex.add_argument("--dynamic-batch", action=argparse.BooleanOptionalAction, default=True)

    sv = sub.add_parser("serve", help="HTTP server with an upload page for a run's model")
    sv.add_argument("run", metavar="RUN")
    sv.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--backend", default="torch", choices=("torch", "onnx"))
    sv.add_argument("--workers", type=int, default=1)
    sv.add_argument("--log", default=None, help="prediction log (SQLite; default RUN/predictions.sqlite)")
    sv.add_argument("--store-inputs", default=None, metavar="DIR", help="keep every input image here")
    sv.add_argument("--max-body-mb", type=float, default=10.0, help="largest request body in MB (→ 413)")
    sv.add_argument("--max-pixels", type=int, default=40_000_000, help="largest image in pixels (→ 413)")
    sv.add_argument("--store-cap-mb", type=float, default=None, help="size cap of --store-inputs (oldest go)")
    sv.add_argument("--device", default="cpu", choices=("cpu", "cuda"))

    sw = sub.add_parser("sweep", help="train a grid of configurations and compare them")
    sw.add_argument("data", metavar="DATA")
    sw.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                    help="a config key and its values; repeat for more axes, or a YAML grid file")
    sw.add_argument("--repeats", type=int, default=1, help="seeds per cell")
    sw.add_argument("--jobs", type=int, default=1, help="cells trained at once (threads are split)")
    _add_config_flags(sw)

    lf = sub.add_parser("lr-find", help="learning-rate range test → suggested LR and plot")
    lf.add_argument("data", metavar="DATA")
    _add_config_flags(lf)

    rn = sub.add_parser("runs", help="table of runs")
    rn.add_argument("dir", metavar="DIR", nargs="?", default="runs")
    rn.add_argument("--sort", default="", help="column to sort by (e.g. test)")
    rn.add_argument("--format", default="table", choices=("table", "json", "csv"))

    mo = sub.add_parser("monitor", help="drift and low-confidence report from the prediction log")
    mo.add_argument("run", metavar="RUN")
    mo.add_argument("--log", default=None)
    mo.add_argument("--out", default=None)
    mo.add_argument("--export-relabel", default=None, metavar="DIR")
    mo.add_argument("--low-confidence", type=float, default=0.6)

    dr = sub.add_parser("doctor", help="is the model good enough, and if not, what to try next")
    dr.add_argument("run", metavar="RUN")
    dr.add_argument("--target-accuracy", type=float, default=None)
    dr.add_argument("--class-recall", type=float, default=None)
    dr.add_argument("--export-relabel", default=None, metavar="DIR")
    dr.add_argument("--format", default="text", choices=("text", "json"))

    md = sub.add_parser("models", help="list model names")
    md.add_argument("pattern", nargs="?", default="")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
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


def run_command(args: argparse.Namespace, argv: list[str]) -> int | None:
    return getattr(commands, "cmd_" + args.command.replace("-", "_"))(args, argv)


if __name__ == "__main__":
    sys.exit(main())
