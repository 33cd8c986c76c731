"""The speed features (docs/speed.md): channels_last, the in-memory datasets.

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
def test_the_scripts_train_in_channels_last(name, tmp_path, monkeypatch):
    models = capture_models(monkeypatch)
    run(name, tmp_path / "run")
    # the script trains in channels_last: its models as it hands them to run.parallel
    conv_weights = [p for m in models for p in m.parameters() if p.dim() == 4]
    assert len(models) == 2 and conv_weights
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in conv_weights)


def test_a_small_dataset_is_transformed_once_into_memory(tmp_path):
    """What the DataLoader serves from memory is exactly what the transform makes, image by image
    and label by label; a transform with a step that differs each epoch is left to run each
    time, and so is a dataset too large for IN_MEMORY."""
    import torchvision.datasets as dset
    import torchvision.transforms as T
    steps = [T.Resize(16), T.CenterCrop(16), T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)]
    data = dset.FakeData(size=12, image_size=(3, 20, 24), num_classes=4, transform=T.Compose(steps))
    kept = common.in_memory(data)
    assert isinstance(kept, torch.utils.data.TensorDataset) and kept.classes == ["0", "1", "2", "3"]
    for k in (0, 5, 11):
        image, label = data[k]
        assert torch.equal(kept[k][0], image) and kept[k][1] == label
    flipping = dset.FakeData(size=12, image_size=(3, 20, 24), transform=T.Compose([T.RandomHorizontalFlip()] + steps))
    assert common.in_memory(flipping) is flipping
    original = common.IN_MEMORY
    try:
        common.IN_MEMORY = 12 * 3 * 16 * 16 * 4 - 1  # a byte short
        assert common.in_memory(data) is data
    finally:
        common.IN_MEMORY = original


def test_pytest_device_cuda_without_a_gpu_stops_at_once(monkeypatch):
    """`python -m pytest --device cuda` where torch sees no GPU: one line, not 100 failures."""
    import types
    import conftest
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = types.SimpleNamespace(getoption=lambda name: "cuda", addinivalue_line=lambda *a: None)
    with pytest.raises(pytest.exit.Exception, match="--device cuda: torch .* sees no CUDA GPU"):
        conftest.pytest_configure(config)
