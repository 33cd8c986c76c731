"""01_mlp_gan.py: end to end on fake data, resume, generate, the losses, k, and that it learns."""
import os

import pytest
import torch
import torch.nn as nn
from PIL import Image

import common
from conftest import assert_same_run, grid_size, load, load_script, png_size, read_csv, usage_error, user_error

gan = load_script("01_mlp_gan")

TINY = ["--dataset", "fake", "--batch-size", "8", "--workers", "0"]  # 32 images: 4 batches


def train(out, *extra):
    assert gan.main(TINY + ["--out", str(out)] + [str(a) for a in extra]) == 0
    return out


def rows(out):
    return read_csv(out / "losses.csv")


@pytest.mark.gif
def test_a_run_writes_every_output(tmp_path, capsys):
    out = train(tmp_path / "run", "--epochs", 2, "--sample-every", 3, "--log-every", 2)
    log = capsys.readouterr().out
    assert "4 iterations of k = 1 D steps + 1 G step" in log and "[1/2][2/4]\tLoss_D: " in log
    snaps = sorted(p for p in os.listdir(out) if p.startswith("fake_samples_"))
    assert snaps == [f"fake_samples_{k:06d}.png" for k in (0, 3, 6, 7)]
    assert png_size(out / snaps[-1]) == grid_size(64, side=28)
    assert png_size(out / "real_samples.png") == grid_size(8, side=28)
    with Image.open(out / "progress.gif") as gif:
        assert gif.n_frames == 4
    assert png_size(out / "real_vs_fake.png")[1] == grid_size(64, side=28)[1]
    assert [int(r["iters"]) for r in rows(out)] == list(range(8))
    ckpt = load(out / "checkpoint.pt")
    assert ckpt["script"] == "01_mlp_gan" and ckpt["iters"] == 8
    netG = gan.Generator(100)
    netG.load_state_dict(load(out / "netG.pt"))


@pytest.mark.cpu_only("bit for bit needs deterministic kernels; cuDNN's benchmark mode picks its algorithms per process")
def test_resume_is_bit_identical_with_k_batches_per_iteration(tmp_path):
    # k = 2: an iteration takes 2 minibatches, so 2 iterations an epoch; stop inside epoch 0
    straight = train(tmp_path / "a", "--k", 2, "--epochs", 2)
    part = train(tmp_path / "b", "--k", 2, "--epochs", 2, "--max-steps", 1)
    assert gan.main(["--resume", str(part / "checkpoint.pt"), "--workers", "0"]) == 0
    assert load(part / "checkpoint.pt")["iters"] == 4
    assert_same_run(straight, part)


def test_G_steps_once_per_k_D_steps(tmp_path):
    out = train(tmp_path / "run", "--k", 3, "--max-steps", 1, "--epochs", 5)
    ckpt = load(out / "checkpoint.pt")
    steps = lambda opt: {int(s["step"]) for s in ckpt[opt]["state"].values()}
    assert steps("optimizerD") == {3} and steps("optimizerG") == {1}


def test_sample_py_draws_from_its_checkpoint(tmp_path):
    out = train(tmp_path / "run", "--max-steps", 2)
    assert load_script("sample").main([str(out / "checkpoint.pt"), "--n", "10"]) == 0
    assert png_size(out / "generated.png") == grid_size(10, nrow=4, side=28)


def test_a_new_run_refused_before_training_leaves_nothing_behind(tmp_path):
    """k = 5 D-steps need 5 batches, and an epoch has 4: refused once the data is known, after
    real_samples.png was written; the folder the run made goes again."""
    msg = user_error(gan.main, ["--dataset", "fake", "--batch-size", "8", "--workers", "0",
                                "--k", "5", "--out", str(tmp_path / "run")])
    assert "an iteration takes 5 batches, more than an epoch has" in msg
    assert not (tmp_path / "run").exists()


def test_the_two_generator_losses(tmp_path):
    # Loss_G is a batch mean and D_G_z2 the batch mean of D(G(z)); by Jensen's inequality
    # non-saturating: mean(-log D) >= -log(mean D) > 0; minimax: mean(log(1 - D)) <= log(1 - mean D) < 0
    ns = train(tmp_path / "ns", "--max-steps", 3)
    mm = train(tmp_path / "mm", "--max-steps", 3, "--g-loss", "minimax")
    for r in rows(ns):
        d = torch.tensor(float(r["D_G_z2"]))
        assert float(r["Loss_G"]) >= -torch.log(d).item() - 1e-5 > 0
    for r in rows(mm):
        d = torch.tensor(float(r["D_G_z2"]))
        assert float(r["Loss_G"]) <= torch.log1p(-d).item() + 1e-5 < 0


def test_bce_with_logits_is_the_two_terms_of_eq_1():
    """The identities the script's comments rely on, and why the logits form is the stable one."""
    criterion = nn.BCEWithLogitsLoss()
    a = torch.tensor([-30.0, -2.0, 0.5, 30.0])  # D's logits, some very sure
    d = torch.sigmoid(a)
    torch.testing.assert_close(criterion(a, torch.ones(4)), -torch.log(d).mean())  # -log D
    torch.testing.assert_close(criterion(a[:3], torch.zeros(3)), -torch.log1p(-d[:3]).mean())
    # at a = 30, sigmoid rounds to 1.0 in float32: BCELoss on it clamps log(0) and says 100,
    # while the logits form gives the true -log(1 - D) = 30
    assert nn.BCELoss()(d[3:], torch.zeros(1)).item() == 100
    assert criterion(a[3:], torch.zeros(1)).item() == pytest.approx(30, abs=1e-3)
    # G's two losses on one fake that D rejects (D(G(z)) = 0.047): their slopes on the logit
    logit = torch.tensor([-3.0], requires_grad=True)
    minimax, = torch.autograd.grad(-criterion(logit, torch.zeros(1)), logit)
    non_saturating, = torch.autograd.grad(criterion(logit, torch.ones(1)), logit)
    d = torch.sigmoid(logit.detach())
    torch.testing.assert_close(minimax, -d)           # -0.047: almost flat
    torch.testing.assert_close(non_saturating, d - 1)  # -0.953: twenty times steeper


def test_networks_and_parameter_counts():
    netD, netG = gan.Discriminator(), gan.Generator(100)
    assert sum(p.numel() for p in netD.parameters()) == (784 * 300 + 300) + (300 * 100 + 100) + (100 + 1)
    assert sum(p.numel() for p in netG.parameters()) == (100 * 300 + 300) + (300 * 784 + 784)
    assert not any(isinstance(m, nn.Sigmoid) for m in netD.modules())  # logits out
    x = netG(torch.randn(5, 100))
    assert x.shape == (5, 1, 28, 28) and x.abs().max() <= 1
    assert netD(x).shape == (5,)


@pytest.mark.parametrize("flags, says", [
    (["--k", "0"], "invalid choice: 0"),
    (["--smooth", "1.5"], "must be in (0, 1]"),
    (["--g-loss", "wasserstein"], "invalid choice: 'wasserstein'"),
    (["--dataset", "celeba"], "invalid choice: 'celeba'"),
])
def test_bad_flags(flags, says, capsys):
    assert says in usage_error(gan.main, flags, capsys)


def test_a_dcgan_checkpoint_is_refused(tmp_path):
    torch.save({"script": "02_dcgan", "args": {}}, tmp_path / "c.pt")
    with pytest.raises(common.UserError, match="written by 02_dcgan.py"):
        gan.main(["--resume", str(tmp_path / "c.pt")])


def test_the_D_step_does_not_backpropagate_into_G(tmp_path, monkeypatch):
    """fake.detach() in the D step: G's weights receive a gradient once per iteration (its own
    step), never from D's loss. Without the detach they would get k + 1 a iteration."""
    grads = []

    class Spied(gan.Generator):
        def __init__(self, nz):
            super().__init__(nz)
            self.model[-2].weight.register_hook(lambda g: grads.append(1))

    monkeypatch.setattr(gan, "Generator", Spied)
    train(tmp_path / "run", "--k", 2, "--max-steps", 3, "--epochs", 5)
    assert len(grads) == 3


def six_bars(root):
    """Three vertical and three horizontal white bars on black, 50 copies each, as an
    ImageFolder of 28x28 PNGs; returns the six patterns on [-1, 1]."""
    patterns = -torch.ones(6, 28, 28)
    for j in range(3):
        patterns[j, :, 4 + 8 * j:8 + 8 * j] = 1      # vertical
        patterns[3 + j, 4 + 8 * j:8 + 8 * j, :] = 1  # horizontal
    for k, p in enumerate(patterns):
        folder = root / f"bar{k}"
        folder.mkdir(parents=True)
        img = Image.fromarray(((p + 1) * 127.5).to(torch.uint8).numpy())
        for n in range(50):
            img.save(folder / f"{n}.png")
    return patterns


def test_the_alternating_loop_learns_the_data(tmp_path, monkeypatch):
    """A short run with the default settings (but m = 50) must turn G's noise into the bars.

    It fails if the loop were wrong: with either of D's labels swapped, or G never stepped, the
    samples stay grey noise (checked by breaking the script each way; a missing detach is
    test_the_D_step_does_not_backpropagate_into_G's). What it does not ask is that all six bars
    come out: on this data the plain GAN draws one or two of them (8 seeds, 400 steps: 1 or 2,
    never more), the mode collapse of §12.7.2."""
    patterns = six_bars(tmp_path / "data")

    # The files go through the script's own folder transform once; then they are kept in
    # memory, so that 400 steps take seconds instead of decoding 20,000 PNGs. Ten copies make
    # an epoch 60 batches long, so that the run is not mostly end-of-epoch checkpoints.
    read_folder = gan.get_dataset

    def in_memory(dataset, dataroot):
        folder = read_folder(dataset, dataroot)
        images = torch.stack([folder[n][0] for n in range(len(folder))])
        assert set(images.unique().tolist()) == {-1.0, 1.0}  # the bars, exactly, on [-1, 1]
        return torch.utils.data.TensorDataset(images.repeat(10, 1, 1, 1),
                                              torch.tensor(folder.targets).repeat(10))

    monkeypatch.setattr(gan, "get_dataset", in_memory)
    noise = torch.randn(300, 100, generator=torch.Generator().manual_seed(1))

    def distances(out):
        """Per sample: the mean |pixel difference| to its nearest bar, and the share of pixels on
        the wrong side of 0 (black for white) against the nearest bar."""
        netG = gan.Generator(100)
        netG.load_state_dict(load(out / "netG.pt"))
        fake = gan.sample(netG, noise)[:, 0]
        l1 = (fake[:, None] - patterns).abs().mean(dim=(2, 3)).min(dim=1).values
        wrong = (fake.sign()[:, None] != patterns).float().mean(dim=(2, 3)).min(dim=1).values
        return l1.mean().item(), wrong.mean().item()

    run = tmp_path / "run"
    train(run, "--dataset", "folder", "--dataroot", tmp_path / "data", "--batch-size", 50,
          "--epochs", 1000, "--max-steps", 1, "--sample-every", 1000)
    l1_before, wrong_before = distances(run)
    assert gan.main(["--resume", str(run / "checkpoint.pt"), "--max-steps", "400"]) == 0
    l1_after, wrong_after = distances(run)
    # measured: 0.97 -> 0.18 to 0.23 and 45 % -> 1.1 % at most, over 8 seeds (batches of 50)
    assert l1_after < l1_before / 2.5, (l1_before, l1_after)
    assert wrong_before > 0.3 and wrong_after < 0.05, (wrong_before, wrong_after)
