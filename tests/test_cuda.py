"""What only means something on an NVIDIA GPU: `python -m pytest --device cuda` runs these (and
every end-to-end test on CUDA); elsewhere they skip, saying so."""
import json
import os
import subprocess
import sys

import pytest
import torch

import common
from conftest import ROOT, load, load_script, read_csv

pytestmark = pytest.mark.cuda_only

TINY = ["--dataset", "fake", "--ngf", "8", "--ndf", "8", "--batch-size", "8", "--workers", "0"]


def test_checkpoints_move_between_cuda_and_the_cpu(tmp_path):
    """A run saved on the GPU goes on on the CPU and back (the CUDA random state stays with
    the machine that has one; the weights and optimizers move)."""
    dcgan, out = load_script("02_dcgan"), tmp_path / "run"
    assert dcgan.main(TINY + ["--device", "cuda", "--max-steps", "2", "--out", str(out)]) == 0
    assert load(out / "checkpoint.pt")["rng"]["device_type"] == "cuda"
    ckpt = str(out / "checkpoint.pt")
    assert dcgan.main(["--resume", ckpt, "--device", "cpu", "--max-steps", "4"]) == 0
    assert load(ckpt)["rng"]["device_type"] == "cpu"
    assert dcgan.main(["--resume", ckpt, "--device", "cuda", "--max-steps", "6"]) == 0
    assert load(ckpt)["iters"] == 6 and len(read_csv(out / "losses.csv")) == 6


@pytest.mark.parametrize("name", ["02_dcgan", "03_cgan", "04_wgan_gp"])
def test_amp_on_cuda_trains_in_bfloat16_with_float32_losses(tmp_path, monkeypatch, name):
    module, dtypes = load_script(name), set()
    conv = torch.nn.Conv2d.forward
    monkeypatch.setattr(torch.nn.Conv2d, "forward",
                        lambda self, x: dtypes.add(conv(self, x).dtype) or conv(self, x))
    sizes = ["--n-critic", "2"] if name == "04_wgan_gp" else ["--ngf", "8", "--ndf", "8"]
    assert module.main(["--dataset", "fake", "--batch-size", "8", "--workers", "0", *sizes,
                        "--device", "cuda", "--amp", "--max-steps", "3", "--out", str(tmp_path)]) == 0
    assert torch.bfloat16 in dtypes  # the convolutions ran in bfloat16
    rows = read_csv(tmp_path / "losses.csv")
    assert len(rows) == 3 and all(float(v) == float(v) for r in rows for v in r.values())
    # 04's penalty in float32 under --amp: tests/test_speed.py checks it on this device too


def test_the_loop_never_waits_for_the_gpu_between_log_lines(tmp_path, monkeypatch):
    """torch.cuda.set_sync_debug_mode("error") raises at any host sync (an .item(), a blocking
    copy, a tensor's value used in Python). Iteration 0 logs and takes a snapshot (syncs, as it
    should), iteration 4 ends in a checkpoint; from run.append of iteration 1 to run.append of
    iteration 4 the loop must not sync once."""
    for name, extra in (("02_dcgan", ["--ngf", "8", "--ndf", "8"]), ("03_cgan", ["--ngf", "8", "--ndf", "8"]),
                        ("04_wgan_gp", ["--n-critic", "2"]), ("01_mlp_gan", [])):
        append, seen = common.Run.append, []

        def guarded(self, **values):
            append(self, **values)
            seen.append(self.iters)
            torch.cuda.set_sync_debug_mode("error" if 1 <= self.iters <= 3 else 0)

        monkeypatch.setattr(common.Run, "append", guarded)
        try:
            assert load_script(name).main(["--dataset", "fake", "--batch-size", "4", "--workers", "0",
                                           "--device", "cuda", "--log-every", "1000", "--max-steps", "5",
                                           "--sample-every", "1000", "--out", str(tmp_path / name), *extra]) == 0
        finally:
            torch.cuda.set_sync_debug_mode(0)
        assert seen == [0, 1, 2, 3, 4], name


def test_torchrun_with_one_gpu_process_uses_nccl_and_saves(tmp_path):
    jobs = [["job", "02_dcgan", TINY + ["--device", "cuda", "--max-steps", "2", "--out", "run"]]]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           os.path.join(ROOT, "tests", "ddp_worker.py"), str(tmp_path), json.dumps(jobs)]
    r = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, FAKE_SIZE="32"), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    rank0 = load(tmp_path / "job" / "rank0.pt")
    assert rank0["status"] == 0 and rank0["types"] == ["DistributedDataParallel"] * 2
    assert load(tmp_path / "job" / "rank0" / "run" / "checkpoint.pt")["iters"] == 2
