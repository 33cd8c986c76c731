"""What a GPU would break, checked on whatever device the tests run on: host syncs in the loop,
checkpoints a machine without the GPU must load, the noise --seed decides. On the CPU the meta
device stands in for the GPU where a second device is needed."""
import sys

import pytest
import torch
import torch.nn as nn

import common
from conftest import ROOT, load_script

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
