"""What a hostile user does to a run: a full disk, signals at the wrong moment, damaged and
hand-made files, absurd flags. Each must end in one clear line with the right exit status (130
for a signal, 1 or 2 for bad input), no traceback, no temporary file, the last checkpoint as
it was."""
import contextlib
import glob
import os
import signal
import subprocess
import sys

import pytest
import torch

import common
from conftest import ROOT, load, load_script, tmpfs, usage_error, user_error

dcgan = load_script("02_dcgan")
TINY = ["--dataset", "fake", "--ngf", "8", "--ndf", "8", "--batch-size", "8", "--workers", "0"]


def error_of(argv, script=dcgan):
    return user_error(script.main, argv)


def train(out, *extra):
    assert dcgan.main(TINY + ["--out", str(out), *map(str, extra)]) == 0
    return out


@pytest.fixture(scope="module")
def earlier(tmp_path_factory):
    """A run of one iteration, for the tests that need its checkpoint.pt and netG.pt (they
    leave it as it is)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(common, "FAKE_SIZE", 32)  # (small_fake_data's, for this module-wide fixture)
        return train(tmp_path_factory.mktemp("earlier"), "--max-steps", 1, "--device", "cpu")


def temporary_files(folder):
    return glob.glob(os.path.join(folder, "**", "*.tmp*"), recursive=True)


# --- Saving and signals ------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MB filesystem (a tmpfs), where this machine lets the tests mount one."""
    with tmpfs(tmp_path / "disk", "1m") as disk:
        yield disk


def test_a_full_disk_keeps_the_checkpoint_and_leaves_no_partial_file(small_disk):
    path = small_disk / "checkpoint.pt"
    common.save_checkpoint({"iters": 1}, str(path))
    before = path.read_bytes()
    # torch's zip writer, not the OS, reports this one ("unexpected pos ...")
    with pytest.raises(common.UserError, match=f"no space left on the disk of {small_disk} "
                                               r"\(checkpoint.pt as it was before is kept\)"):
        common.save_checkpoint({"w": torch.zeros(2**19)}, str(path))  # 2 MB
    assert path.read_bytes() == before and os.listdir(small_disk) == ["checkpoint.pt"]
    # a whole run there: one line, whatever file the disk refuses first
    msg = error_of(TINY + ["--out", str(small_disk / "run"), "--max-steps", "2"])
    assert msg.startswith("error: ") and "space left" in msg.lower() and "\n" not in msg
    assert temporary_files(small_disk) == []


def test_a_second_ctrl_c_during_the_write_quits_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    out = train(tmp_path / "run", "--max-steps", 2)
    before = (out / "checkpoint.pt").read_bytes()
    real_open = open

    class SecondCtrlCWhileWriting:  # the file torch.save writes to, with a second Ctrl-C inside
        def __init__(self, path, mode):
            self.f = real_open(path, mode)

        def write(self, b):
            run = common._RUN
            run.signal, run.signalled_at = "Ctrl-C", -1e9  # the first, long ago
            run._on_signal(signal.SIGINT, None)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(common, "open", lambda path, mode="r", *a, **k: SecondCtrlCWhileWriting(path, mode)
                        if ".tmp" in str(path) else real_open(path, mode, *a, **k), raising=False)
    with pytest.raises(SystemExit) as e:
        common.cli(dcgan.main, ["--resume", str(out / "checkpoint.pt"), "--max-steps", "4"])
    assert e.value.code == 130 and capsys.readouterr().err.strip().endswith("interrupted")
    assert (out / "checkpoint.pt").read_bytes() == before and temporary_files(out) == []


@contextlib.contextmanager
def sigterm_fails_the_test():
    """Without a handler of the run's own, a SIGTERM would end pytest: make it a failure."""
    def unhandled(signum, frame):
        raise AssertionError("the SIGTERM reached no handler of the run's")
    before = signal.signal(signal.SIGTERM, unhandled)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


@pytest.mark.parametrize("when", ["loading the data", "sampling"])
def test_a_sigterm_before_the_training_loop_quits_cleanly(tmp_path, monkeypatch, capsys, when, earlier):
    sigterm = lambda *a, **k: os.kill(os.getpid(), signal.SIGTERM)
    if when == "loading the data":
        monkeypatch.setattr(dcgan, "get_dataset", sigterm)
        main, argv = dcgan.main, TINY + ["--out", str(tmp_path / "new")]
    else:
        monkeypatch.setattr(common, "save_grid", sigterm)
        main, argv = load_script("sample").main, [str(earlier / "checkpoint.pt"), "--out", str(tmp_path / "new")]
    with sigterm_fails_the_test(), pytest.raises(SystemExit) as e:
        common.cli(main, argv)
    assert e.value.code == 130 and capsys.readouterr().err.strip().endswith("interrupted")
    # the folder is free again (a new run's, refused before training, is gone)
    if when == "loading the data":
        assert not (tmp_path / "new").exists()
    else:
        common.lock(tmp_path / "new").close()  # (refused, were it still held)


def test_max_steps_ends_the_run_whatever_the_epochs(tmp_path):
    def hung(signum, frame):
        raise AssertionError("still running 30 s after --max-steps")
    before = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        out = train(tmp_path / "run", "--max-steps", 2, "--epochs", 10**20)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)
    assert load(out / "checkpoint.pt")["iters"] == 2 and (out / "netG.pt").exists()


# --- Damaged and hand-made files -----------------------------------------------------------------
@pytest.mark.parametrize("content", [b"", b"0123456789", bytes(range(256)) * 8])
def test_a_damaged_mnist_says_which_folder_to_delete(tmp_path, content):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(content)
    msg = error_of(["--dataset", "mnist", "--dataroot", str(tmp_path), "--out", str(tmp_path / "r")])
    assert msg.startswith(f"error: could not download or read MNIST in {tmp_path / 'MNIST'}")
    assert f"delete\n{tmp_path / 'MNIST'} to download them again" in msg


def test_hand_made_checkpoints_are_refused_in_one_line(tmp_path, earlier):
    good = load(earlier / "checkpoint.pt")
    cases = {"script only": {"script": "02_dcgan"},
             "no netD": {k: v for k, v in good.items() if k != "netD"},
             "an optimizer of junk": {**good, "optimizerD": {"state": 1}}}
    for case, ckpt in cases.items():
        path = tmp_path / f"{case}.pt"
        torch.save(ckpt, path)
        msg = error_of(["--resume", str(path), "--out", str(tmp_path / "out")])
        said = "does not fit this model" if case == "an optimizer of junk" else "is not a complete checkpoint"
        assert msg.startswith(f"error: {path}") and said in msg and "\n" not in msg, (case, msg)
        assert not (tmp_path / "out").exists()


class Evil:
    def __reduce__(self):
        return (os.system, ("echo this ran",))


def test_a_malicious_pickle_is_named_for_what_it_is(tmp_path, capfd, earlier):
    good = load(earlier / "checkpoint.pt")
    for name, obj in (("alone.pt", Evil()), ("nested.pt", {**good, "args": {**good["args"], "x": Evil()}}),
                      ("netG.pt", {"main.0.weight": Evil()})):
        torch.save(obj, tmp_path / name)
        msg = error_of(["--resume", str(tmp_path / name)])
        assert "holds Python objects (loading them could run any code)" in msg, msg
    assert "this ran" not in capfd.readouterr().out
    (tmp_path / "cut.pt").write_bytes((tmp_path / "alone.pt").read_bytes()[:-40])
    assert "one cut short" in error_of(["--resume", str(tmp_path / "cut.pt")])


# --- Flags ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("script, flags, says", [
    ("02_dcgan", ["--seed", "1e23"], "--seed: expected a number"),
    ("02_dcgan", ["--seed", str(2**64 - 1)], "--seed: must be a whole number from 0 to 2**32 - 1"),
    ("02_dcgan", ["--lr", "1e39"], "--lr: must be a positive number up to 1e30"),
    ("04_wgan_gp", ["--lr", "1e308"], "--lr: must be a positive number up to 1e30"),
])
def test_flags_past_what_the_run_can_honour(capsys, script, flags, says):
    assert says in usage_error(load_script(script).main, flags, capsys)


@pytest.mark.parametrize("flags, says", [
    (["--batch-size", "1"], "--batch-size 1: G's BatchNorm1d needs at least 2 images a batch"),
    (["--clip", "0.01", "--lambda-gp", "5"], "--clip replaces the gradient penalty"),
    (["--image-size", "40000"], "at most 256"),  # (its fake data alone would fill the memory)
])
def test_wgan_flags_it_cannot_honour(tmp_path, flags, says):
    msg = error_of(["--dataset", "fake", "--workers", "0", "--out", str(tmp_path), *flags],
                   load_script("04_wgan_gp"))
    assert says in msg


KILLED_WHILE_SAVING = """import importlib, os, signal, sys
import torch
sys.path.insert(0, sys.argv[1])
import common
common.FAKE_SIZE = 16  # 2 iterations an epoch: a checkpoint every 2
saves, save = [], torch.save
def save_then_die(obj, f, *args, **kwargs):
    saves.append(1)
    if len(saves) == 3:  # the third checkpoint, half written: kill -9
        f.write(b"half a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return save(obj, f, *args, **kwargs)
torch.save = save_then_die
importlib.import_module("02_dcgan").main(sys.argv[2:])
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_a_kill_9_during_a_save_leaves_the_last_checkpoint_loadable(tmp_path):
    """kill -9 cannot be caught: nothing of the run's runs after it. The checkpoint is written to
    a temporary file and renamed over the last one once whole, so the last one stays whole."""
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-c", KILLED_WHILE_SAVING, ROOT, *TINY, "--device", "cpu",
                        "--epochs", "10", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert common.load_checkpoint(str(out / "checkpoint.pt"), "02_dcgan")["iters"] == 4  # the 2nd save
    leftovers = temporary_files(out)  # the half-written one, which Troubleshooting says to delete
    assert len(leftovers) == 1 and os.path.basename(leftovers[0]).startswith("checkpoint.pt.tmp")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(common, "FAKE_SIZE", 16)
        assert dcgan.main(["--resume", str(out / "checkpoint.pt"), "--max-steps", "6"]) == 0
    assert load(out / "checkpoint.pt")["iters"] == 6
