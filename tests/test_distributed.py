"""DDP: sharding and evaluation shards in-process, then `picstory train` under torchrun (2 processes, gloo, CPU).

The torchrun run is compared with a 1-process run of the same config. With augmentation off and dropout made
negligible, nothing random differs per rank, and --batch-size is global: each of the 2 ranks takes half of every
step's batch and DDP averages the gradients, so both runs take the same optimizer steps on the same images. They
differ only by float summation order in the gradient all-reduce (~1e-7 relative per step), which two epochs of
Adam grow to ~1e-6: losses must agree within 1e-3 and accuracies within one image.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import picstory
from picstory import launch
from picstory.data.batches import BatchIterator
from picstory.errors import UserError
from picstory.training.distributed import Dist, EpochNaNGuard, eval_shard, local_batch_size, plain_state_dict
from picstory.training.engine import Learner, StopTraining

torch.set_num_threads(1)
# --min-delta 10: no epoch "improves" after the first, so early stopping ends both runs after epoch 2 of 3
# --lr 0.05: a stable run, where one process and DDP agree to float rounding (a diverging one amplifies it)
SAME_STEPS = ["builtin:digits", "--epochs", "3", "--lr", "0.05", "--patience", "1", "--min-delta", "10",
              "--model", "seed-mnist-cnn", "--hflip", "0", "--translate", "0", "--drop-rate", "1e-6",
              "--precision", "fp32", "--threads", "1",
              "--quiet"]
RUN_FILES = ("config.yaml", "env.json", "split.csv", "metrics.csv", "history.json", "summary.json", "data.json",
             "eval.json", "report.html", "checkpoints/last.pt", "model/model.safetensors", "model/model.json")


def torchrun(args: list[str], tmp_path, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PICSTORY_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def rank_batches(n: int, global_batch: int, world: int, epoch: int = 3) -> list[list[list[int]]]:
    """Per rank, the label (= sample index) batches of one epoch, with the per-rank batch train uses."""
    out = []
    for rank in range(world):
        d = Dist(rank=rank, world_size=world)
        x = torch.zeros(n, 1, 2, 2, dtype=torch.uint8)
        it = BatchIterator(x, torch.arange(n), local_batch_size(global_batch, d), (0.5,), (0.5,), shuffle=True,
                           drop_last=True, seed=7, rank=rank, world_size=world)
        it.set_epoch(epoch)
        out.append([y.tolist() for _, y in it])
    return out


def test_train_shards_are_disjoint_equal_and_make_the_same_global_steps():
    one = rank_batches(101, 16, 1)[0]
    two = rank_batches(101, 16, 2)
    assert len(two[0]) == len(two[1]) == len(one) == 6  # every rank takes the same number of steps
    seen = [i for b in two[0] for i in b], [i for b in two[1] for i in b]
    assert not set(seen[0]) & set(seen[1]) and len(set(seen[0])) == len(seen[0])
    # step s of 2 ranks × 8 images = step s of 1 process × 16 images: the same samples, so the same mean gradient
    for step, batch in enumerate(one):
        assert sorted(two[0][step] + two[1][step]) == sorted(batch)
    assert rank_batches(101, 16, 2, epoch=4) != two  # a new shuffle each epoch, the same on every rank


def test_eval_shards_cover_every_sample_exactly_once():
    for n, world in ((179, 2), (10, 3), (2, 4)):
        x, y = torch.zeros(n, 1, 2, 2), torch.arange(n)
        parts = [eval_shard(x, y, Dist(rank=r, world_size=world))[1].tolist() for r in range(world)]
        assert sorted(i for p in parts for i in p) == list(range(n))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_batch_size_is_global(capsys):
    assert local_batch_size(256, Dist()) == 256
    assert local_batch_size(256, Dist(rank=1, world_size=4)) == 64
    assert local_batch_size(100, Dist(rank=0, world_size=3)) == 33
    err = capsys.readouterr().err
    assert "not a multiple of 3" in err and "noisy" not in err
    assert local_batch_size(16, Dist(rank=0, world_size=2)) == 8
    assert "BatchNorm statistics over so few are noisy" in capsys.readouterr().err
    assert local_batch_size(2, Dist(rank=0, world_size=4)) == 1


def test_checkpoint_saved_through_wrappers_loads_into_the_bare_model():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    wrapped = torch.compile(model)  # DDP adds "module." the same way; compiling is lazy, nothing runs here
    state = {"module." + k: v for k, v in wrapped.state_dict().items()}
    assert all(k.startswith("module._orig_mod.") for k in state)
    fresh = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    fresh.load_state_dict(plain_state_dict(state))
    assert torch.equal(fresh[0].weight, model[0].weight)


def test_ddp_nan_guard_waits_for_the_all_reduced_epoch_loss():
    learner = Learner(model=torch.nn.Linear(1, 1), optimizer=None, train_batches=None, val_batches=None, lr=0.1,
                      schedule=lambda s: 1.0, epochs=1, num_classes=2)
    learner.batch_loss = torch.tensor(float("nan"))
    EpochNaNGuard().on_batch_end(learner)  # one rank alone must not stop: the others would wait in all-reduce
    learner.metrics = {"train_loss": float("nan")}
    with pytest.raises(StopTraining):
        EpochNaNGuard().on_validate_end(learner)


def test_launch_builds_the_torchrun_command():
    cmd = launch.torchrun_command(3, ["--debug", "train", "DATA", "--nproc", "3", "--epochs", "2"])
    assert cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3", "-m", "picstory",
                       "--debug", "train", "DATA", "--epochs", "2"]
    assert launch.torchrun_command(2, ["DATA", "--nproc=2"])[-2:] == ["train", "DATA"]


def test_launch_refuses_or_warns(monkeypatch, capsys):
    with pytest.raises(UserError, match="at least 1"):
        launch.check_nproc(0, "cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="under torchrun"):
        launch.check_nproc(2, "cpu")
    monkeypatch.delenv("WORLD_SIZE")
    launch.check_nproc(launch.cores() + 1, "cpu")  # oversubscribed: slower, still correct
    assert "more than the" in capsys.readouterr().err


def test_torchrun_run_writes_once_and_matches_one_process(tmp_path):
    out = tmp_path / "runs"
    proc = torchrun(["-m", "picstory", "train", *SAME_STEPS, "--out", str(out), "--name", "ddp"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in out.iterdir()] == ["ddp"]  # one run directory, written by rank 0 only
    ddp = out / "ddp"
    for name in RUN_FILES:
        assert (ddp / name).is_file(), name
    assert json.loads((ddp / "env.json").read_text())["world_size"] == 2
    summary = json.loads((ddp / "summary.json").read_text())
    n_val = sum(summary["class_counts"]["val"].values())
    confusions = json.loads((ddp / "history.json").read_text())["confusion"]
    assert [sum(map(sum, c)) for c in confusions] == [n_val, n_val]  # every validation image counted once

    flags = dict(zip(SAME_STEPS[1::2], SAME_STEPS[2::2]))
    one = picstory.train("builtin:digits", out=str(tmp_path / "one"), progress=False,
                         **{k.lstrip("-").replace("-", "_"): v for k, v in flags.items() if k != "--quiet"})
    rows = [json.loads((p / "summary.json").read_text()) for p in (ddp, one.path)]
    for row in rows:  # both ranks took the stop decision together (else one would wait in all-reduce and time out)
        assert row["epochs_run"] == 2 and row["stop_reason"].startswith("early stopping")
    for key in ("val_accuracy", "test_accuracy"):
        assert abs(rows[0][key] - rows[1][key]) <= 1.01 / n_val, key
    metrics = [(p / "metrics.csv").read_text().splitlines()[1:] for p in (ddp, one.path)]
    for a, b in zip(*metrics):
        for col in (3, 5):  # train_loss, val_loss
            assert abs(float(a.split(",")[col]) - float(b.split(",")[col])) < 1e-3, (a, b)

    # a job killed after epoch 2's checkpoint resumes in 1 process (the checkpoint holds DDP's "module." keys)
    (ddp / "summary.json").unlink()
    resumed = picstory.train(resume=str(ddp), progress=False)
    assert resumed.summary["epochs_run"] == 3 and len((ddp / "metrics.csv").read_text().splitlines()) == 4


FAILING_RANK = textwrap.dedent("""
    import torch
    from types import SimpleNamespace
    from picstory.errors import UserError
    from picstory.training.distributed import barrier, check_same_data, setup

    d = setup(torch.device("cpu"))
    rec = SimpleNamespace(ref=f"img-{d.rank}.png", label="a", split=None)
    try:
        check_same_data(d, SimpleNamespace(records=[rec], spec="DATA"))
    except UserError as e:
        print(f"rank {d.rank} refused: {e}", flush=True)
    if d.rank == 1:
        raise SystemExit("rank 1 fails")
    barrier(d)  # without torchrun ending the job, rank 0 would wait here until the timeout
    print("rank 0 passed the barrier", flush=True)
""")


def test_different_data_is_refused_and_a_failing_rank_ends_the_job(tmp_path):
    script = tmp_path / "failing_rank.py"
    script.write_text(FAILING_RANK)
    proc = torchrun([str(script)], tmp_path)
    assert proc.returncode != 0
    assert proc.stdout.count("sees different data at DATA") == 2  # both ranks refuse, with the same message
    assert "rank 1 fails" in proc.stderr and "passed the barrier" not in proc.stdout


class Counted:
    """A batch iterator that counts what it yielded."""

    def __init__(self, inner):
        self.inner, self.yielded = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __len__(self):
        return len(self.inner)

    def __iter__(self):
        for batch in self.inner:
            self.yielded += 1
            yield batch


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_epoch_reads_back_only_at_its_end():
    from picstory.config import AugmentConfig

    n, k = 96, 4
    x, y = torch.randint(0, 256, (n, 1, 16, 16), dtype=torch.uint8).cuda(), (torch.arange(n) % k).cuda()
    train = Counted(BatchIterator(x, y, 16, (0.5,), (0.25,), augment=AugmentConfig(), device="cuda"))
    val = Counted(BatchIterator(x, y, 16, (0.5,), (0.25,), shuffle=False, device="cuda"))
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, k))
    model = model.cuda().to(memory_format=torch.channels_last)
    learner = Learner(model=model, optimizer=torch.optim.AdamW(model.parameters()), train_batches=train,
                      val_batches=val, lr=1e-3, schedule=lambda s: 1.0, epochs=1, num_classes=k,
                      autocast_dtype=torch.bfloat16, device=torch.device("cuda"))
    learner.train_epoch(), learner.validate()  # warm-up: lazy initialisation may sync once
    train.yielded = val.yielded = 0
    torch.cuda.set_sync_debug_mode("error")  # any host-device synchronisation raises
    try:
        # the first read-back is the epoch's mean: every batch must have run before it
        with pytest.raises(RuntimeError):
            learner.train_epoch()
        assert train.yielded == len(train) == 6
        with pytest.raises(RuntimeError):
            learner.validate()
        assert val.yielded == len(val) == 6
    finally:
        torch.cuda.set_sync_debug_mode("default")
