"""--generate N --walk K in all four scripts: the interpolation, walk.png and walk.gif, the ends of
each walk, 03's class morph, and the bad inputs."""
import math

import numpy
import pytest
import torch
from PIL import Image, ImageSequence
from torchvision.utils import make_grid

from conftest import SCRIPTS, grid_size, load_script, png_size, usage_error, user_error

TINY = {
    "01_mlp_gan": ["--dataset", "fake", "--batch-size", "8", "--workers", "0"],
    "02_dcgan": ["--dataset", "fake", "--ngf", "8", "--ndf", "8", "--batch-size", "8", "--workers", "0"],
    "03_cgan": ["--dataset", "fake", "--ngf", "8", "--ndf", "8", "--batch-size", "8", "--workers", "0"],
    "04_wgan_gp": ["--dataset", "fake", "--image-size", "16", "--batch-size", "4", "--workers", "0"],
}
SIDE = {"01_mlp_gan": 28, "02_dcgan": 64, "03_cgan": 32, "04_wgan_gp": 16}


def trained(script, tmp_path):
    out = tmp_path / "run"
    assert load_script(script).main(TINY[script] + ["--out", str(out), "--max-steps", "1"]) == 0
    return str(out / "checkpoint.pt")


def spy(module, monkeypatch):
    """Every call of the script's sample(): (netG, its inputs, the images it gave)."""
    calls, sample = [], module.sample

    def spied(netG, *inputs):
        images = sample(netG, *inputs)
        calls.append((netG, inputs, images))
        return images
    monkeypatch.setattr(module, "sample", spied)
    return calls


def walk_of(calls, n, k):
    """The inputs of G and its images, as n walks x k steps x ..."""
    inputs = [torch.cat([c[1][i] for c in calls]).cpu() for i in range(len(calls[0][1]))]
    images = torch.cat([c[2] for c in calls])
    return [x.view(n, k, *x.shape[1:]) for x in inputs], images.view(n, k, *images.shape[1:])


@pytest.mark.parametrize("script", SCRIPTS)
def test_interpolation(script):
    """Each script's own copy. Gaussian z of nz = 100: both paths end exactly at z0 and z1;
    slerp keeps |z| between the ends' norms, and between unit vectors it is the great circle at a
    constant speed, norm 1 and angle tθ from the start; lerp's midpoint (z0 + z1) / 2 falls well
    inside the sphere, at about 1/√2 of the norm."""
    interpolate = load_script(script).interpolate
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(64, 100, generator=g), torch.randn(64, 100, generator=g)
    t = torch.linspace(0, 1, 9)
    r0, r1 = z0.norm(dim=1, keepdim=True), z1.norm(dim=1, keepdim=True)
    angle = lambda a, b: torch.acos(torch.cosine_similarity(a, b, dim=-1).clamp(-1, 1))
    for interp in ("slerp", "lerp"):
        z = interpolate(z0, z1, t, interp)
        assert z.shape == (64, 9, 100)
        torch.testing.assert_close(z[:, 0], z0, rtol=0, atol=1e-6)
        torch.testing.assert_close(z[:, -1], z1, rtol=0, atol=1e-6)
    slerp, lerp = interpolate(z0, z1, t, "slerp"), interpolate(z0, z1, t, "lerp")
    norms = slerp.norm(dim=2)
    assert (norms >= 0.97 * torch.minimum(r0, r1)).all() and (norms <= 1.03 * torch.maximum(r0, r1)).all()
    u0, u1 = z0 / r0, z1 / r1
    arc = interpolate(u0, u1, t, "slerp")
    torch.testing.assert_close(arc.norm(dim=2), torch.ones(64, 9))
    torch.testing.assert_close(angle(u0[:, None], arc), t * angle(u0, u1)[:, None], rtol=0, atol=1e-3)
    middle = lerp[:, 4].norm(dim=1, keepdim=True) / torch.minimum(r0, r1)
    assert middle.max() < 0.95 and middle.mean() < 0.8  # measured: 0.90 and 0.71


@pytest.mark.parametrize("script", SCRIPTS)
def test_walk_files_and_ends(script, tmp_path, monkeypatch, device, capsys):
    """walk.png: K columns, N/K rows; walk.gif: 2K - 2 frames (there and back) of the N/K
    walks' step j; the ends of each walk are G's images of its two seeded z (sample() on those
    z alone, another batch), slerp and lerp alike; the PNG holds the images in walk order."""
    module, side, n, k = load_script(script), SIDE[script], 2, 3
    ckpt = trained(script, tmp_path)
    labels = ["--labels", "7"] if script == "03_cgan" else []  # 03: walks of z within a class
    out = tmp_path / "run"
    walked = {}
    for interp in ("slerp", "lerp"):
        calls = spy(module, monkeypatch)
        flags = ["--interp", "lerp"] if interp == "lerp" else []  # slerp: the default
        assert module.main(["--generate", str(n * k), "--walk", str(k), "--checkpoint", ckpt] + labels + flags) == 0
        assert f"Wrote {n} walks of {k} images" in capsys.readouterr().out
        inputs, images = walk_of(calls, n, k)
        z = inputs[0].flatten(2)
        torch.manual_seed(999)  # the run's seed, which --generate draws with
        z0, z1 = torch.randn(n, 100, device=device).cpu(), torch.randn(n, 100, device=device).cpu()
        torch.testing.assert_close(z[:, [0, -1]], torch.stack([z0, z1], 1), rtol=0, atol=1e-6)
        ends = [x[:, [0, -1]].reshape(-1, *x.shape[2:]).to(device) for x in inputs]
        alone = module.sample(calls[0][0], *ends).view(n, 2, *images.shape[2:])
        torch.testing.assert_close(images[:, [0, -1]], alone)
        if script == "03_cgan":  # the class held at 7 all along
            assert (inputs[1].flatten(2).argmax(2) == 7).all() and (inputs[1].sum((2, 3, 4)) == 1).all()
        walked[interp] = images
        assert png_size(out / "walk.png") == grid_size(n * k, nrow=k, side=side)
        with Image.open(out / "walk.gif") as gif:
            assert gif.n_frames == 2 * k - 2 and gif.size == grid_size(n, nrow=math.ceil(math.sqrt(n)), side=side)
    assert not torch.allclose(walked["slerp"][:, 1], walked["lerp"][:, 1])  # the middles differ
    # walk.gif (lerp's): frame j is step j of both walks, to the GIF palette's rounding, and back
    with Image.open(out / "walk.gif") as gif:
        frames = [torch.from_numpy(numpy.array(f.convert("RGB"))).float() for f in ImageSequence.Iterator(gif)]
    for j in range(k):
        grid = make_grid(walked["lerp"][:, j], nrow=2, padding=2, normalize=True, value_range=(-1, 1))
        assert (frames[j] - grid.permute(1, 2, 0) * 255).abs().mean() < 3
    assert all(torch.equal(a, b) for a, b in zip(frames[k:], frames[k - 2:0:-1]))
    # walk.png (lerp's): walk r is row r, step j column j, to 8-bit rounding
    with Image.open(out / "walk.png") as im:
        png = torch.from_numpy(numpy.array(im.convert("RGB"))).float()
    for r, j in ((0, 0), (1, 2), (0, 1)):
        tile = png[2 + r * (side + 2):][:side, 2 + j * (side + 2):][:, :side].permute(2, 0, 1)
        expected = ((walked["lerp"][r, j] + 1) / 2 * 255).expand(3, -1, -1)
        assert (tile - expected).abs().max() <= 1


def test_the_class_morph(tmp_path, monkeypatch, capsys):
    """03 without --labels: one z a row, G's one-hot label input from class r to r + 1 (9 to 0)
    in K steps, exactly the one-hots at the ends and (1 - t) a + t b between; --labels a,b:
    every row from a to b. Then 03's own bad inputs."""
    cgan = load_script("03_cgan")
    ckpt = trained("03_cgan", tmp_path)
    onehot = torch.eye(10)
    t = torch.linspace(0, 1, 3).view(1, 3, 1)
    for labels, a, says in (([], torch.arange(11) % 10, "classes 0 to 1, 1 to 2, 2 to 3, 3 to 4, 4 to 5, "
                             "5 to 6, 6 to 7, 7 to 8, 8 to 9, 9 to 0\n"),
                            (["--labels", "3,8"], torch.full((11,), 3), "classes 3 to 8\n")):
        calls = spy(cgan, monkeypatch)
        assert cgan.main(["--generate", "33", "--walk", "3", "--checkpoint", ckpt] + labels) == 0
        assert capsys.readouterr().out.endswith(says)
        (z, y), _ = walk_of(calls, 11, 3)
        z, y = z.flatten(2), y.flatten(2)
        b = (a + 1) % 10 if not labels else torch.full((11,), 8)
        assert torch.equal(y[:, 0], onehot[a]) and torch.equal(y[:, -1], onehot[b])
        torch.testing.assert_close(y, (1 - t) * onehot[a][:, None] + t * onehot[b][:, None])
        assert torch.equal(z, z[:, :1].expand_as(z)) and not torch.equal(z[0, 0], z[1, 0])
    error_of = lambda *flags: user_error(cgan.main, ["--generate", "6", "--walk", "3", "--checkpoint", ckpt, *flags])
    assert "--walk --labels 1,2,3: give one class (walks of z within it) or two, a,b (each row morphs " \
           "a into b)" in error_of("--labels", "1,2,3")
    assert "--labels 12: this generator knows 10 classes" in error_of("--labels", "3,12")
    assert "a class morph holds z along its row" in error_of("--interp", "lerp")


@pytest.mark.parametrize("flags, says", [
    (["--generate", "6", "--walk", "1"], "argument --walk: must be 2 or more: a walk has two ends, got 1"),
    (["--walk", "3"], "--walk K draws walks of --generate's images: add --generate N"),
    (["--generate", "10", "--walk", "3"], "--generate 10 --walk 3: N must be a multiple of K, N/K walks "
                                          "of K images each (e.g. --generate 12)"),
    (["--generate", "2048", "--walk", "2"], "walk.png is one grid, of at most 1024 images"),
    (["--generate", "6", "--interp", "lerp"], "--interp picks the path of --walk: add --generate N --walk K"),
    (["--generate", "6", "--walk", "3", "--interp", "nlerp"], "invalid choice: 'nlerp'"),
])
def test_bad_walk_flags(flags, says, capsys):
    assert says in usage_error(load_script("01_mlp_gan").main, flags, capsys)


def test_slerp_needs_two_dimensions_of_z(tmp_path):
    torch.save({"model.0.weight": torch.zeros(300, 1)}, tmp_path / "netG.pt")  # read no further
    msg = user_error(load_script("04_wgan_gp").main, ["--generate", "4", "--walk", "2", "--nz", "1",
                                                      "--checkpoint", str(tmp_path / "netG.pt")])
    assert msg == "error: --walk: slerp follows the sphere on which z lie, and at --nz 1 that is two points: use --interp lerp"
