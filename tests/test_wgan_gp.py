"""04_wgan_gp.py: the gradient penalty, the critic, clipping, n_critic, and the run end to end."""
import copy
import os

import pytest
import torch
import torch.nn as nn
from PIL import Image

from conftest import assert_same_run, grid_size, load, load_script, png_size, read_csv, usage_error, user_error

wgan = load_script("04_wgan_gp")

# fake data at 16x16 (s = 4): 32 images in batches of 4 = 8 batches, 1 iteration of 5 critic
# steps an epoch at the default n_critic
TINY = ["--dataset", "fake", "--image-size", "16", "--batch-size", "4", "--workers", "0"]


def train(out, *extra):
    assert wgan.main(TINY + ["--out", str(out)] + [str(a) for a in extra]) == 0
    return out


def error_of(argv):
    return user_error(wgan.main, argv)


class Linear(nn.Module):
    """f(x) = w.x + b: its gradient is w at every point, so GP = (|w| - 1)^2 exactly."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)
        self.b = nn.Parameter(torch.tensor(0.3))

    def forward(self, x):
        return x.flatten(1) @ self.w.flatten() + self.b


def test_gradient_penalty_of_a_linear_critic():
    torch.manual_seed(0)
    w = torch.randn(1, 4, 4)
    critic = Linear(w)
    real, fake = torch.randn(6, 1, 4, 4), torch.randn(6, 1, 4, 4)
    gp = wgan.gradient_penalty(critic, real, fake)
    torch.testing.assert_close(gp, (w.norm() - 1) ** 2)
    # a critic with |w| = 1 is exactly 1-Lipschitz: no penalty
    assert wgan.gradient_penalty(Linear(w / w.norm()), real, fake).item() == pytest.approx(0, abs=1e-10)


def test_gradient_penalty_reaches_the_critics_weights():
    """create_graph=True: the penalty's own gradient flows back into the critic. For the linear
    critic, d/dw (|w| - 1)^2 = 2 (|w| - 1) w / |w|."""
    w = torch.randn(1, 4, 4)
    critic = Linear(w.clone())
    wgan.gradient_penalty(critic, torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)).backward()
    torch.testing.assert_close(critic.w.grad, 2 * (w.norm() - 1) * w / w.norm())
    # and through a real critic, every weight gets one (the biases do not: with LeakyReLU the
    # gradient with respect to the input is piecewise constant in them)
    netD = wgan.Critic(1, 8)
    wgan.gradient_penalty(netD, torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)).backward()
    for name, p in netD.named_parameters():
        if name.endswith("weight"):
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_penalty_is_per_sample():
    """One alpha per sample: the penalty of a batch is the mean of each sample's penalty alone."""
    netD = wgan.Critic(1, 8)
    real, fake = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    torch.manual_seed(1)
    together = wgan.gradient_penalty(netD, real, fake)
    torch.manual_seed(1)
    alphas = torch.rand(4, 1, 1, 1)
    alone = []
    for k in range(4):
        x = (alphas[k] * real[k:k + 1] + (1 - alphas[k]) * fake[k:k + 1]).requires_grad_(True)
        g, = torch.autograd.grad(netD(x).sum(), x)
        alone.append((g.norm() - 1) ** 2)
    torch.testing.assert_close(together, torch.stack(alone).mean())


def test_networks():
    for size, s in ((28, 7), (64, 16), (16, 4)):
        netG, netD = wgan.Generator(100, 1, size), wgan.Critic(1, size)
        x = netG(torch.randn(3, 100))
        assert x.shape == (3, 1, size, size) and x.abs().max() <= 1
        assert netD(x).shape == (3,)
        assert netD.net[-1].in_features == 128 * s * s
    netD = wgan.Critic(3, 28)
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.Sigmoid)) for m in netD.modules())
    # MNIST sizes, hand-counted: G = Linear + BN1d + two transposed convs + BN2d; critic = two convs + Linear
    netG, netD = wgan.Generator(100, 1, 28), wgan.Critic(1, 28)
    g = (100 * 12544 + 12544) + 2 * 12544 + (256 * 128 * 16 + 128) + 2 * 128 + (128 * 16 + 1)
    d = (16 * 64 + 64) + (64 * 128 * 16 + 128) + (128 * 49 + 1)
    assert sum(p.numel() for p in netG.parameters()) == g
    assert sum(p.numel() for p in netD.parameters()) == d


def saturated(netG):
    """The share of G's pixels (train mode, MNIST sizes) that the Tanh has pinned near ±1."""
    torch.manual_seed(0)
    with torch.no_grad():
        return (netG(torch.randn(64, 100, device=next(netG.parameters()).device)).abs() > 0.9).float().mean().item()


def test_G_does_not_start_saturated(tmp_path, monkeypatch):
    """With PyTorch's default ConvTranspose2d init half of G's pixels start pinned at ±1, where the
    Tanh passes no gradient; the script's weights_init starts them all in the Tanh's live range."""
    torch.manual_seed(0)
    assert saturated(wgan.Generator(100, 1, 28)) > 0.3  # PyTorch's default: the trap
    models = []  # the models as main() builds them, caught before any training step
    monkeypatch.setattr(wgan.common.Run, "parallel", lambda self, m: models.append(copy.deepcopy(m)) or m)
    train(tmp_path / "run", "--max-steps", 1, "--image-size", 28)
    assert isinstance(models[0], wgan.Generator) and saturated(models[0]) < 0.01
    assert models[0].conv[3].weight.std() < 0.025  # N(0, 0.02)


@pytest.mark.gif
def test_a_run_writes_every_output(tmp_path, capsys):
    out = train(tmp_path / "run", "--n-critic", 2, "--epochs", 2, "--sample-every", 3, "--log-every", 2)
    log = capsys.readouterr().out
    assert "8 batches of 4 per epoch" in log and "4 iterations of 2 critic steps + 1 G step" in log
    assert "[1/2][2/4]\tLoss_C: " in log and "\tW: " in log and "\tGP: " in log
    snaps = sorted(p for p in os.listdir(out) if p.startswith("fake_samples_"))
    assert snaps == [f"fake_samples_{k:06d}.png" for k in (0, 3, 6, 7)]
    assert png_size(out / snaps[-1]) == grid_size(64, side=16)
    with Image.open(out / "progress.gif") as gif:
        assert gif.n_frames == 4
    rows = read_csv(out / "losses.csv")
    assert [int(r["iters"]) for r in rows] == list(range(8))
    for r in rows:  # the critic's loss is -W + lambda GP
        assert float(r["Loss_C"]) == pytest.approx(-float(r["W"]) + 10 * float(r["GP"]), abs=1e-3)
    assert load_script("sample").main([str(out / "checkpoint.pt"), "--n", "5"]) == 0
    assert png_size(out / "generated.png") == grid_size(5, nrow=3, side=16)


def test_G_steps_once_per_n_critic_critic_steps(tmp_path):
    out = train(tmp_path / "run", "--n-critic", 3, "--max-steps", 2, "--epochs", 5)
    ckpt = load(out / "checkpoint.pt")
    steps = lambda opt: {int(s["step"]) for s in ckpt[opt]["state"].values()}
    assert steps("optimizerD") == {6} and steps("optimizerG") == {2}


def test_clipping_keeps_every_critic_weight_in_range(tmp_path, capsys):
    out = train(tmp_path / "run", "--clip", 0.01, "--max-steps", 2, "--epochs", 5)
    assert "RMSprop, lr 5e-05, no penalty" in capsys.readouterr().out
    ckpt = load(out / "checkpoint.pt")
    weights = torch.cat([v.flatten() for v in ckpt["netD"].values()])
    assert weights.abs().max() <= 0.01 and weights.abs().max() > 0.009  # clipped, and some at the bound
    assert all(float(r["GP"]) == 0 for r in read_csv(out / "losses.csv"))
    assert ckpt["optimizerD"]["param_groups"][0]["lr"] == 5e-5
    assert "alpha" in ckpt["optimizerD"]["param_groups"][0]  # RMSprop's, not Adam's


@pytest.mark.cpu_only("bit for bit needs deterministic kernels; cuDNN's benchmark mode picks its algorithms per process")
def test_resume_is_bit_identical(tmp_path):
    straight = train(tmp_path / "a", "--n-critic", 2, "--epochs", 2)
    part = train(tmp_path / "b", "--n-critic", 2, "--epochs", 2, "--max-steps", 3)  # inside epoch 0
    assert wgan.main(["--resume", str(part / "checkpoint.pt"), "--workers", "0"]) == 0
    assert load(part / "checkpoint.pt")["iters"] == 8
    assert_same_run(straight, part)


def test_image_sizes(tmp_path, capsys):
    assert "must be a multiple of 4" in error_of(TINY + ["--image-size", "30"])
    train(tmp_path / "run", "--image-size", "12", "--max-steps", 1)
    assert "images 3x12x12" in capsys.readouterr().out


@pytest.mark.parametrize("flags, says", [
    (["--clip", "0"], "must be in (0, 1]"),
    (["--n-critic", "0"], "invalid choice: 0"),
    (["--lambda-gp", "-1"], "must be 0 or more, got -1"),
    (["--lambda-gp", "nan"], "must be 0 or more, got nan"),
    (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
])
def test_bad_flags(flags, says, capsys):
    assert says in usage_error(wgan.main, flags, capsys)
