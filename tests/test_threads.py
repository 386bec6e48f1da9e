"""Thread policy under contention: cores from affinity and cgroup quota, the live-run registry, passive waiting."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from picstory import device


def test_cgroup_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert device.cgroup_cpu_quota(str(tmp_path)) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert device.cgroup_cpu_quota(str(tmp_path)) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert device.cgroup_cpu_quota(str(tmp_path)) == 0.5


def test_cores_respect_quota(monkeypatch):
    monkeypatch.setattr(device, "cgroup_cpu_quota", lambda: 1.5)
    assert device.cores() == min(2, len(os.sched_getaffinity(0)))
    monkeypatch.setattr(device, "cgroup_cpu_quota", lambda: 0.2)
    assert device.cores() == 1


def test_registry_counts_live_runs_and_drops_stale_ones(monkeypatch):
    monkeypatch.setattr(device, "cores", lambda: 4)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert device.live_runs() == 1 and device.shared_threads() == 4  # nobody registered: all cores
    device.register_run()
    live = device._live_dir()
    assert (live / str(os.getpid())).is_file() and device.live_runs() == 1
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (live / str(other.pid)).write_text(device._proc_start(other.pid))
        (live / "999999999").write_text("123")  # a killed run's file: its pid is gone
        (live / str(os.getppid())).write_text("1")  # a reused pid: the start time does not match
        assert device.live_runs() == 2 and device.shared_threads() == 2
        assert not (live / "999999999").exists() and not (live / str(os.getppid())).exists()
        monkeypatch.setattr(device, "cores", lambda: 1)
        assert device.shared_threads() == 1  # more runs than cores: one thread each
    finally:
        other.kill()
        other.wait()
    assert device.live_runs() == 1
    device.unregister_run()
    assert not (live / str(os.getpid())).exists()


def test_torchrun_ranks_count_before_they_register(monkeypatch):
    monkeypatch.setattr(device, "cores", lambda: 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert device.shared_threads() == 2


def test_passive_wait_policy_is_a_default():
    env = device.passive_wait_env({})
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert device.passive_wait_env({"OMP_WAIT_POLICY": "ACTIVE"})["OMP_WAIT_POLICY"] == "ACTIVE"


def test_cli_sets_passive_before_torch_loads():
    code = ("import os, sys; from picstory.cli import main; main(['models', 'picnet-s']); "
            "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split()[-2] == "PASSIVE"


@pytest.mark.parametrize("age", [device.process_age()])
def test_process_age(age):
    assert 0 < age < 24 * 3600
