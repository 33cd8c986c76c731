"""The speed features (docs/speed.md): channels_last, --amp, the in-memory datasets.

Speed itself is measured by benchmarks/step_time.py, not here: these tests check that the
faster paths compute the same thing.
"""
import copy

import pytest
import torch

import common
from conftest import load_script, read_csv

CONV = {  # script: tiny flags
    "02_dcgan": ["--ngf", "8", "--ndf", "8"],
    "03_cgan": ["--ngf", "8", "--ndf", "8"],
    "04_wgan_gp": ["--n-critic", "2"],
}


def tiny_models(name, device):
    """(netG, netD, G's inputs, a real batch and D's extra inputs) of a conv script, on device
    (drawn on the CPU, so the same numbers on every device)."""
    torch.manual_seed(0)
    m = load_script(name)
    if name == "02_dcgan":
        netG, netD = m.Generator(16, 8, 3), m.Discriminator(3, 8)
        netG.apply(m.weights_init), netD.apply(m.weights_init)
        g_in, real, d_extra = (torch.randn(4, 16, 1, 1),), torch.randn(4, 3, 64, 64), ()
    elif name == "03_cgan":
        netG, netD = m.Generator(16, 8, 1, 10), m.Discriminator(1, 8, 10)
        netG.apply(m.weights_init), netD.apply(m.weights_init)
        onehot, fill = m.label_tables(10, 32, torch.device("cpu"))
        y = torch.tensor([1, 7, 3, 3])
        g_in, real, d_extra = (torch.randn(4, 16, 1, 1), onehot[y]), torch.randn(4, 1, 32, 32), (fill[y],)
    else:
        netG, netD = m.Generator(16, 1, 28), m.Critic(1, 28)
        g_in, real, d_extra = (torch.randn(4, 16),), torch.randn(4, 1, 28, 28), ()
    on = lambda tensors: tuple(t.to(device) for t in tensors)
    return netG.to(device), netD.to(device), on(g_in), real.to(device), on(d_extra)


def forward_backward(netG, netD, g_in, real, d_extra):
    """D's output on G's images and on a real batch, and every gradient of both models."""
    out = netD(netG(*g_in), *d_extra).sum() - netD(real, *d_extra).sum()
    out.backward()
    grads = [p.grad.clone() for p in list(netG.parameters()) + list(netD.parameters())]
    return out.detach(), grads


@pytest.mark.parametrize("name", CONV)
def test_channels_last_computes_the_same_numbers(name, device, monkeypatch):
    # Both layouts on the same device (oneDNN on the CPU, cuDNN on CUDA) in true float32, so
    # they differ by the order of the sums only (up to 7e-6 of the scale on this project's CPU),
    # while a layout bug (a channel read from the wrong place) is as large as the numbers. On
    # CUDA, torch's default TF32 would round each product to 10 bits, differently for each
    # layout's algorithm (about 1e-3), and benchmark mode, left on by an earlier script run in
    # this process, would pick the algorithms by timing, anew in each process.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    netG, netD, g_in, real, d_extra = tiny_models(name, device)
    G2, D2 = copy.deepcopy(netG), copy.deepcopy(netD)
    out, grads = forward_backward(netG, netD, g_in, real, d_extra)
    G2, D2 = G2.to(memory_format=torch.channels_last), D2.to(memory_format=torch.channels_last)
    conv_weights = [p for p in list(G2.parameters()) + list(D2.parameters()) if p.dim() == 4]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in conv_weights)
    assert any(not w.is_contiguous() for w in conv_weights)  # (one input channel: both layouts)
    out_cl, grads_cl = forward_backward(G2, D2, g_in, real.contiguous(memory_format=torch.channels_last),
                                        d_extra)
    torch.testing.assert_close(out_cl, out, rtol=1e-4, atol=1e-4)
    # Float rounding differs with the order of the sums: compare against the gradients' scale
    # (a gradient that should be 0, like a bias before BatchNorm, is rounding noise either way)
    scale = max(g.abs().max() for g in grads)
    for g_cl, g in zip(grads_cl, grads):
        assert (g_cl - g).abs().max() <= 1e-4 * scale


def capture_models(monkeypatch):
    """The models each script passes to run.parallel (after it has laid them out)."""
    models = []
    monkeypatch.setattr(common.Run, "parallel", lambda self, m: models.append(m) or m)
    return models


def run(name, out, *extra):
    """One iteration of the script on fake data; its losses.csv row."""
    argv = ["--dataset", "fake", "--batch-size", "8", "--workers", "0", "--max-steps", "1",
            "--out", str(out), *CONV[name], *extra]
    assert load_script(name).main(argv) == 0
    return read_csv(out / "losses.csv")


@pytest.mark.parametrize("name", CONV)
def test_channels_last_training_and_amp_close_to_float32(name, tmp_path, monkeypatch, capsys):
    models = capture_models(monkeypatch)
    fp32 = run(name, tmp_path / "fp32")
    # the script trains in channels_last: its models as it hands them to run.parallel
    conv_weights = [p for m in models for p in m.parameters() if p.dim() == 4]
    assert len(models) == 2 and conv_weights
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in conv_weights)
    monkeypatch.setattr(common, "_native_bf16", lambda device: True)  # as on a CPU with AVX512-BF16
    dtypes = set()
    original = torch.nn.Conv2d.forward
    monkeypatch.setattr(torch.nn.Conv2d, "forward",
                        lambda self, x: dtypes.add(original(self, x).dtype) or original(self, x))
    amp = run(name, tmp_path / "amp", "--amp")
    assert "forward passes in bfloat16" in capsys.readouterr().out
    assert torch.bfloat16 in dtypes  # autocast ran D's convolutions in bfloat16
    # The iteration starts from the same weights, data and noise: its numbers differ by
    # bfloat16 rounding only (8 bits of mantissa), not by a different computation
    columns = [c for c in fp32[0] if c not in ("epoch", "i", "iters")]
    for c in columns:
        a, b = float(fp32[0][c]), float(amp[0][c])
        assert abs(a - b) <= 0.03 * abs(a) + 0.02, (c, a, b)
    assert any(float(fp32[0][c]) != float(amp[0][c]) for c in columns)  # it did run in bfloat16


@pytest.mark.cpu_only("bit for bit needs deterministic kernels; cuDNN's benchmark mode picks its algorithms per process")
def test_amp_without_native_bfloat16_says_so_and_trains_in_float32(tmp_path, monkeypatch, capsys):
    fp32 = run("02_dcgan", tmp_path / "fp32")
    monkeypatch.setattr(common, "_native_bf16", lambda device: False)
    amp = run("02_dcgan", tmp_path / "amp", "--amp")
    assert "no native bfloat16" in capsys.readouterr().out
    assert amp == fp32


def test_gradient_penalty_runs_in_float32_under_amp(tmp_path, monkeypatch):
    """With --amp the critic computes in bfloat16, except inside gradient_penalty, where
    common.float32() keeps its forward (and so the double backward) in float32."""
    wgan = load_script("04_wgan_gp")
    monkeypatch.setattr(common, "_native_bf16", lambda device: True)
    inside, seen = [], set()
    penalty = wgan.gradient_penalty

    def recording_penalty(critic, real, fake):
        inside.append(True)
        gp = penalty(critic, real, fake)
        inside.pop()
        assert gp.dtype == torch.float32
        return gp

    original = torch.nn.Conv2d.forward
    monkeypatch.setattr(torch.nn.Conv2d, "forward",
                        lambda self, x: seen.add((bool(inside), original(self, x).dtype)) or original(self, x))
    monkeypatch.setattr(wgan, "gradient_penalty", recording_penalty)
    run("04_wgan_gp", tmp_path, "--amp")
    assert seen == {(True, torch.float32), (False, torch.bfloat16)}


def test_amp_models_copy_with_their_own_weights(monkeypatch):
    """common.amp binds the autocast forward to the model, so a deepcopy (an EMA copy, say)
    runs its own weights, not the original's."""
    monkeypatch.setattr(common, "_native_bf16", lambda device: True)
    model, = common.amp(torch.device("cpu"), True, torch.nn.Linear(4, 1))
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.weight.zero_(), twin.bias.zero_()
    x = torch.ones(2, 4)
    assert torch.equal(twin(x), torch.zeros(2, 1)) and not torch.equal(model(x), torch.zeros(2, 1))
    assert model(x).dtype == torch.float32  # computed in bfloat16, handed back in float32


def test_pytest_device_cuda_without_a_gpu_stops_at_once(monkeypatch):
    """`python -m pytest --device cuda` where torch sees no GPU: one line, not 100 failures."""
    import types
    import conftest
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = types.SimpleNamespace(getoption=lambda name: "cuda", addinivalue_line=lambda *a: None)
    with pytest.raises(pytest.exit.Exception, match="--device cuda: torch .* sees no CUDA GPU"):
        conftest.pytest_configure(config)
