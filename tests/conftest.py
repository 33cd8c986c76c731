"""Helpers shared by the tests of the four scripts.

The scripts' names start with digits, so they are imported with importlib. Tests run them
in-process through main(argv) on torchvision's FakeData (no download, no real dataset), with
tiny networks and a tiny fake dataset so that the whole suite stays fast on 2 CPU cores.
"""
import contextlib
import csv
import importlib
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from PIL import Image, PngImagePlugin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import common  # noqa: E402


SCRIPTS = ("01_mlp_gan", "02_dcgan", "03_cgan", "04_wgan_gp")
ON_THE_DEVICE = SCRIPTS + ("evaluate",)  # the modules whose main() takes --device


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", choices=["cpu", "cuda", "mps"],
                     help="the device every script run end to end trains on (default: cpu)")


def pytest_configure(config):
    config.addinivalue_line("markers", "cpu_only(reason): a test that means something on the CPU only")
    config.addinivalue_line("markers", "cuda_only: a test that means something on CUDA only")
    config.addinivalue_line("markers", "plots: a test that draws losses.png (elsewhere runs skip it)")
    config.addinivalue_line("markers", "gif: a test that looks at progress.gif (elsewhere runs skip it)")
    device = config.getoption("--device")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.exit(f"--device cuda: torch {torch.__version__} sees no CUDA GPU on this machine",
                    returncode=4)
    if device == "mps" and not torch.backends.mps.is_available():
        pytest.exit("--device mps: MPS (Apple GPU) is not available on this machine", returncode=4)
    if device == "cpu":
        # torch.manual_seed also queues a seed for CUDA, XPU and MTIA, which no test starts on
        # the CPU, and formats the stack for each: 2 ms a call at pytest's depth, and FakeData
        # seeds every image it makes (7 s of the suite). The CPU's generator is seeded as before.
        # Only for a backend this machine lacks: one that is there stays seeded.
        for name in ("cuda", "xpu", "mtia"):
            backend = getattr(torch, name, None)  # (an older torch has fewer)
            if backend is not None and not backend.is_available():
                backend.manual_seed_all = lambda seed: None


@pytest.fixture(scope="session")
def device(request):
    """The device of `pytest --device`: the scripts' runs use it."""
    return request.config.getoption("--device")


@pytest.fixture(autouse=True)
def scripts_on_the_device(request, device, monkeypatch):
    """Every script main() (and evaluate.main()) a test calls runs on --device, the CPU too
    (else a machine with a GPU would pick it), unless the test names a device; the tests marked
    cpu_only / cuda_only skip elsewhere, saying why."""
    cpu_only = request.node.get_closest_marker("cpu_only")
    if cpu_only and device != "cpu":
        pytest.skip(f"CPU only: {cpu_only.args[0]}")
    if request.node.get_closest_marker("cuda_only") and device != "cuda":
        pytest.skip("needs CUDA: run python -m pytest --device cuda on a machine with a GPU")
    for name in ON_THE_DEVICE:
        module = load_script(name)
        main = module.main
        monkeypatch.setattr(module, "main", lambda argv=None, main=main: main(
            list(argv) + ["--device", device] if argv is not None and "--device" not in argv else argv))


def load_script(name):
    """The module of a script, e.g. load_script("02_dcgan")."""
    return importlib.import_module(name)


@pytest.fixture(autouse=True)
def small_fake_data(monkeypatch):
    """--dataset fake makes 32 images instead of 1000: with --batch-size 8, 4 batches an epoch."""
    monkeypatch.setattr(common, "FAKE_SIZE", 32)
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def no_loss_plot(request, monkeypatch):
    """matplotlib takes about 0.08 s to draw losses.png, 5 s over the suite's runs, and GIF's
    palette per frame 0.04 s a progress.gif: only the tests marked plots (or gif), which look
    at it, draw it."""
    if not request.node.get_closest_marker("plots"):
        monkeypatch.setattr(common, "plot_losses", lambda curves, title, path: None)
    if not request.node.get_closest_marker("gif"):
        save_gif = common.save_gif
        monkeypatch.setattr(common, "save_gif", lambda frames, path, duration: None if path.endswith(
            "progress.gif") else save_gif(frames, path, duration))


@pytest.fixture(autouse=True)
def fast_pngs(monkeypatch):
    """PNGs written at zlib's fastest level: the same images, and a third of a tiny run's time
    less (the grids, snapshots and real_vs_fake.png of every run, at the default level 6)."""
    save = PngImagePlugin._save

    def fastest(im, fp, filename, *args, **kwargs):
        im.encoderinfo.setdefault("compress_level", 1)
        return save(im, fp, filename, *args, **kwargs)
    monkeypatch.setitem(Image.SAVE, "PNG", fastest)


def make_images(folder, n, size=(72, 88), ext="jpg"):
    """n small one-colour images in folder (created), as files ImageFolder reads; returns it."""
    os.makedirs(folder, exist_ok=True)
    g = torch.Generator().manual_seed(n)
    for k in range(n):
        rgb = tuple(int(c) for c in torch.randint(0, 256, (3,), generator=g))
        Image.new("RGB", size, rgb).save(os.path.join(folder, f"{k:04d}.{ext}"))
    return folder


@contextlib.contextmanager
def tmpfs(folder, size):
    """A real file system of size (e.g. "1m") mounted at folder, where this machine lets the
    tests mount one (else the test skips); unmounted at the end."""
    folder.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                      capture_output=True).returncode:
        pytest.skip("this machine does not let the tests mount a tmpfs")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def png_size(path):
    """(width, height) of an image file, which must be a valid image."""
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def grid_size(n, nrow=8, side=64, padding=2):
    """The (width, height) torchvision.utils.make_grid gives n images of side x side."""
    cols = min(n, nrow)
    rows = -(-n // cols)
    return cols * (side + padding) + padding, rows * (side + padding) + padding


def usage_error(main, argv, capsys):
    """What argparse prints for a bad flag; it must exit with status 2 (usage error)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def read_csv(path):
    """losses.csv as a list of dicts, one per iteration."""
    with open(path) as f:
        return list(csv.DictReader(f))


def load(path):
    """A checkpoint or netG.pt, as the scripts load them."""
    return torch.load(path, map_location="cpu", weights_only=True)


def user_error(main, argv):
    """The message the command line prints for a user error (common.cli exits with it)."""
    with pytest.raises(SystemExit) as e:
        common.cli(main, argv)
    return str(e.value.code)


def assert_same_run(a, b):
    """Two run folders ended in the same state: iterations, weights and BatchNorm running
    statistics bit for bit, and the same losses.csv."""
    ca, cb = load(a / "checkpoint.pt"), load(b / "checkpoint.pt")
    assert ca["iters"] == cb["iters"]
    for net in ("netG", "netD"):
        for k in ca[net]:
            assert torch.equal(ca[net][k], cb[net][k]), (net, k)
    assert read_csv(a / "losses.csv") == read_csv(b / "losses.csv")


def torchrun_cmd(dump, jobs, nproc=2):
    """torchrun running tests/ddp_worker.py's jobs: [[name, script, argv, fake size], ...]."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            str(nproc), os.path.join(ROOT, "tests", "ddp_worker.py"), str(dump), json.dumps(jobs)]


def signal_at_iteration_2(runs, env=None):
    """Start each (cmd, signal) in its own session, all at once (their start-up, most of it
    importing torch, overlaps on two cores), and send each its signal once its log shows
    iteration 2, to its process group, as a terminal sends Ctrl-C or a scheduler SIGTERM to a
    job. Returns [(exit status, stdout, stderr)] in order; a run that never trains shows why."""
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True) for cmd, _ in runs]
    before = []
    for p, (_, sig) in zip(procs, runs):
        before.append([])
        for line in p.stdout:
            before[-1].append(line)
            if re.match(r"\[0/\d+\]\[2/", line):
                os.killpg(p.pid, sig)
                break
    results = []
    for p, lines in zip(procs, before):
        stdout, stderr = p.communicate(timeout=120)
        results.append((p.returncode, "".join(lines) + stdout, stderr))
    return results


@pytest.fixture
def float32_exact(monkeypatch):
    """For tests that compare images made in batches of different sizes: on CUDA, TF32 rounds a
    convolution's inputs to 10 bits and cudnn.benchmark (which a script's main() turns on) picks
    an algorithm per batch shape, so the same image can differ by about 1e-3 between batches;
    here both are off, and such images agree to float32's rounding. (On the CPU: no change.)"""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    # (matrix products: TF32 is off by torch's default, torch.backends.cuda.matmul.allow_tf32)
