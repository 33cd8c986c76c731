"""02_dcgan.py: end to end on fake data, resume, generate, errors, and the chapter's networks."""
import argparse
import errno
import io
import multiprocessing
import os
import runpy
import shlex
import subprocess
import shutil
import signal
import sys

import pytest
import torch
import torch.nn as nn
from PIL import Image

import common
from torch._utils import ExceptionWrapper
from conftest import ROOT, assert_same_run, grid_size, load, load_script, make_images, png_size, read_csv, usage_error, user_error

dcgan = load_script("02_dcgan")

# Tiny networks and batches: the same code paths as the chapter's run, a thousand times cheaper.
TINY = ["--dataset", "fake", "--ngf", "8", "--ndf", "8", "--batch-size", "8", "--workers", "0"]


def train(out, *extra):
    status = dcgan.main(TINY + ["--out", str(out)] + [str(a) for a in extra])
    assert status == 0
    return out


# --------------------------------------------------------------------------------------------
# A whole run and everything it writes
# --------------------------------------------------------------------------------------------
@pytest.mark.gif
def test_a_run_writes_every_output(tmp_path, capsys, device):
    out = train(tmp_path / "run", "--epochs", 2, "--sample-every", 3, "--log-every", 2)
    log = capsys.readouterr().out

    # the console: device, seed, data, both networks, the chapter's log line with it/s
    assert f"Device: {device}" in log and "Random Seed:  999" in log
    assert "Dataset: fake, 32 images, in memory, 4 batches of 8 per epoch" in log
    assert "Generator(" in log and "Discriminator(" in log
    assert "[1/2][2/4]\tLoss_D: " in log and "\tD(G(z)): " in log and " it/s" in log

    # 2 epochs x 4 batches = 8 iterations: snapshots at 0, 3, 6 (every 3) and 7 (the very end)
    snaps = sorted(p for p in os.listdir(out) if p.startswith("fake_samples_"))
    assert snaps == [f"fake_samples_{k:06d}.png" for k in (0, 3, 6, 7)]
    for name in snaps:
        assert png_size(out / name) == grid_size(64)  # 64 fixed_noise images, 8 x 8
    assert png_size(out / "real_samples.png") == grid_size(8)  # one real batch of 8
    w, h = grid_size(64)
    assert png_size(out / "real_vs_fake.png") == (w + 16 + grid_size(8)[0], h)
    with Image.open(out / "progress.gif") as gif:
        assert gif.size == grid_size(64) and gif.n_frames == 4

    rows = read_csv(out / "losses.csv")
    assert [int(r["iters"]) for r in rows] == list(range(8))
    assert [int(r["epoch"]) for r in rows] == [0] * 4 + [1] * 4
    assert [int(r["i"]) for r in rows] == [0, 1, 2, 3] * 2
    for r in rows:  # D's outputs are probabilities, BCE losses are positive
        assert 0 < float(r["D_x"]) < 1 and 0 < float(r["D_G_z1"]) < 1 and 0 < float(r["D_G_z2"]) < 1
        assert float(r["Loss_D"]) > 0 and float(r["Loss_G"]) > 0

    ckpt = load(out / "checkpoint.pt")  # weights_only=True: tensors and plain values only
    assert ckpt["script"] == "02_dcgan" and ckpt["iters"] == 8 and len(ckpt["history"]) == 8
    assert ckpt["args"]["ngf"] == 8 and ckpt["fixed_noise"].shape == (64, 100, 1, 1)
    netG = dcgan.Generator(100, 8, 3)
    netG.load_state_dict(load(out / "netG.pt"))
    for k, v in netG.state_dict().items():
        assert torch.equal(v, ckpt["netG"][k])


@pytest.mark.plots
def test_loss_plot(tmp_path):
    pytest.importorskip("matplotlib")
    out = train(tmp_path / "run", "--max-steps", 3)
    assert png_size(out / "losses.png") == (1000, 500)  # the chapter's figsize=(10, 5) at 100 dpi


@pytest.mark.plots
def test_without_matplotlib_the_closing_line_says_why_there_is_no_plot(tmp_path, monkeypatch, capsys):
    for name in {"matplotlib", *(m for m in sys.modules if m.startswith("matplotlib."))}:
        monkeypatch.setitem(sys.modules, name, None)  # import matplotlib (and its parts) now fails
    out = train(tmp_path / "run", "--max-steps", 3)
    assert not (out / "losses.png").exists() and (out / "losses.csv").exists()
    log = capsys.readouterr().out
    # the closing list names what was written, and why there is no plot
    assert "no losses.png (pip install matplotlib)" in log.splitlines()[-1]


def test_max_steps_stops_and_saves(tmp_path):
    out = train(tmp_path / "run", "--epochs", 10, "--max-steps", 6, "--sample-every", 100)
    assert load(out / "checkpoint.pt")["iters"] == 6
    assert len(read_csv(out / "losses.csv")) == 6
    # the snapshot of the last iteration exists, as at the very end of a full run
    snaps = sorted(p for p in os.listdir(out) if p.startswith("fake_samples_"))
    assert snaps == ["fake_samples_000000.png", "fake_samples_000005.png"]


# --------------------------------------------------------------------------------------------
# Resume
# --------------------------------------------------------------------------------------------
@pytest.mark.cpu_only("bit for bit needs deterministic kernels; cuDNN's benchmark mode picks its algorithms per process")
@pytest.mark.gif
def test_resume_from_an_epoch_end_is_bit_identical(tmp_path):
    straight = train(tmp_path / "straight", "--epochs", 2)
    resumed = train(tmp_path / "resumed", "--epochs", 1)
    train(tmp_path / "elsewhere", "--resume", resumed / "checkpoint.pt", "--epochs", 2,
          "--out", resumed)
    assert_same_run(straight, resumed)
    # the resumed run's GIF holds the snapshots of both parts (0, and 7: the end of each)
    with Image.open(resumed / "progress.gif") as gif:
        assert gif.n_frames == 3  # 000000, 000003 (end of part 1), 000007


@pytest.mark.cpu_only("bit for bit needs deterministic kernels; cuDNN's benchmark mode picks its algorithms per process")
def test_resume_in_the_middle_of_an_epoch_is_bit_identical(tmp_path):
    straight = train(tmp_path / "straight", "--epochs", 2)
    part = train(tmp_path / "part", "--epochs", 2, "--max-steps", 3)
    # --out defaults to the checkpoint's folder; --max-steps belongs to one invocation only
    dcgan.main(["--resume", str(part / "checkpoint.pt"), "--workers", "0"])
    assert_same_run(straight, part)


def test_resume_keeps_the_runs_settings(tmp_path):
    out = train(tmp_path / "run", "--max-steps", 2)
    with pytest.raises(common.UserError, match="--ngf 8"):
        dcgan.main(["--resume", str(out / "checkpoint.pt"), "--ngf", "16"])
    with pytest.raises(common.UserError, match="--lr 0.0002"):
        dcgan.main(["--resume", str(out / "checkpoint.pt"), "--lr", "0.001"])


@pytest.mark.cpu_only("it stands in for a GPU machine's checkpoint; on CUDA, tests/test_cuda.py moves real ones")
def test_a_checkpoint_from_a_gpu_machine_resumes_on_this_one(tmp_path):
    out = train(tmp_path / "run", "--max-steps", 2)
    ckpt = load(out / "checkpoint.pt")
    ckpt["args"]["device"] = "cuda"  # as written by a run with --device cuda, with CUDA's random state
    ckpt["rng"]["device_type"], ckpt["rng"]["device"] = "cuda", torch.zeros(16, dtype=torch.uint8)
    torch.save(ckpt, out / "checkpoint.pt")
    # --device is the machine's, not the run's: auto here, whatever the checkpoint says
    assert dcgan.main(["--resume", str(out / "checkpoint.pt"), "--max-steps", "3"]) == 0
    assert load(out / "checkpoint.pt")["iters"] == 3


def test_a_finished_run_says_how_to_go_on(tmp_path):
    out = train(tmp_path / "run", "--epochs", 1)
    with pytest.raises(common.UserError, match="has done 4 iterations .1 epochs. already: pass a larger --epochs"):
        dcgan.main(["--resume", str(out / "checkpoint.pt")])
    with pytest.raises(common.UserError, match="larger --epochs or --max-steps to go on$"):
        dcgan.main(["--resume", str(out / "checkpoint.pt"), "--epochs", "3", "--max-steps", "4"])


def test_a_new_run_does_not_overwrite_a_checkpoint(tmp_path):
    out = train(tmp_path / "run", "--max-steps", 2)
    before = (out / "checkpoint.pt").read_bytes()
    with pytest.raises(common.UserError, match="--resume"):
        train(out, "--max-steps", 2)
    assert (out / "checkpoint.pt").read_bytes() == before


HOLD_LOCK = """import fcntl, os, sys, time
f = open(sys.argv[1], "a+")
fcntl.flock(f, fcntl.LOCK_EX)
if sys.argv[2:] != ["before its PID"]:
    f.write(str(os.getpid()))
    f.flush()
print("locked", flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="fcntl's flock is POSIX")
def test_a_run_folder_in_use_is_refused_and_left_alone(tmp_path):
    """Another live process holds the folder's lock (a run that has not written a checkpoint
    yet): a second run must not start there, nor delete that run's snapshots. Once that process
    has ended, however it ended, the system has let go of its lock."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "fake_samples_000000.png").write_bytes(b"the other run's")
    other = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline() == "locked\n"
        msg = error_of(TINY + ["--out", str(out), "--max-steps", "2"])
    finally:
        other.kill()
        other.wait()
    assert f"{out} is in use by another run" in msg
    assert sorted(os.listdir(out)) == [".lock", "fake_samples_000000.png"]  # nothing written
    assert (out / "fake_samples_000000.png").read_bytes() == b"the other run's"
    # once that process has ended, however it ended, the system has let go of its lock
    train(out, "--max-steps", 2)
    assert (out / "checkpoint.pt").exists()


def lock_racer(out, barrier, results):
    barrier.wait()
    try:
        held = common.lock(out)  # the lock stays while this file is open
    except common.UserError:
        results.put("refused")
        barrier.wait()
    else:
        results.put("held")
        barrier.wait()  # hold it until every racer has tried
        held.close()


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
def test_one_of_eight_racing_runs_takes_the_folder(tmp_path):
    """Eight processes try to lock one folder at the same moment, five times: one holds it."""
    context = multiprocessing.get_context("fork")
    for trial in range(5):
        out = tmp_path / str(trial)
        out.mkdir()
        barrier, results = context.Barrier(8), context.Queue()
        racers = [context.Process(target=lock_racer, args=(str(out), barrier, results)) for _ in range(8)]
        for p in racers:
            p.start()
        outcomes = sorted(results.get(timeout=60) for _ in racers)
        for p in racers:
            p.join(timeout=60)
        assert outcomes == ["held"] + ["refused"] * 7, trial


def test_resume_into_another_runs_folder_is_refused(tmp_path):
    a = train(tmp_path / "a", "--max-steps", 2)
    b = train(tmp_path / "b", "--max-steps", 2)
    before = (b / "checkpoint.pt").read_bytes()
    msg = error_of(["--resume", str(a / "checkpoint.pt"), "--max-steps", "4", "--out", str(b)])
    assert f"{b} already holds a run's checkpoint.pt" in msg
    assert (b / "checkpoint.pt").read_bytes() == before
    # into a folder without a checkpoint it goes on
    train(tmp_path / "elsewhere", "--resume", a / "checkpoint.pt", "--max-steps", 4)
    assert load(tmp_path / "elsewhere" / "checkpoint.pt")["iters"] == 4


def test_an_out_that_cannot_be_a_folder(tmp_path):
    (tmp_path / "file").write_text("a file, not a folder")
    for out in (tmp_path / "file", tmp_path / "file" / "run"):  # one line, the OSError's, naming it
        msg = error_of(TINY + ["--out", str(out)])
        assert msg.startswith("error: [Errno") and str(tmp_path / "file") in msg and "\n" not in msg


@pytest.mark.parametrize("failure", ["OSError", "torch"])
def test_a_full_disk_keeps_the_last_checkpoint_and_leaves_no_partial_file(tmp_path, monkeypatch, failure):
    path = str(tmp_path / "checkpoint.pt")
    common.save_checkpoint({"iters": 1}, path)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        if failure == "OSError":
            raise OSError(errno.ENOSPC, "No space left on device")
        # what torch raises when the disk fills up under it
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter "
                           "failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", broken_save)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 0))
    with pytest.raises(common.UserError, match=f"no space left on the disk of {tmp_path}"):
        common.save_checkpoint({"iters": 2}, path)
    assert load(path) == {"iters": 1}
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


def test_sigterm_saves_like_ctrl_c(tmp_path, monkeypatch, capsys):
    """A scheduler's SIGTERM (or kill PID) during iteration 2: the run finishes that iteration,
    saves and stops with status 130, as for the first Ctrl-C."""
    calls = []
    append = common.Run.append

    def append_then_sigterm(self, **values):
        append(self, **values)
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(common.Run, "append", append_then_sigterm)
    out = tmp_path / "my run"  # a space: the resume line must still paste as one path
    assert dcgan.main(TINY + ["--out", str(out), "--epochs", "50"]) == 130
    assert load(out / "checkpoint.pt")["iters"] == 2 and len(read_csv(out / "losses.csv")) == 2
    log = capsys.readouterr().out
    assert "Stopped by SIGTERM after 2 iterations" in log
    resume = log.split("Go on with: ")[1].splitlines()[0]
    assert shlex.split(resume) == ["python", "02_dcgan.py", "--resume", str(out / "checkpoint.pt")]


def test_samples_do_not_depend_on_the_rest_of_the_batch(float32_exact):
    """Eval-mode BatchNorm: an image is a function of its own z, alone or in a grid of 64."""
    torch.manual_seed(0)
    netG = dcgan.Generator(100, 8, 3)
    netG.apply(dcgan.weights_init)
    netG(torch.randn(16, 100, 1, 1))  # one training-mode pass, so the running stats are not 0/1
    z = torch.randn(64, 100, 1, 1)
    grid = dcgan.sample(netG, z)
    for k in (0, 17, 63):
        # (a tolerance that also holds under cuDNN's per-shape algorithms and TF32)
        torch.testing.assert_close(dcgan.sample(netG, z[k:k + 1])[0], grid[k], atol=1e-4, rtol=1e-4)
    assert netG.training  # sample() leaves the model as it found it


# --------------------------------------------------------------------------------------------
# Data: CelebA's layout and the errors a user can run into
# --------------------------------------------------------------------------------------------
def test_trains_on_the_chapters_celeba_layout(tmp_path):
    make_images(tmp_path / "celeba" / "img_align_celeba", 16, size=(178, 218))  # CelebA's size
    out = train(tmp_path / "run", "--dataset", "celeba", "--dataroot", tmp_path, "--max-steps", 2)
    assert len(read_csv(out / "losses.csv")) == 2
    assert png_size(out / "real_samples.png") == grid_size(8)


def error_of(argv):
    return user_error(dcgan.main, argv)


def test_missing_celeba_says_where_it_looked_and_how_to_get_it(tmp_path):
    msg = error_of(["--dataroot", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")])
    assert msg.startswith("error: CelebA not found")
    assert str(tmp_path / "nowhere" / "celeba") in msg
    assert "img_align_celeba/" in msg and "img_align_celeba.zip" in msg
    assert "one level too shallow" in msg and "http" in msg


def test_celeba_images_one_level_too_shallow(tmp_path):
    make_images(tmp_path / "celeba", 4)  # the images directly in celeba/
    msg = error_of(["--dataroot", str(tmp_path), "--out", str(tmp_path / "r")])
    assert "the images are directly in it, one level too shallow" in msg


def test_empty_image_folder(tmp_path):
    (tmp_path / "data" / "empty").mkdir(parents=True)
    msg = error_of(["--dataset", "folder", "--dataroot", str(tmp_path / "data"),
                    "--out", str(tmp_path / "r")])
    assert "no images in" in msg and "no sub-folder with images" in msg


def test_unreadable_image_names_the_file(tmp_path):
    make_images(tmp_path / "data" / "c", 8)
    (tmp_path / "data" / "c" / "0003.jpg").write_bytes(b"not a jpeg")
    msg = error_of(TINY + ["--dataset", "folder", "--dataroot", str(tmp_path / "data"),
                           "--workers", "0", "--out", str(tmp_path / "r")])
    assert msg.startswith("error: cannot read image ") and "0003.jpg" in msg
    assert "Traceback" not in msg


def test_an_error_in_a_dataloader_worker_reads_as_one_line(tmp_path):
    """A worker's UserError reaches the main process re-raised by torch with the worker's
    traceback in its message; cli() keeps the last line. (Through a real worker process this
    costs 5 s of torch's worker shutdown after an error, so the wrapper is built here.)"""
    try:
        common.read_image(str(tmp_path / "missing.jpg"))
    except common.UserError:
        wrapped = ExceptionWrapper(sys.exc_info(), where="in DataLoader worker process 1")

    def main(argv):
        wrapped.reraise()

    msg = user_error(main, [])
    assert msg.startswith("error: cannot read image ") and "missing.jpg" in msg
    assert "Traceback" not in msg and "\n" not in msg


def test_failed_download_says_which_files_to_put_where(tmp_path, monkeypatch):
    """Offline: torchvision's download fails (here: its every fetch refused as offline)."""
    import torchvision.datasets.mnist
    from urllib.error import URLError

    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", offline)
    msg = error_of(["--dataset", "mnist", "--dataroot", str(tmp_path), "--out", str(tmp_path / "r")])
    assert msg.startswith("error: could not download or read MNIST in " + str(tmp_path / "MNIST"))
    # (the network's own words where torchvision passes them on: 0.16 says "Error downloading")
    assert "MNIST/raw/" in msg and "Without internet, put the files there by hand" in msg
    assert not (tmp_path / "r").exists()


def test_fewer_images_than_a_batch(tmp_path):
    msg = error_of(TINY + ["--batch-size", "64", "--out", str(tmp_path / "r")])
    assert "32 images are fewer than one batch: use a smaller --batch-size" in msg


@pytest.mark.parametrize("flags, says", [
    (["--batch-size", "0"], "must be a positive whole number"),
    (["--image-size", "32"], "invalid choice: 32"),
    (["--lr", "-1"], "must be a positive number"),
    (["--beta1", "1.5"], "must be in [0, 1)"),
    (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
    (["--epochs", "two"], "--epochs: expected a number, got 'two'"),
])
def test_bad_flag_values(flags, says, capsys):
    assert says in usage_error(dcgan.main, flags, capsys)


def test_a_second_ctrl_c_exits_130_and_a_failed_run_leaves_no_empty_folder(tmp_path):
    def main(argv):
        raise KeyboardInterrupt
    with pytest.raises(SystemExit) as e:
        common.cli(main, [])
    assert e.value.code == 130
    error_of(["--dataroot", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")])
    assert not (tmp_path / "r").exists()


def test_a_damaged_mnist_file_says_which_folder_to_delete(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 40)  # a header, cut short
    msg = error_of(["--dataset", "mnist", "--dataroot", str(tmp_path), "--out", str(tmp_path / "r")])
    assert msg.startswith(f"error: could not download or read MNIST in {tmp_path / 'MNIST'}")
    assert f"damaged, delete\n{tmp_path / 'MNIST'}" in msg


def test_bad_checkpoints(tmp_path):
    missing = error_of(["--resume", str(tmp_path / "none.pt")])
    assert "no checkpoint at" in missing

    for junk in (b"\x00 not a torch file", b"a text file\n"):
        (tmp_path / "junk.pt").write_bytes(junk)
        msg = error_of(["--resume", str(tmp_path / "junk.pt")])
        assert msg.endswith("is not a checkpoint this script can read: not a file that torch.save "
                            "wrote, one cut short, or one that holds Python objects (loading them could run any code)")

    torch.save({"script": "02_dcgan", "args": argparse.Namespace()}, tmp_path / "pickle.pt")
    msg = error_of(["--resume", str(tmp_path / "pickle.pt")])
    assert "holds Python objects" in msg and "weights_only" not in msg

    torch.save({"script": "01_mlp_gan", "args": {}}, tmp_path / "other.pt")
    msg = error_of(["--resume", str(tmp_path / "other.pt")])
    assert "written by 01_mlp_gan.py" in msg

    out = train(tmp_path / "run", "--max-steps", 2)
    ckpt = load(out / "checkpoint.pt")
    ckpt["netG"]["main.0.weight"] = torch.zeros(100, 16, 4, 4)  # other sizes than its args say
    torch.save(ckpt, tmp_path / "edited.pt")
    msg = error_of(["--resume", str(tmp_path / "edited.pt"), "--out", str(tmp_path / "elsewhere")])
    assert "does not fit this model" in msg and "size mismatch" in msg
    assert not (tmp_path / "elsewhere").exists()  # a refused run leaves nothing behind


@pytest.mark.parametrize("script", ["01_mlp_gan", "04_wgan_gp"])
def test_a_diverged_run_stops_and_keeps_the_last_good_checkpoint(tmp_path, script):
    """At an absurd learning rate the weights overflow within a few steps and the losses turn
    NaN: the run stops at the next log line with what happened, never saving the bad state."""
    module = load_script(script)
    out = tmp_path / "run"
    assert module.main(["--dataset", "fake", "--batch-size", "2", "--workers", "0", "--log-every",
                        "5", "--max-steps", "2", "--epochs", "100", "--out", str(out)]
                       + (["--n-critic", "2"] if script == "04_wgan_gp" else [])) == 0
    ckpt = load(out / "checkpoint.pt")  # the run goes on at the absurd learning rate
    for opt in ("optimizerD", "optimizerG"):
        ckpt[opt]["param_groups"][0]["lr"] = 1e30
    torch.save(ckpt, out / "checkpoint.pt")
    good = (out / "checkpoint.pt").read_bytes()
    msg = user_error(module.main, ["--resume", str(out / "checkpoint.pt"), "--max-steps", "60"])
    assert "became NaN or infinite" in msg and "is kept" in msg and "lower --lr" in msg
    assert (out / "checkpoint.pt").read_bytes() == good


def test_a_nan_in_the_losses_is_caught_at_the_next_flush(tmp_path):
    run = common.Run("02_dcgan", dcgan.parser.parse_args(["--out", str(tmp_path)]), None,
                     torch.device("cpu"))
    run.at = [0, 0, 0]  # what run.enumerate sets for each iteration
    run.append(Loss_D=torch.tensor(1.0), Loss_G=torch.tensor(2.0))
    run.flush()
    assert run.rows == [[0, 0, 0, 1.0, 2.0]]
    run.at = [0, 1, 1]
    run.append(Loss_D=torch.tensor(float("nan")), Loss_G=torch.tensor(2.0))
    with pytest.raises(common.UserError, match="NaN or infinite at iteration 1"):
        run.flush()
    assert len(read_csv(tmp_path / "losses.csv")) == 2  # the bad row is on record, for a look


def test_command_line_errors_have_no_traceback(tmp_path, monkeypatch):
    """`python 02_dcgan.py ...` as __main__ (in this process: a new one costs 4 s of imports).
    sys.exit with a message prints that message alone to stderr and exits with status 1."""
    monkeypatch.setattr(sys, "argv", ["02_dcgan.py", "--dataroot", str(tmp_path), "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(os.path.join(ROOT, "02_dcgan.py"), run_name="__main__")
    assert isinstance(e.value.code, str) and e.value.code.startswith("error: CelebA not found")


# --------------------------------------------------------------------------------------------
# The chapter's networks
# --------------------------------------------------------------------------------------------
def test_generator_doubles_the_size_at_each_layer():
    netG = dcgan.Generator(nz=100, ngf=64, nc=3)
    x, sizes = torch.randn(2, 100, 1, 1), []
    for layer in netG.main:
        x = layer(x)
        if isinstance(layer, nn.ConvTranspose2d):
            sizes.append(tuple(x.shape[1:]))
    assert sizes == [(512, 4, 4), (256, 8, 8), (128, 16, 16), (64, 32, 32), (3, 64, 64)]
    assert x.min() >= -1 and x.max() <= 1  # Tanh


def test_discriminator_halves_the_size_at_each_layer():
    netD = dcgan.Discriminator(nc=3, ndf=64)
    x, sizes = torch.randn(2, 3, 64, 64), []
    for layer in netD.main:
        x = layer(x)
        if isinstance(layer, nn.Conv2d):
            sizes.append(tuple(x.shape[1:]))
    assert sizes == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (1, 1, 1)]
    assert ((x > 0) & (x < 1)).all()  # Sigmoid: a probability


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_at_the_chapters_settings():
    # ConvTranspose2d/Conv2d 4x4 without bias: in * out * 16; BatchNorm2d(c): 2c (scale, shift)
    g = (100 * 512 + 512 * 256 + 256 * 128 + 128 * 64 + 64 * 3) * 16 + 2 * (512 + 256 + 128 + 64)
    d = (3 * 64 + 64 * 128 + 128 * 256 + 256 * 512 + 512 * 1) * 16 + 2 * (128 + 256 + 512)
    assert (g, d) == (3_576_704, 2_765_568)
    assert count(dcgan.Generator(100, 64, 3)) == g
    assert count(dcgan.Discriminator(3, 64)) == d


def test_ngf_ndf_128_give_the_mnist_models_of_section_12_4_6():
    """§12.4.6 doubles every hidden layer (ngf*16 ... ngf*2 at ngf = 64) and sets nc = 1."""
    def layers(model):
        return [(type(m).__name__, m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding)
                for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]

    g_1246 = [("ConvTranspose2d", 100, 1024, (4, 4), (1, 1), (0, 0)),
              ("ConvTranspose2d", 1024, 512, (4, 4), (2, 2), (1, 1)),
              ("ConvTranspose2d", 512, 256, (4, 4), (2, 2), (1, 1)),
              ("ConvTranspose2d", 256, 128, (4, 4), (2, 2), (1, 1)),
              ("ConvTranspose2d", 128, 1, (4, 4), (2, 2), (1, 1))]
    d_1246 = [("Conv2d", 1, 128, (4, 4), (2, 2), (1, 1)),
              ("Conv2d", 128, 256, (4, 4), (2, 2), (1, 1)),
              ("Conv2d", 256, 512, (4, 4), (2, 2), (1, 1)),
              ("Conv2d", 512, 1024, (4, 4), (2, 2), (1, 1)),
              ("Conv2d", 1024, 1, (4, 4), (1, 1), (0, 0))]
    netG = dcgan.Generator(100, 128, dcgan.channels("mnist"))
    netD = dcgan.Discriminator(dcgan.channels("mnist"), 128)
    assert layers(netG) == g_1246 and layers(netD) == d_1246
    assert [m.num_features for m in netG.modules() if isinstance(m, nn.BatchNorm2d)] == [1024, 512, 256, 128]
    assert [m.num_features for m in netD.modules() if isinstance(m, nn.BatchNorm2d)] == [256, 512, 1024]
    assert all(m.bias is None for m in netG.modules() if isinstance(m, nn.ConvTranspose2d))


def test_weights_init_follows_the_dcgan_paper():
    torch.manual_seed(0)
    netG = dcgan.Generator(100, 64, 3)
    netG.apply(dcgan.weights_init)
    conv = torch.cat([m.weight.flatten() for m in netG.modules() if isinstance(m, nn.ConvTranspose2d)])
    bn = [m for m in netG.modules() if isinstance(m, nn.BatchNorm2d)]
    scale = torch.cat([m.weight for m in bn]).detach()
    assert abs(conv.mean()) < 1e-3 and abs(conv.std() - 0.02) < 1e-3
    # N(1, 0.02), not §12.4.6's N(0, 0.02): 960 values, the mean within 0.01 of 1
    assert abs(scale.mean() - 1) < 0.01 and 0.015 < scale.std() < 0.025
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in bn)


def test_epoch_sampler_resumes_inside_an_epoch():
    s = common.EpochSampler(range(20), num_replicas=1, rank=0, seed=5)
    s.set_epoch(1)
    order = list(s)
    assert sorted(order) == list(range(20))  # a permutation: every image once an epoch
    s.set_epoch(1, start=8)
    assert list(s) == order[8:] and len(s) == 20  # len: the epoch's, skipped part included
    s.set_epoch(2)
    assert list(s) != order  # a new order every epoch


def test_a_signal_during_a_print_does_not_crash_the_run(tmp_path, monkeypatch, capfd):
    """A Ctrl-C lands wherever the loop is, also inside a print (under torchrun it crashed a
    process once in ~12 runs: "reentrant call inside <_io.BufferedWriter>"). The handler must
    not print to sys.stdout: here the signal comes inside stdout's own buffered write."""
    run = common.Run("02_dcgan", dcgan.parser.parse_args(TINY + ["--out", str(tmp_path)]), None,
                     torch.device("cpu"))

    class SignalInsideWrite(io.RawIOBase):
        def writable(self):
            return True

        def write(self, b):
            if not run.signal:
                run._on_signal(signal.SIGINT, None)  # as if Ctrl-C came now, stdout's lock held
            return len(b)

    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BufferedWriter(SignalInsideWrite()),
                                                        line_buffering=True))
    print("[0/5][2/4]\tLoss_D: ...")
    run.release()
    assert run.signal == "Ctrl-C"
    assert "Ctrl-C: finishing this iteration" in capfd.readouterr().err
