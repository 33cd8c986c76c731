"""What a GPU would break, checked on whatever device the tests run on: host syncs in the loop,
checkpoints a machine without the GPU must load, the noise --seed decides. On the CPU the meta
device stands in for the GPU where a second device is needed."""
import os
import shutil
import sys

import pytest
import torch

import common
from conftest import ROOT, load_script, user_error

TINY = {  # script: tiny flags
    "01_mlp_gan": [],
    "02_dcgan": ["--ngf", "8", "--ndf", "8"],
    "03_cgan": ["--ngf", "8", "--ndf", "8"],
    "04_wgan_gp": ["--n-critic", "2"],
}


def test_checkpoints_hold_cpu_tensors(tmp_path, device):
    """checkpoint.pt and netG.pt load on a machine without the GPU they were trained on, with
    torch.load(path, weights_only=True) and no map_location (docs/shared.md). On the CPU it
    cannot fail: it is for pytest --device cuda (the next test moves meta tensors)."""
    out = tmp_path / "run"
    assert load_script("02_dcgan").main(["--dataset", "fake", "--batch-size", "8", "--workers", "0",
                                         "--max-steps", "2", "--out", str(out), *TINY["02_dcgan"]]) == 0
    for name in ("checkpoint.pt", "netG.pt"):
        devices, todo = set(), [torch.load(out / name, weights_only=True)]
        while todo:
            x = todo.pop()
            if torch.is_tensor(x):
                devices.add(x.device.type)
            elif isinstance(x, dict):
                todo += x.values()
            elif isinstance(x, (list, tuple)):
                todo += x
        assert devices == {"cpu"}, name


def test_a_state_moves_to_the_cpu_however_deep(monkeypatch):
    """common._cpu on an optimizer's state_dict with tensors on another device (meta here,
    which cannot really be copied: its .cpu() is made to give zeros of its shape)."""
    cpu = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda t: torch.zeros(t.shape) if t.is_meta else cpu(t))
    state = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2, device="meta")}},
             "param_groups": [{"params": [0], "betas": (0.5, 0.999)}], "fixed": [torch.ones(1, device="meta")]}
    moved = common._cpu(state)
    assert moved["state"][0]["exp_avg"].device.type == "cpu" and moved["fixed"][0].device.type == "cpu"
    assert moved["state"][0]["step"] is state["state"][0]["step"]  # already there: not copied
    assert moved["param_groups"] == [{"params": [0], "betas": (0.5, 0.999)}]


class HostSync(Exception):
    pass


@pytest.mark.parametrize("script", TINY)
def test_the_loop_never_waits_for_the_device_between_log_lines(tmp_path, monkeypatch, device, script):
    """Iteration 0 logs and takes a snapshot (it may wait, as it should), iteration 7 ends in a
    checkpoint; from run.append of iteration 1 to that of iteration 6 the loop must not make the
    host wait once. On CUDA torch.cuda.set_sync_debug_mode("error") raises at any host sync;
    elsewhere the calls that read a tensor's value (.item(), .tolist(), bool(), an f-string, a
    nonzero(), ...) raise when the scripts or common.py make them."""
    window, seen = [False], []
    if device == "cuda":
        guard = lambda on: torch.cuda.set_sync_debug_mode("error" if on else 0)
    else:
        guard = lambda on: window.__setitem__(0, on)
        ours = {f"{ROOT}/{name}.py" for name in (*TINY, "common")}
        reads = [(torch.Tensor, name) for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__",
                 "__int__", "__index__", "__format__", "__repr__", "__str__", "nonzero", "unique", "masked_select")]
        for owner, name in reads + [(torch, name) for name in ("nonzero", "unique", "masked_select")]:
            def spy(*a, _original=getattr(owner, name), _name=name, **k):
                caller = sys._getframe(1)
                if window[0] and caller.f_code.co_filename in ours:
                    raise HostSync(f"{_name} at {caller.f_code.co_filename}:{caller.f_lineno}")
                return _original(*a, **k)
            monkeypatch.setattr(owner, name, spy)
    append = common.Run.append

    def guarded(self, **values):
        append(self, **values)
        seen.append(self.iters)
        guard(1 <= self.iters <= 5)

    monkeypatch.setattr(common.Run, "append", guarded)
    try:
        # 16 batches of 2 an epoch: no epoch ends inside (04 takes 2 an iteration: 8 iterations)
        assert load_script(script).main(["--dataset", "fake", "--batch-size", "2", "--workers", "0",
                                         "--log-every", "1000", "--max-steps", "8", "--sample-every",
                                         "1000", "--out", str(tmp_path), *TINY[script]]) == 0
    finally:
        guard(False)
    assert seen == list(range(8))


@pytest.mark.parametrize("script", ["02_dcgan", "03_cgan"])
def test_the_seed_decides_the_noise_on_every_device(tmp_path, device, script):
    """--dataset fake: torchvision's FakeData seeds torch's generators with each image's index
    and gives back the CPU's alone; without common.load_dataset keeping the GPU's state around
    it, every seed drew the same noise on CUDA or MPS (on the CPU this held before as well)."""
    fixed = []
    for seed in (1, 2, 1):
        out = tmp_path / str(len(fixed))
        assert load_script(script).main(["--dataset", "fake", "--batch-size", "8", "--workers", "0",
                                         "--max-steps", "1", "--seed", str(seed), "--out", str(out),
                                         *TINY[script]]) == 0
        fixed.append(torch.load(out / "checkpoint.pt", weights_only=True)["fixed_noise"])
    assert not torch.equal(fixed[0], fixed[1]) and torch.equal(fixed[0], fixed[2])


def stand_in_nvidia_smi(folder, monkeypatch):
    """An nvidia-smi on PATH (the driver's tool), on a torch that cannot use a GPU."""
    smi = folder / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI 470.57.02    Driver Version: 470.57.02    CUDA Version: 11.4'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.skipif(sys.platform == "win32", reason="a shell script stands in for nvidia-smi")
def test_a_gpu_torch_cannot_use_is_named_and_the_run_goes_on_on_the_cpu(tmp_path, monkeypatch, capsys):
    """Issue 29: an NVIDIA GPU that this torch cannot use (a driver too old for the build's CUDA,
    or a CPU-only build): --device auto says so in one line, with the build, and trains on the
    CPU; --device cuda stops with the build named (exit status 1, no traceback), not torch's."""
    stand_in_nvidia_smi(tmp_path, monkeypatch)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    dcgan = load_script("02_dcgan")
    flags = ["--dataset", "fake", "--batch-size", "8", "--workers", "0", "--max-steps", "1", *TINY["02_dcgan"]]
    assert dcgan.main(flags + ["--device", "auto", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    said = [line for line in out.splitlines() if "NVIDIA GPU" in line]
    assert len(said) == 1 and "Device: cpu" in out
    assert f"this torch ({torch.__version__}, CUDA 13.0) cannot use it" in said[0] and "README, Your torch" in said[0]
    with pytest.raises(SystemExit) as e:
        common.cli(dcgan.main, flags + ["--device", "cuda", "--out", str(tmp_path / "cuda")])
    assert e.value.code == (f"error: --device cuda: this torch ({torch.__version__}, CUDA 13.0) cannot use "
                            "a GPU here (README, Your torch)")
    monkeypatch.setattr(torch.version, "cuda", None)  # a CPU-only build
    msg = user_error(dcgan.main, flags + ["--device", "cuda", "--out", str(tmp_path / "cpu_only")])
    assert "CPU-only) cannot use a GPU here" in msg and not (tmp_path / "cpu_only").exists()


def test_without_an_nvidia_gpu_nothing_is_said(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    common.check_device("auto")
    assert capsys.readouterr().out == ""


def test_a_resize_without_a_kernel_on_the_device_runs_on_the_cpu(monkeypatch):
    """Issue 29: on an Apple GPU before torch 2.8, antialiased bicubic resizing has no MPS kernel
    and raises NotImplementedError; evaluate.py then resizes on the CPU, to the same numbers."""
    evaluate = load_script("evaluate")
    images = torch.rand(3, 1, 64, 64) * 2 - 1
    expected = evaluate.resize(images, 28)
    interpolate, calls = torch.nn.functional.interpolate, []

    def no_kernel_the_first_time(x, *a, **k):
        calls.append(x.device.type)
        if len(calls) == 1:
            raise NotImplementedError("The operator 'aten::_upsample_bicubic2d_aa.out' is not currently "
                                      "implemented for the MPS device.")
        return interpolate(x, *a, **k)

    monkeypatch.setattr(evaluate.F, "interpolate", no_kernel_the_first_time)
    assert torch.equal(evaluate.resize(images, 28), expected) and len(calls) == 2
