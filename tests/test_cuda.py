"""What only means something on an NVIDIA GPU: `python -m pytest --device cuda` runs these (and
every end-to-end test on CUDA); elsewhere they skip, saying so."""
import subprocess

import pytest
import torch

from conftest import ROOT, load, load_script, read_csv, torchrun_cmd

pytestmark = pytest.mark.cuda_only

TINY = ["--dataset", "fake", "--ngf", "8", "--ndf", "8", "--batch-size", "8", "--workers", "0"]


def test_checkpoints_move_between_cuda_and_the_cpu(tmp_path, monkeypatch):
    """A run saved on the GPU goes on on the GPU (with its CUDA random state), on the CPU and
    back (the CUDA random state stays with the machine that has one; the weights and optimizers
    move)."""
    dcgan, out = load_script("02_dcgan"), tmp_path / "run"
    assert dcgan.main(TINY + ["--device", "cuda", "--max-steps", "2", "--out", str(out)]) == 0
    ckpt = str(out / "checkpoint.pt")
    saved = load(ckpt)["rng"]
    assert saved["device_type"] == "cuda"
    restored, set_rng_state = [], torch.cuda.set_rng_state
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, *a: restored.append(state) or
                        set_rng_state(state, *a))
    assert dcgan.main(["--resume", ckpt, "--device", "cuda", "--max-steps", "3"]) == 0
    assert len(restored) == 1 and torch.equal(restored[0], saved["device"])
    assert dcgan.main(["--resume", ckpt, "--device", "cpu", "--max-steps", "4"]) == 0
    assert load(ckpt)["rng"]["device_type"] == "cpu" and len(restored) == 1
    assert dcgan.main(["--resume", ckpt, "--device", "cuda", "--max-steps", "6"]) == 0
    assert load(ckpt)["iters"] == 6 and len(read_csv(out / "losses.csv")) == 6


# The loop's host syncs: tests/test_devices.py, with torch.cuda.set_sync_debug_mode on CUDA.


def test_torchrun_with_one_gpu_process_uses_nccl_and_saves(tmp_path):
    jobs = [["job", "02_dcgan", TINY + ["--device", "cuda", "--max-steps", "2", "--out", "run"], 32]]
    r = subprocess.run(torchrun_cmd(tmp_path, jobs, nproc=1), cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    rank0 = load(tmp_path / "job" / "rank0.pt")
    assert rank0["status"] == 0 and rank0["backend"] == "nccl"
    assert rank0["types"] == ["DistributedDataParallel"] * 2
    assert load(tmp_path / "job" / "rank0" / "run" / "checkpoint.pt")["iters"] == 2
