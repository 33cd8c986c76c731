"""03_cgan.py: end to end on fake data, the label tables, the networks, resume, --generate --labels."""
import os

import pytest
import torch
from PIL import Image

from conftest import assert_same_run, grid_size, load, load_script, make_images, png_size, read_csv, usage_error, user_error

cgan = load_script("03_cgan")

TINY = ["--dataset", "fake", "--ngf", "8", "--ndf", "8", "--batch-size", "8", "--workers", "0"]


def train(out, *extra):
    assert cgan.main(TINY + ["--out", str(out)] + [str(a) for a in extra]) == 0
    return out


def error_of(argv):
    return user_error(cgan.main, argv)


@pytest.mark.gif
def test_a_run_writes_every_output(tmp_path, capsys):
    out = train(tmp_path / "run", "--epochs", 2, "--sample-every", 3, "--log-every", 2)
    log = capsys.readouterr().out
    assert "Dataset: fake, 32 images, in memory, 4 batches of 8 per epoch" in log
    assert "[1/2][2/4]\tLoss_D: " in log
    snaps = sorted(p for p in os.listdir(out) if p.startswith("fake_samples_"))
    assert snaps == [f"fake_samples_{k:06d}.png" for k in (0, 3, 6, 7)]
    # the fixed grid: one row per class, ten columns
    assert png_size(out / snaps[-1]) == grid_size(100, nrow=10, side=32)
    assert png_size(out / "real_samples.png") == grid_size(8, side=32)
    with Image.open(out / "progress.gif") as gif:
        assert gif.n_frames == 4
    assert png_size(out / "real_vs_fake.png")[1] == grid_size(100, nrow=10, side=32)[1]
    assert [int(r["iters"]) for r in read_csv(out / "losses.csv")] == list(range(8))
    ckpt = load(out / "checkpoint.pt")
    assert ckpt["script"] == "03_cgan" and ckpt["iters"] == 8
    assert ckpt["classes"] == [str(c) for c in range(10)]
    # the chapter's fixed noise: row r, column c holds the z of column c
    z = ckpt["fixed_noise"].view(10, 10, -1)
    assert torch.equal(z, z[:1].expand(10, -1, -1)) and not torch.equal(z[0, 0], z[0, 1])


def test_label_tables():
    onehot, fill = cgan.label_tables(10, 32, torch.device("cpu"))
    assert onehot.shape == (10, 10, 1, 1) and fill.shape == (10, 10, 32, 32)
    y = torch.tensor([3, 0, 9, 3])
    maps = fill[y]
    for k, label in enumerate(y.tolist()):
        assert torch.all(maps[k, label] == 1)
        others = torch.cat([maps[k, :label], maps[k, label + 1:]])
        assert torch.all(others == 0)
        assert onehot[label].view(-1).tolist() == [float(c == label) for c in range(10)]


def test_networks_take_mixed_labels_and_use_them():
    netG, netD = cgan.Generator(100, 16, 1, 10), cgan.Discriminator(1, 16, 10)
    onehot, fill = cgan.label_tables(10, 32, torch.device("cpu"))
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 3])
    z = torch.randn(11, 100, 1, 1)
    fake = netG(z, onehot[y])
    assert fake.shape == (11, 1, 32, 32) and fake.abs().max() <= 1
    out = netD(fake, fill[y])
    assert out.shape == (11, 1, 1, 1) and ((out > 0) & (out < 1)).all()
    # the label matters: the same z with another label is another image, and D's verdict on the
    # same image changes with the label it is shown with
    netG.eval(), netD.eval()
    assert not torch.allclose(netG(z[:1], onehot[[2]]), netG(z[:1], onehot[[7]]))
    assert not torch.allclose(netD(fake[:1], fill[[2]]), netD(fake[:1], fill[[7]]))


def test_parameter_counts_at_the_chapters_settings():
    """nz 100, ngf = ndf = 128, MNIST (nc 1, 10 classes), every convolution with a bias."""
    ngf = ndf = 128
    conv = lambda cin, cout: cin * cout * 16 + cout  # 4x4 kernels, bias
    bn = lambda c: 2 * c
    g = (conv(100, 256) + bn(256) + conv(10, 256) + bn(256)      # deconv1_1, deconv1_2
         + conv(4 * ngf, 2 * ngf) + bn(2 * ngf)                  # deconv2
         + conv(2 * ngf, ngf) + bn(ngf) + conv(ngf, 1))          # deconv3, deconv4
    d = (conv(1, ndf // 2) + conv(10, ndf // 2)                  # conv1_1, conv1_2
         + conv(ndf, 2 * ndf) + bn(2 * ndf) + conv(2 * ndf, 4 * ndf) + bn(4 * ndf)
         + conv(4 * ndf, 1))
    netG, netD = cgan.Generator(100, ngf, 1, 10), cgan.Discriminator(1, ndf, 10)
    assert sum(p.numel() for p in netG.parameters()) == g == 3_076_737
    assert sum(p.numel() for p in netD.parameters()) == d == 2_643_329
    # the chapter's layer names, so that a reader can find them
    assert [n for n, _ in netG.named_children()] == [
        "deconv1_1", "deconv1_1_bn", "deconv1_2", "deconv1_2_bn", "deconv2", "deconv2_bn",
        "deconv3", "deconv3_bn", "deconv4"]
    assert [n for n, _ in netD.named_children()] == [
        "conv1_1", "conv1_2", "conv2", "conv2_bn", "conv3", "conv3_bn", "conv4"]


def test_weights_init():
    torch.manual_seed(0)
    netG = cgan.Generator(100, 64, 1, 10)
    netG.apply(cgan.weights_init)
    assert abs(netG.deconv2.weight.std().item() - 0.02) < 0.002
    assert abs(netG.deconv2_bn.weight.mean().item() - 1) < 0.01  # N(1, 0.02), not the listing's N(0, .)
    assert torch.all(netG.deconv2_bn.bias == 0)


def test_a_batch_smaller_than_batch_size_works(tmp_path, capsys):
    # 32 images in batches of 12: 12, 12 and a last one of 8, which the chapter's fixed-size
    # label tensors would break on
    out = train(tmp_path / "run", "--batch-size", 12, "--epochs", 2)
    assert "3 batches of 12 per epoch" in capsys.readouterr().out
    assert len(read_csv(out / "losses.csv")) == 6


@pytest.mark.cpu_only("bit for bit needs deterministic kernels; cuDNN's benchmark mode picks its algorithms per process")
def test_resume_is_bit_identical(tmp_path):
    straight = train(tmp_path / "a", "--epochs", 2)
    part = train(tmp_path / "b", "--epochs", 2, "--max-steps", 5)  # stops inside epoch 1
    assert cgan.main(["--resume", str(part / "checkpoint.pt"), "--workers", "0"]) == 0
    assert load(part / "checkpoint.pt")["iters"] == 8
    assert_same_run(straight, part)


def test_one_class_alone_is_drawn_as_in_a_mixed_batch(tmp_path, float32_exact):
    """--labels 7 must give the 7s of the mixed grid. In train mode BatchNorm would normalise
    a batch of 7s with its own statistics, unlike the mixed batches G was trained on."""
    out = train(tmp_path / "run", "--max-steps", 4)
    netG = cgan.Generator(100, 8, 3, 10)
    netG.load_state_dict(load(out / "netG.pt"))
    onehot, _ = cgan.label_tables(10, 32, torch.device("cpu"))
    z = torch.randn(20, 100, 1, 1)
    mixed = torch.arange(10).repeat(2)
    together = cgan.sample(netG, z, onehot[mixed])
    sevens = mixed == 7
    alone = cgan.sample(netG, z[sevens], onehot[mixed[sevens]])
    torch.testing.assert_close(alone, together[sevens], atol=1e-4, rtol=1e-4)  # (TF32, cuDNN)
    # what train mode would do, to show that the test can tell the difference
    with torch.no_grad():
        assert not torch.allclose(netG.train()(z[sevens], onehot[mixed[sevens]]),
                                  netG(z, onehot[mixed])[sevens], atol=1e-3)


def test_a_folder_of_classes(tmp_path, capsys):
    for name in ("cats", "dogs", "owls"):
        make_images(tmp_path / "data" / name, 8, ext="png")
    out = train(tmp_path / "run", "--dataset", "folder", "--dataroot", tmp_path / "data", "--max-steps", 2)
    assert "Dataset: folder, 24 images, 3 batches of 8 per epoch" in capsys.readouterr().out
    assert png_size(out / "fake_samples_000001.png") == grid_size(30, nrow=10, side=32)  # 3 rows
    assert load(out / "checkpoint.pt")["classes"] == ["cats", "dogs", "owls"]


def test_user_errors(tmp_path):
    torch.save({"script": "02_dcgan", "args": {}}, tmp_path / "c.pt")
    assert "written by 02_dcgan.py" in error_of(["--resume", str(tmp_path / "c.pt")])


@pytest.mark.parametrize("flags, says", [
    (["--image-size", "64"], "invalid choice: 64"),
    (["--dataset", "celeba"], "invalid choice: 'celeba'"),
])
def test_bad_flags(flags, says, capsys):
    assert says in usage_error(cgan.main, flags, capsys)
