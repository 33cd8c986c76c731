"""What a GPU would break, checked on whatever device the tests run on: tensors of two devices
meeting, host syncs in the loop, dtypes under --amp, checkpoints a machine without the GPU must
load. On the CPU the meta device stands in for the GPU where a second device is needed."""
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


def test_the_divergence_check_takes_an_optimizer_on_two_devices():
    """Adam keeps its step counters on the CPU beside the weights' device (unless fused or
    capturable): every check of the weights and the optimizers' state meets both devices."""
    net = nn.Linear(2, 1, device="meta")  # meta: the GPU of a CPU-only test
    optimizer = torch.optim.Adam(net.parameters())
    net(torch.ones(3, 2, device="meta")).sum().backward()
    optimizer.step()
    tensors = common._tensors(net) + common._tensors(optimizer)
    assert {t.device.type for t in tensors} == {"cpu", "meta"}
    with pytest.raises(RuntimeError, match="device"):  # what one stack of both does
        torch.stack([t.isfinite().all() for t in tensors])
    verdict = common._all([t.isfinite() for t in tensors], torch.device("meta"), True)
    assert verdict.device.type == "meta" and verdict.dtype == torch.bool and verdict.dim() == 0
    # and on one device, the verdicts themselves
    cpu = torch.device("cpu")
    assert common._all([torch.ones(2), torch.tensor(float("inf")).isfinite()], cpu, True).item() is False
    assert common._all([torch.ones(2) > 0, torch.tensor(True)], cpu, False).item() is True
    assert common._all([], cpu, True).item() is True and common._all([], cpu, False).item() is False


@pytest.mark.parametrize("capability, native", [((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_amp_counts_only_native_bfloat16_on_a_gpu(monkeypatch, capability, native):
    """A V100 (7.0) or a T4 (7.5) emulates bfloat16, and is_bf16_supported() says yes there."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert common._native_bf16(torch.device("cuda")) is native


def test_amp_keeps_Ds_probability_from_a_float32_logit(monkeypatch):
    """bfloat16 rounds every probability above about 0.998 to 1.0: with D's Sigmoid computed in
    it, a fake at logit 7 would score 1, BCELoss (target 0) would clamp its loss to 100 and pass
    back no gradient. The last layer and the Sigmoid after it compute in float32."""
    monkeypatch.setattr(common, "_native_bf16", lambda device: True)
    netD = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Sigmoid())
    nn.init.constant_(netD[0].weight, 7.0)
    netD, = common.amp(torch.device("cpu"), True, netD)
    output = netD(torch.ones(1, 1)).view(-1)
    loss = nn.BCELoss()(output, torch.zeros(1))
    loss.backward()
    assert output.dtype == torch.float32 and output.item() == torch.sigmoid(torch.tensor(7.0)).item()
    assert abs(loss.item() - 7.0009) < 1e-3 and abs(netD[0].weight.grad.item() - 0.9991) < 1e-3


def test_amp_computes_in_bfloat16_but_the_last_layer(monkeypatch):
    dcgan = load_script("02_dcgan")
    monkeypatch.setattr(common, "_native_bf16", lambda device: True)
    netD, = common.amp(torch.device("cpu"), True, dcgan.Discriminator(3, 8))
    dtypes = []
    for layer in netD.main:
        if isinstance(layer, nn.Conv2d):
            layer.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    assert netD(torch.randn(2, 3, 64, 64)).dtype == torch.float32
    assert dtypes == [torch.bfloat16] * 4 + [torch.float32]


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
