"""sample.py: images from any of the four scripts' checkpoint.pt. The grid and the PNG a piece,
latent walks (the interpolation, walk.png and walk.gif, the ends of each walk), 03's classes and
class morph, the seed, BatchNorm's eval mode, and every bad input: flags, checkpoints, a folder
in use, a disk that fills up. Tiny runs of the four scripts, trained once for the module."""
import errno
import math
import os
import shutil
import subprocess
import sys

import numpy
import pytest
import torch
import torchvision.utils
from PIL import Image, ImageSequence
from torchvision.utils import make_grid

import common
import sample
from conftest import SCRIPTS, grid_size, load, load_script, make_images, png_size, usage_error, user_error

TINY = {
    "01_mlp_gan": ["--dataset", "fake", "--batch-size", "8", "--workers", "0"],
    "02_dcgan": ["--dataset", "fake", "--ngf", "8", "--ndf", "8", "--batch-size", "8", "--workers", "0"],
    "03_cgan": ["--dataset", "fake", "--ngf", "8", "--ndf", "8", "--batch-size", "8", "--workers", "0"],
    "04_wgan_gp": ["--dataset", "fake", "--image-size", "16", "--batch-size", "4", "--workers", "0"],
}
SIDE = {"01_mlp_gan": 28, "02_dcgan": 64, "03_cgan": 32, "04_wgan_gp": 16}
CLOSE = {"rtol": 1e-4, "atol": 1e-4}  # the same z in other batches: cuDNN's other kernels, TF32


@pytest.fixture(autouse=True)
def sample_on_the_device(device, monkeypatch):
    """sample.main() on pytest's --device, as conftest runs the scripts (else a machine with a
    GPU would pick it)."""
    main = sample.main
    monkeypatch.setattr(sample, "main", lambda argv=None: main(
        list(argv) + ["--device", device] if argv is not None and "--device" not in argv else argv))


def train(script, out, device):
    """A tiny run of one step: its checkpoint.pt."""
    with pytest.MonkeyPatch.context() as mp:  # (conftest's function fixtures come after a module's)
        mp.setattr(common, "FAKE_SIZE", 32)
        mp.setattr(common, "plot_losses", lambda curves, title, path: None)
        argv = TINY[script] + ["--max-steps", "1", "--out", str(out), "--device", device]
        assert load_script(script).main(argv) == 0
    return str(out / "checkpoint.pt")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, device):
    """Each script's tiny run, for the module. Tests write elsewhere (--out), or copy one.
    02's and 03's G of one step, from N(0, 0.02) at --ngf 8, draw all but uniform grey (images
    a tenth of an 8-bit level apart): their weights x5, so that the images differ, in the PNGs
    too, and a check of which image went where can tell."""
    root = tmp_path_factory.mktemp("runs")
    ckpts = {script: train(script, root / script, device) for script in SCRIPTS}
    for script in ("02_dcgan", "03_cgan"):
        ckpt = load(ckpts[script])
        ckpt["netG"] = {k: v * 5 if v.dim() > 1 else v for k, v in ckpt["netG"].items()}
        torch.save(ckpt, ckpts[script])
    return ckpts


def copied(ckpt, folder):
    os.makedirs(folder)
    return shutil.copy(ckpt, folder)


def spy(module, monkeypatch):
    """Every call of the script's sample(): (netG, its inputs, the images it gave)."""
    calls, sample_ = [], module.sample

    def spied(netG, *inputs):
        images = sample_(netG, *inputs)
        calls.append((netG, inputs, images))
        return images
    monkeypatch.setattr(module, "sample", spied)
    return calls


def walk_of(calls, n, k):
    """The inputs of G and its images, as n walks x k steps x ..."""
    inputs = [torch.cat([c[1][i] for c in calls]).cpu() for i in range(len(calls[0][1]))]
    images = torch.cat([c[2] for c in calls])
    return [x.view(n, k, *x.shape[1:]) for x in inputs], images.view(n, k, *images.shape[1:])


def pixels(path):
    with Image.open(path) as im:
        return torch.from_numpy(numpy.array(im.convert("RGB"))).float()


def tile(png, r, j, side):
    """Row r, column j of a grid with save_grid's padding of 2, as 3 x side x side."""
    return png[2 + r * (side + 2):][:side, 2 + j * (side + 2):][:, :side].permute(2, 0, 1)


def as_8_bits(image):
    return ((image + 1) / 2 * 255).expand(3, -1, -1)


def temporary_files(folder):
    return [f for f in os.listdir(folder) if ".tmp" in f]


# --- The interpolation --------------------------------------------------------------------------
def test_interpolation():
    """Gaussian z of nz = 100: both paths end exactly at z0 and z1; slerp keeps |z| between the
    ends' norms, and between unit vectors it is the great circle at a constant speed, norm 1 and
    angle tθ from the start; lerp is the straight line, and its midpoint (z0 + z1) / 2 falls well
    inside the sphere, at about 1/√2 of the norm."""
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(64, 100, generator=g), torch.randn(64, 100, generator=g)
    t = torch.linspace(0, 1, 9)
    r0, r1 = z0.norm(dim=1, keepdim=True), z1.norm(dim=1, keepdim=True)
    angle = lambda a, b: torch.acos(torch.cosine_similarity(a, b, dim=-1).clamp(-1, 1))
    for interp in ("slerp", "lerp"):
        z = sample.interpolate(z0, z1, t, interp)
        assert z.shape == (64, 9, 100)
        torch.testing.assert_close(z[:, 0], z0, rtol=0, atol=1e-6)
        torch.testing.assert_close(z[:, -1], z1, rtol=0, atol=1e-6)
    slerp, lerp = sample.interpolate(z0, z1, t, "slerp"), sample.interpolate(z0, z1, t, "lerp")
    assert torch.equal(sample.interpolate(z0, z1, t, None), slerp)  # (no --interp: slerp)
    norms = slerp.norm(dim=2)
    assert (norms >= 0.97 * torch.minimum(r0, r1)).all() and (norms <= 1.03 * torch.maximum(r0, r1)).all()
    # two vectors of the same norm: slerp stays on their sphere all the way
    same = sample.interpolate(z0, z1 / r1 * r0, t, "slerp")
    torch.testing.assert_close(same.norm(dim=2), r0.expand(-1, 9), rtol=1e-5, atol=0)
    u0, u1 = z0 / r0, z1 / r1
    arc = sample.interpolate(u0, u1, t, "slerp")
    torch.testing.assert_close(arc.norm(dim=2), torch.ones(64, 9))
    torch.testing.assert_close(angle(u0[:, None], arc), t * angle(u0, u1)[:, None], rtol=0, atol=1e-3)
    torch.testing.assert_close(lerp, z0[:, None] + t.view(1, -1, 1) * (z1 - z0)[:, None])  # the line
    middle = lerp[:, 4].norm(dim=1, keepdim=True) / torch.minimum(r0, r1)
    assert middle.max() < 0.95 and middle.mean() < 0.8  # measured: 0.90 and 0.71


# --- N images -----------------------------------------------------------------------------------
@pytest.mark.parametrize("script, n, nrow", [("01_mlp_gan", 10, 4), ("02_dcgan", 10, 4),
                                             ("03_cgan", 20, 2), ("04_wgan_gp", 5, 3)])
def test_a_grid_beside_the_checkpoint(script, n, nrow, ckpts, tmp_path, capsys):
    """Up to GRID_MAX images: one grid, generated.png, beside the checkpoint, ceil(sqrt(N)) a
    row; 03's a row per class (here 10 rows of 2)."""
    ckpt = copied(ckpts[script], tmp_path / "run")
    assert sample.main([ckpt, "--n", str(n)]) == 0
    assert png_size(tmp_path / "run" / "generated.png") == grid_size(n, nrow=nrow, side=SIDE[script])
    out = capsys.readouterr().out
    assert f"Wrote {n} samples of {ckpt} to {tmp_path / 'run' / 'generated.png'}" in out
    assert set(os.listdir(tmp_path / "run")) - {".lock"} == {"checkpoint.pt", "generated.png"}


@pytest.mark.parametrize("script, n, fewer, batch, sizes", [("02_dcgan", 11, 5, 4, [4, 4, 3]),
                                                            ("03_cgan", 20, 10, 6, [6, 6, 6, 2])])
def test_more_than_grid_max_are_a_png_each_made_a_batch_at_a_time(script, n, fewer, batch, sizes, ckpts,
                                                                  tmp_path, monkeypatch, capsys):
    """Past GRID_MAX, each image is written as it is made: memory holds one batch however large
    N is, where a grid would hold all N. File k is image k. Fewer the next time: the folder
    holds those alone (a file of the user's stays)."""
    module, out = load_script(script), tmp_path / "out"
    monkeypatch.setattr(sample, "GRID_MAX", 10)
    monkeypatch.setattr(sample, "BATCH", batch)
    calls, written = spy(module, monkeypatch), []  # written: the PNGs there as each batch is drawn
    spied = module.sample
    monkeypatch.setattr(module, "sample", lambda netG, *inputs: written.append(
        len(os.listdir(out / "generated"))) or spied(netG, *inputs))
    assert sample.main([ckpts[script], "--n", str(n), "--out", str(out)]) == 0
    assert f"to {out / 'generated'}/" in capsys.readouterr().out
    assert [len(c[2]) for c in calls] == sizes and written == [batch * j for j in range(len(sizes))]
    files = sorted(os.listdir(out / "generated"))
    assert files == [f"{k:07d}.png" for k in range(n)] and not (out / "generated.png").exists()
    images = torch.cat([c[2] for c in calls])
    for k in (0, batch, n - 1):  # in the order made, across batches
        png = pixels(out / "generated" / f"{k:07d}.png")
        assert png.shape[:2] == (SIDE[script], SIDE[script])
        assert (png.permute(2, 0, 1) - as_8_bits(images[k])).abs().max() <= 1
    (out / "generated" / "mine.png").write_bytes(b"")
    monkeypatch.setattr(sample, "GRID_MAX", fewer - 1)
    assert sample.main([ckpts[script], "--n", str(fewer), "--out", str(out)]) == 0
    assert sorted(os.listdir(out / "generated")) == [f"{k:07d}.png" for k in range(fewer)] + ["mine.png"]
    assert temporary_files(out / "generated") == []


def test_sampling_needs_no_training_data(ckpts, tmp_path):
    """A run on a folder of images that is gone since (its checkpoint's args name it)."""
    data = make_images(str(tmp_path / "data" / "faces"), 4)
    ckpt = load(ckpts["02_dcgan"])
    ckpt["args"].update(dataset="folder", dataroot=data)
    os.makedirs(tmp_path / "run")
    torch.save(ckpt, tmp_path / "run" / "checkpoint.pt")
    shutil.rmtree(tmp_path / "data")
    assert sample.main([str(tmp_path / "run" / "checkpoint.pt"), "--n", "10"]) == 0
    assert png_size(tmp_path / "run" / "generated.png") == grid_size(10, nrow=4)
    assert not (tmp_path / "data").exists()


def test_the_seed_picks_the_images_and_the_runs_is_the_default(ckpts, tmp_path):
    """A run of seed 7 (its checkpoint's args say so): sample.py draws with 7 by default, so
    --seed 7 gives the same images, and any other seed other ones."""
    ckpt = load(ckpts["02_dcgan"])
    ckpt["args"]["seed"] = 7  # (999 is the scripts' default: a default of sample.py's own would pass)
    torch.save(ckpt, tmp_path / "checkpoint.pt")
    made = {}
    for seed in (None, 7, 999):
        out = tmp_path / str(seed)
        assert sample.main([str(tmp_path / "checkpoint.pt"), "--n", "4", "--out", str(out)]
                           + (["--seed", str(seed)] if seed is not None else [])) == 0
        made[seed] = pixels(out / "generated.png")
    assert (made[None] - made[7]).abs().max() <= 1  # (the same, to a GPU's rounding)
    assert (made[None] - made[999]).abs().max() > 10


@pytest.mark.parametrize("script", SCRIPTS)
def test_an_image_depends_on_its_own_z_alone(script, ckpts, monkeypatch, device, float32_exact):
    """BatchNorm in eval mode: the same z give the same images in batches of 6, 4 + 2, or one at
    a time (in train mode each batch would be normalised by its own statistics)."""
    labels = [7] if script == "03_cgan" else None  # 03: walks of z within class 7
    made = {}
    for batch in (6, 4, 1):
        monkeypatch.setattr(sample, "BATCH", batch)
        batches, _ = sample.walks(ckpts[script], 6, 3, "lerp", None, torch.device(device), labels)
        made[batch] = torch.cat(list(batches))
    assert made[6].shape[0] == 6 and not torch.allclose(made[6][0], made[6][1], **CLOSE)
    torch.testing.assert_close(made[4], made[6], **CLOSE)
    torch.testing.assert_close(made[1], made[6], **CLOSE)


# --- Latent walks -------------------------------------------------------------------------------
@pytest.mark.parametrize("script", SCRIPTS)
def test_walk_files_and_ends(script, ckpts, tmp_path, monkeypatch, device, capsys, float32_exact):
    """walk.png: K columns, N/K rows; walk.gif: 2K - 2 frames (there and back) of the N/K
    walks' step j; the ends of each walk are G's images of its two seeded z (sample() on those
    z alone, another batch), slerp and lerp alike; the PNG holds the images in walk order."""
    module, side, n, k = load_script(script), SIDE[script], 2, 3
    labels = ["--labels", "7"] if script == "03_cgan" else []  # 03: walks of z within a class
    out = tmp_path / "out"
    walked = {}
    for interp in ("slerp", "lerp"):
        calls = spy(module, monkeypatch)
        flags = ["--interp", "lerp"] if interp == "lerp" else []  # slerp: the default
        assert sample.main([ckpts[script], "--n", str(n * k), "--walk", str(k), "--out", str(out)]
                           + labels + flags) == 0
        said = capsys.readouterr().out
        assert f"Wrote {n} walks of {k} images" in said and f"{out / 'walk.png'} and {out / 'walk.gif'}" in said
        inputs, images = walk_of(calls, n, k)
        z = inputs[0].flatten(2)
        torch.manual_seed(999)  # the run's seed, which sample.py draws with
        z0, z1 = torch.randn(n, 100, device=device).cpu(), torch.randn(n, 100, device=device).cpu()
        torch.testing.assert_close(z[:, [0, -1]], torch.stack([z0, z1], 1), rtol=0, atol=1e-5)
        assert not torch.allclose(z[:, 1], z[:, 0]) and not torch.allclose(z[:, 1], z[:, 2])
        straight = (z0 + z1) / 2
        assert torch.allclose(z[:, 1], straight, atol=1e-5) == (interp == "lerp")  # slerp: off the line
        ends = [x[:, [0, -1]].reshape(-1, *x.shape[2:]).to(device) for x in inputs]
        alone = module.sample(calls[0][0], *ends).view(n, 2, *images.shape[2:])
        torch.testing.assert_close(images[:, [0, -1]], alone, **CLOSE)
        if script == "03_cgan":  # the class held at 7 all along
            assert (inputs[1].flatten(2).argmax(2) == 7).all() and (inputs[1].sum((2, 3, 4)) == 1).all()
            assert "classes 7" in said
        walked[interp] = images
        assert png_size(out / "walk.png") == grid_size(n * k, nrow=k, side=side)
        with Image.open(out / "walk.gif") as gif:
            assert gif.n_frames == 2 * k - 2 and gif.size == grid_size(n, nrow=math.ceil(math.sqrt(n)), side=side)
    assert not torch.allclose(walked["slerp"][:, 1], walked["lerp"][:, 1])  # the middles differ
    # walk.gif (lerp's): frame j is step j of both walks, to the GIF palette's rounding, and back
    with Image.open(out / "walk.gif") as gif:
        frames = [torch.from_numpy(numpy.array(f.convert("RGB"))).float() for f in ImageSequence.Iterator(gif)]
    grids = [make_grid(walked["lerp"][:, j], nrow=2, padding=2, normalize=True, value_range=(-1, 1))
             .permute(1, 2, 0) * 255 for j in range(k)]
    apart = torch.tensor([[(frame - grid).abs().mean() for grid in grids] for frame in frames[:k]])
    assert torch.equal(apart.argmin(1), torch.arange(k)) and apart.diagonal().max() < 6, apart
    assert all(torch.equal(a, b) for a, b in zip(frames[k:], frames[k - 2:0:-1]))
    # walk.png (lerp's): walk r is row r, step j column j, to 8-bit rounding
    png = pixels(out / "walk.png")
    for r, j in ((0, 0), (1, 2), (0, 1)):
        assert (tile(png, r, j, side) - as_8_bits(walked["lerp"][r, j])).abs().max() <= 1


def test_the_class_morph(ckpts, tmp_path, monkeypatch, capsys):
    """03 without --labels: one z a row, G's one-hot label input from class r to r + 1 (9 to 0)
    in K steps, exactly the one-hots at the ends and (1 - t) a + t b between; --labels a,b:
    every row from a to b."""
    cgan = load_script("03_cgan")
    onehot = torch.eye(10)
    t = torch.linspace(0, 1, 3).view(1, 3, 1)
    for labels, a, says in (([], torch.arange(11) % 10, "classes 0 to 1, 1 to 2, 2 to 3, 3 to 4, 4 to 5, "
                             "5 to 6, 6 to 7, 7 to 8, 8 to 9, 9 to 0\n"),
                            (["--labels", "3,8"], torch.full((11,), 3), "classes 3 to 8\n")):
        calls = spy(cgan, monkeypatch)
        assert sample.main([ckpts["03_cgan"], "--n", "33", "--walk", "3", "--out", str(tmp_path)] + labels) == 0
        assert capsys.readouterr().out.endswith(says)
        (z, y), _ = walk_of(calls, 11, 3)
        z, y = z.flatten(2), y.flatten(2)
        b = (a + 1) % 10 if not labels else torch.full((11,), 8)
        assert torch.equal(y[:, 0], onehot[a]) and torch.equal(y[:, -1], onehot[b])
        torch.testing.assert_close(y, (1 - t) * onehot[a][:, None] + t * onehot[b][:, None])
        assert torch.equal(z, z[:, :1].expand_as(z)) and not torch.equal(z[0, 0], z[1, 0])
        assert png_size(tmp_path / "walk.png") == grid_size(33, nrow=3, side=32)


# --- 03's classes -------------------------------------------------------------------------------
def test_labels_pick_the_classes_a_row_each(ckpts, tmp_path, monkeypatch, capsys):
    cgan, ckpt, out = load_script("03_cgan"), ckpts["03_cgan"], str(tmp_path)
    calls = spy(cgan, monkeypatch)
    assert sample.main([ckpt, "--n", "6", "--labels", "5,2", "--out", out]) == 0
    assert png_size(tmp_path / "generated.png") == grid_size(6, nrow=3, side=32)  # 2 rows of 3
    assert capsys.readouterr().out.endswith(": classes in order 5, 2\n")
    y = torch.cat([c[1][1] for c in calls]).flatten(1).cpu()
    assert y.argmax(1).tolist() == [5, 5, 5, 2, 2, 2] and torch.equal(y.sum(1), torch.ones(6))
    calls.clear()
    assert sample.main([ckpt, "--n", "20", "--out", out]) == 0  # all classes, 2 each
    assert png_size(tmp_path / "generated.png") == grid_size(20, nrow=2, side=32)
    assert torch.cat([c[1][1] for c in calls]).flatten(1).argmax(1).tolist() == [c for c in range(10) for _ in "ab"]
    assert sample.main([ckpt, "--n", "4", "--labels", "9", "--out", out]) == 0  # one class, one row
    assert png_size(tmp_path / "generated.png") == grid_size(4, nrow=4, side=32)


def test_bad_labels_are_refused_in_one_line(ckpts, tmp_path):
    ckpt, out = ckpts["03_cgan"], ["--out", str(tmp_path / "out")]
    names = ", ".join(f"{c}: {c}" for c in range(10))  # FakeData's classes are named 0 ... 9
    error_of = lambda *argv: user_error(sample.main, [*argv, *out])
    assert error_of(ckpt, "--n", "10", "--labels", "3,12,10") == (
        f"error: --labels 12,10: this generator knows 10 classes, numbered 0 to 9 ({names})")
    assert error_of(ckpt, "--n", "64") == ("error: --n 64 does not split into equal rows for 10 "
                                           "classes: use a multiple of 10")
    assert "use a multiple of 3" in error_of(ckpt, "--n", "10", "--labels", "1,2,3")
    walk = [ckpt, "--n", "6", "--walk", "3"]
    assert error_of(*walk, "--labels", "1,2,3") == ("error: --walk --labels 1,2,3: give one class (walks "
                                                    "of z within it) or two, a,b (each row morphs a into b)")
    assert "--labels 12: this generator knows 10 classes" in error_of(*walk, "--labels", "3,12")
    for morph in ([], ["--labels", "3,8"]):
        assert "a class morph holds z along its row" in error_of(*walk, "--interp", "lerp", *morph)
    for argv in (["--n", "4"], ["--n", "4", "--walk", "2"]):
        assert error_of(ckpts["02_dcgan"], *argv, "--labels", "1") == (
            "error: --labels is for 03_cgan.py's classes; 02_dcgan.py has none")
    assert not (tmp_path / "out").exists()


# --- Bad inputs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, says", [
    ([], "the following arguments are required: checkpoint"),
    (["--walk", "1"], "argument --walk: must be 2 or more: a walk has two ends, got 1"),
    (["--n", "10", "--walk", "3"], "--n 10 --walk 3: N must be a multiple of K, N/K walks of K images "
                                   "each (e.g. --n 12)"),
    (["--walk", "3"], "--n 64 --walk 3: N must be a multiple of K"),  # (--n's default)
    (["--n", "2048", "--walk", "2"], "--n 2048 --walk 2: walk.png is one grid, of at most 1024 images"),
    (["--n", "6", "--interp", "lerp"], "--interp picks the path of --walk: add --walk K"),
    (["--n", "6", "--walk", "3", "--interp", "nlerp"], "invalid choice: 'nlerp'"),
    (["--n", "0"], "argument --n: must be a positive whole number, got 0"),
    (["--labels", "3,x"], "expected class numbers separated by commas"),
    (["--labels", "3,3"], "a class is listed twice"),
    (["--seed", "-1"], "argument --seed: must be a whole number from 0 to 2**32 - 1"),
])
def test_bad_flags_are_usage_errors_of_sample_py(flags, says, tmp_path, capsys):
    """Refused by the flags alone, before any file is read (x.pt is not there)."""
    argv = [str(tmp_path / "x.pt")] * (flags != []) + flags
    err = usage_error(sample.main, argv, capsys)
    assert err.startswith("usage: sample.py ") and "sample.py: error: " in err and says in err


def test_a_walk_is_one_grid_of_at_most_grid_max(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sample, "GRID_MAX", 10)
    assert "walk.png is one grid, of at most 10 images" in usage_error(
        sample.main, [str(tmp_path / "x.pt"), "--n", "12", "--walk", "3"], capsys)


def test_slerp_needs_two_dimensions_of_z(ckpts, tmp_path):
    ckpt = load(ckpts["01_mlp_gan"])  # made a run of --nz 1: its first layer takes one number
    ckpt["args"]["nz"] = 1
    ckpt["netG"]["model.0.weight"] = ckpt["netG"]["model.0.weight"][:, :1].clone()
    os.makedirs(tmp_path / "run")
    torch.save(ckpt, tmp_path / "run" / "checkpoint.pt")
    argv = [str(tmp_path / "run" / "checkpoint.pt"), "--n", "4", "--walk", "2"]
    assert user_error(sample.main, argv) == ("error: --walk: slerp follows the sphere on which z lie, "
                                             "and at --nz 1 that is two points: use --interp lerp")
    assert not (tmp_path / "run" / "walk.png").exists()
    assert sample.main(argv + ["--interp", "lerp"]) == 0 and sample.main(argv[:3]) == 0  # (no walk: fine)


def test_bad_checkpoints_are_refused_in_one_line(ckpts, tmp_path):
    out = tmp_path / "out"
    error_of = lambda path, *flags: user_error(sample.main, [str(path), "--n", "4", "--out", str(out), *flags])
    assert error_of(tmp_path / "none.pt").startswith(f"error: no checkpoint at {tmp_path / 'none.pt'}: train first")
    msg = error_of(os.path.join(os.path.dirname(ckpts["02_dcgan"]), "netG.pt"))  # weights alone
    assert "a netG.pt holds a generator's weights alone: use the run's checkpoint.pt" in msg
    good = open(ckpts["02_dcgan"], "rb").read()
    for name, content in (("text.pt", b"a text file\n"), ("cut.pt", good[:len(good) // 2])):
        (tmp_path / name).write_bytes(content)
        assert error_of(tmp_path / name) == (f"error: {tmp_path / name} is not a checkpoint this script can "
                                             "read: not a file that torch.save wrote, one cut short, or one that "
                                             "holds Python objects (loading them could run any code)")
    ckpt = load(ckpts["02_dcgan"])
    bad = {"other.pt": {**ckpt, "script": "05_mine"},
           "no seed.pt": {**ckpt, "args": {k: v for k, v in ckpt["args"].items() if k != "seed"}},
           "no nz.pt": {**ckpt, "args": {k: v for k, v in ckpt["args"].items() if k != "nz"}},
           "netG an int.pt": {**ckpt, "netG": 3},
           "script only.pt": {"script": "02_dcgan"}}
    for name, content in bad.items():
        torch.save(content, tmp_path / name)
    for flags in ([], ["--walk", "2"]):
        msg = error_of(tmp_path / "other.pt", *flags)
        assert msg.endswith("was written by 05_mine.py, which these tools do not know")
        for name in ("no seed.pt", "no nz.pt", "script only.pt"):
            msg = error_of(tmp_path / name, *flags)
            assert f"{tmp_path / name} is not a complete checkpoint of 02_dcgan.py" in msg, (name, msg)
        assert "the generator does not fit this model" in error_of(tmp_path / "netG an int.pt", *flags)
    for name in os.listdir(tmp_path):
        if name.endswith(".pt"):
            assert "\n" not in error_of(tmp_path / name), name
    assert not out.exists()  # refused before anything was written


HOLD_LOCK = """import fcntl, os, sys, time
f = open(sys.argv[1], "a+")
fcntl.flock(f, fcntl.LOCK_EX)
f.write(str(os.getpid()))
f.flush()
print("locked", flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="fcntl's flock is POSIX")
def test_a_folder_a_live_run_holds_is_refused(ckpts, tmp_path):
    """A run writing into the folder holds its .lock: sample.py writes nothing there."""
    out = tmp_path / "run"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline() == "locked\n"
        msgs = [user_error(sample.main, [ckpts["01_mlp_gan"], "--out", str(out), *flags])
                for flags in ([], ["--n", "4", "--walk", "2"])]
    finally:
        other.kill()
        other.wait()
        other.stdout.close()
    for msg in msgs:
        assert msg.startswith(f"error: {out} is in use by another run")
    assert os.listdir(out) == [".lock"]
    assert sample.main([ckpts["01_mlp_gan"], "--out", str(out)]) == 0  # once it has ended


def fill_the_disk(f):
    f.write(b"the first bytes")
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("fails", ["generated.png", "walk.png", "walk.gif"])
def test_a_full_disk_keeps_the_earlier_file_and_leaves_no_partial_one(fails, ckpts, tmp_path, monkeypatch):
    ckpt, out = ckpts["01_mlp_gan"], tmp_path / "out"
    argv = [ckpt, "--out", str(out)] + (["--n", "4", "--walk", "2"] if fails.startswith("walk") else [])
    assert sample.main(argv) == 0
    before = {name: (out / name).read_bytes() for name in os.listdir(out) if name.endswith((".png", ".gif"))}
    if fails.endswith(".png"):
        monkeypatch.setattr(torchvision.utils, "save_image", lambda tensor, fp, **kwargs: fill_the_disk(fp))
    else:
        Image.init()  # (else the first GIF written would register PIL's own GIF writer again)
        monkeypatch.setitem(Image.SAVE_ALL, "GIF", lambda im, fp, filename: fill_the_disk(fp))
    msg = user_error(sample.main, argv + ["--seed", "5"])  # other images
    assert msg == f"error: no space left on the disk of {out} ({fails} as it was before is kept)"
    assert (out / fails).read_bytes() == before[fails]
    if fails == "walk.gif":  # walk.png was written whole before it
        assert (out / "walk.png").read_bytes() != before["walk.png"] and png_size(out / "walk.png")
    assert temporary_files(out) == []
