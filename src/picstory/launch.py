"""``picstory train --nproc N``: the same training started under torchrun on this machine, one command.

It re-executes ``python -m torch.distributed.run --standalone --nproc-per-node N -m picstory train ...`` with the
other arguments unchanged; everything else (sharding, rank 0 writes, all-reduced stops) is the training's own DDP
support (train/distributed.py). Several machines: call torchrun yourself (README, "Multi-node").
"""

from __future__ import annotations

import os
import subprocess
import sys

from .device import cores
from .errors import UserError


def strip_nproc(argv: list[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """The command line that runs ``picstory train`` in ``nproc`` processes. ``argv`` is picstory's own argument
    list (``[--debug] train DATA ...``) or only the train arguments (``DATA ...``)."""
    args = strip_nproc(argv)
    before, after = ([], args) if "train" not in args else (args[:args.index("train")], args[args.index("train") + 1:])
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "-m", "picstory", *before, "train", *after]


def check_nproc(nproc: int, device: str = "auto") -> None:
    """Refuse what cannot work; warn about what works slowly."""
    if nproc < 1:
        raise UserError(f"--nproc must be at least 1, got {nproc}")
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise UserError("--nproc starts torchrun itself: under torchrun leave --nproc out")
    import torch

    gpus = torch.cuda.device_count() if device != "cpu" else 0
    if gpus and nproc > gpus:
        raise UserError(f"--nproc {nproc} but {gpus} GPU(s) visible: one process per GPU (--nproc {gpus}), "
                        "or --device cpu")
    if not gpus and nproc > cores():
        # more processes than cores still trains correctly (each gets one thread), only slower: a warning
        print(f"warning: --nproc {nproc} is more than the {cores()} CPU cores here; each process gets one thread "
              "and the run will be slower than with fewer processes", file=sys.stderr)


def launch(nproc: int, argv: list[str], device: str = "auto") -> int:
    """Run ``picstory train`` under torchrun with ``nproc`` processes; the exit status of the job."""
    check_nproc(nproc, device)
    env = dict(os.environ)
    # torchrun would set 1 and print a banner about it; the training sets its own thread count per process
    env.setdefault("OMP_NUM_THREADS", str(max(1, cores() // nproc)))
    try:
        code = subprocess.call(torchrun_command(nproc, argv), env=env)
    except KeyboardInterrupt:  # the processes got the same Ctrl-C; their own handlers report it
        return 130
    if code:
        print(f"error: training in {nproc} processes failed (exit {code}); the first error printed above is the "
              "cause", file=sys.stderr)
    return code


__all__ = ["launch", "torchrun_command", "strip_nproc", "check_nproc"]
