"""torchrun: two CPU processes (Gloo) for each script, started as a user starts them; and the
other runs that need processes of their own, stopped by a real signal: Ctrl-C through a
launcher that forwards it, a scheduler's SIGTERM to the whole job. All start at once.

Each torchrun job goes through tests/ddp_worker.py, which keeps each rank's files apart and
saves its copy of the parameters, so that "rank 0 alone writes" and "the copies stay identical"
are checked on what the processes really did.
"""
import os
import signal
import sys

import pytest
import torch

from conftest import load, load_script, make_images, read_csv, signal_at_iteration_2, torchrun_cmd

import common

SCRIPTS = {  # tiny networks where the script has the flags
    "01_mlp_gan": ["--k", "2"],
    "02_dcgan": ["--ngf", "8", "--ndf", "8"],
    "03_cgan": ["--ngf", "8", "--ndf", "8"],
    "04_wgan_gp": ["--n-critic", "2"],
}
FLAGS = ["--dataset", "fake", "--device", "cpu", "--batch-size", "4", "--workers", "0",
         "--max-steps", "3", "--out", "run"]
OUTPUTS = ["real_samples.png", "fake_samples_000000.png", "fake_samples_000002.png", "progress.gif",
           "real_vs_fake.png", "losses.csv", "checkpoint.pt", "netG.pt"]


ENV = dict(os.environ, OMP_NUM_THREADS="1")
CTRL_C = [*FLAGS[:-4], "--log-every", "1", "--out", "run", "--ngf", "8", "--ndf", "8"]


FORWARDING = """import signal, subprocess, sys
child = subprocess.Popen(sys.argv[1:])
signal.signal(signal.SIGINT, lambda signum, frame: child.send_signal(signal.SIGINT))
sys.exit(child.wait())
"""  # a launcher that passes a Ctrl-C on, as torchrun's agent does: its child gets two
ALONE = ["--ngf", "8", "--ndf", "8", "--batch-size", "8", "--workers", "2", "--log-every", "1",
         "--epochs", "1000"]  # (until the signal comes: a full pipe makes a run wait for it)


@pytest.fixture(scope="module")
def started(tmp_path_factory, device):
    """Everything that runs in new processes, started at once (starting torch is most of the
    time, and the starts overlap on two cores), each stopped by its signal at iteration 2:
    torchrun with its jobs (the four scripts from scratch, 02 resuming a checkpoint that one
    process wrote, 02 diverging in one process, 02 on a folder of images with a Ctrl-C in one
    process alone, and last a run of 200 images, long enough to press Ctrl-C while it trains); and 02 alone, on images its workers read from disk, with a
    Ctrl-C through a forwarding launcher, and with SIGTERM to every process of the job."""
    dump = tmp_path_factory.mktemp("ddp")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(common, "FAKE_SIZE", 32)
        one = dump / "one"
        assert load_script("02_dcgan").main([*FLAGS[:-4], *SCRIPTS["02_dcgan"], "--max-steps", "2",
                                             "--out", str(one)]) == 0
    jobs = [[script, script, [*FLAGS, *flags], 32] for script, flags in SCRIPTS.items()]
    jobs.append(["resume", "02_dcgan", ["--resume", str(one / "checkpoint.pt"), "--device", "cpu",
                                        "--max-steps", "4"], 32])
    jobs.append(["nan_on_rank1", "02_dcgan", [*FLAGS[:-2], *SCRIPTS["02_dcgan"], "--log-every", "1",
                                              "--out", "run"], 32])
    make_images(dump / "images" / "c", 48)  # 6 iterations an epoch
    jobs.append(["signal_on_rank1", "02_dcgan", [*CTRL_C, "--dataset", "folder", "--dataroot",
                                                 str(dump / "images"), "--epochs", "2",
                                                 "--log-every", "4"], 0])
    make_images(dump / "celeba" / "img_align_celeba", 64)
    jobs.append(["ctrl_c", "02_dcgan", CTRL_C, 200])
    alone = [sys.executable, "02_dcgan.py", *ALONE, "--dataroot", str(dump), "--device", device, "--out"]
    results = signal_at_iteration_2([
        ([sys.executable, "-c", FORWARDING, *alone, str(dump / "ctrl_c_alone")], signal.SIGINT),
        ([*alone, str(dump / "sigterm")], signal.SIGTERM),
        (torchrun_cmd(dump, jobs), signal.SIGINT)], env=ENV)  # (its Ctrl-C job comes last)
    return dump, results


@pytest.fixture(scope="module")
def runs(started):
    dump, [_, _, (_, stdout, stderr)] = started
    assert "Go on with" in stdout, stdout + stderr
    return dump, stdout


def ranks_of(dump, job):
    return [load(dump / job / f"rank{k}.pt") for k in (0, 1)]


@pytest.mark.parametrize("script", SCRIPTS)
def test_two_processes_train_one_model(runs, script):
    dump, stdout = runs
    ranks = ranks_of(dump, script)
    for rank in ranks:
        assert rank["status"] == 0 and rank["backend"] == "gloo"
        assert rank["types"] == ["DistributedDataParallel"] * 2  # netG and netD (critic)
    # Each rank drew its own noise from its own shard of the data; the gradients were averaged,
    # so after 3 iterations the two copies of G and of D are still bit for bit the same
    for model0, model1 in zip(ranks[0]["params"], ranks[1]["params"]):
        assert model0.keys() == model1.keys()
        for name in model0:
            assert torch.equal(model0[name], model1[name]), name
    # Rank 0 alone wrote files and printed
    assert os.listdir(dump / script / "rank1") == []
    out = dump / script / "rank0" / "run"
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    assert len(read_csv(out / "losses.csv")) == 3
    assert stdout.count("Starting Training Loop") == len(SCRIPTS) + 4  # once a job that trains
    assert "4 batches of 4 per epoch in each of 2 processes (torchrun)" in stdout
    # The checkpoint holds the models themselves, not their DistributedDataParallel wrappers
    ckpt = load(out / "checkpoint.pt")
    assert not any(k.startswith("module.") for k in list(ckpt["netG"]) + list(ckpt["netD"]))
    assert set(ckpt["netG"]) >= set(ranks[0]["params"][0])


def test_a_divergence_in_one_process_stops_all_with_its_reason(runs):
    """The losses differ between processes (their data and noise do): a NaN in rank 1's alone
    must stop both at the same check, rank 0 (the one that prints) with rank 1's reason, and
    not leave rank 0 waiting for rank 1 in the next collective."""
    dump, _ = runs
    statuses = [r["status"] for r in ranks_of(dump, "nan_on_rank1")]
    assert statuses[0].startswith("a loss became NaN or infinite in another process: training stopped")
    assert statuses[1].startswith("a loss became NaN or infinite at iteration 0 (") and "Loss_D nan" in statuses[1]
    assert not (dump / "nan_on_rank1" / "rank0" / "run" / "checkpoint.pt").exists()


def test_checkpoints_move_between_one_and_two_processes(runs):
    dump, _ = runs
    # one process did 2 iterations, then two processes went on to 4, in the same folder
    one = dump / "one"
    assert [r["status"] for r in ranks_of(dump, "resume")] == [0, 0]
    assert load(one / "checkpoint.pt")["iters"] == 4 and len(read_csv(one / "losses.csv")) == 4
    # and the checkpoint of the two-process run goes on in one process
    two = dump / "02_dcgan" / "rank0" / "run" / "checkpoint.pt"
    assert load_script("02_dcgan").main(["--resume", str(two), "--device", "cpu",
                                         "--max-steps", "5"]) == 0
    assert load(two)["iters"] == 5


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a process group is POSIX")
def test_ctrl_c_stops_both_processes_at_the_same_iteration(runs):
    """Ctrl-C reaches torchrun, which passes it on to each process: they agree on where to stop
    (neither waits for the other forever), and rank 0 saves."""
    dump, _ = runs
    ranks = ranks_of(dump, "ctrl_c")
    assert [r["status"] for r in ranks] == [130, 130]
    ckpt = load(dump / "ctrl_c" / "rank0" / "run" / "checkpoint.pt")
    assert ckpt["iters"] >= 3
    assert len(read_csv(dump / "ctrl_c" / "rank0" / "run" / "losses.csv")) == ckpt["iters"]
    for name, value in ranks[1]["params"][0].items():
        assert torch.equal(value, ranks[0]["params"][0][name])


def test_a_ctrl_c_in_one_process_stops_all_at_the_next_log_line(runs):
    """Rank 1 alone has a Ctrl-C, during its iteration 3. The processes agree at each log line
    (every 4 iterations here) whether to stop: both stop after iteration 4, with one checkpoint."""
    dump, _ = runs
    ranks = ranks_of(dump, "signal_on_rank1")
    assert [r["status"] for r in ranks] == [130, 130] and [r["iters"] for r in ranks] == [5, 5]
    assert load(dump / "signal_on_rank1" / "rank0" / "run" / "checkpoint.pt")["iters"] == 5


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a process group is POSIX")
def test_ctrl_c_finishes_the_iteration_and_saves_everything(started):
    """A real Ctrl-C (SIGINT to the process group, as a terminal sends it), DataLoader workers
    on, through a launcher that forwards it: one press, though it arrives twice, saves."""
    dump, [(returncode, stdout, stderr), _, _] = started
    out = dump / "ctrl_c_alone"
    assert returncode == 130, stderr
    assert "Traceback" not in stderr and "--resume" in stdout
    ckpt = load(out / "checkpoint.pt")
    assert ckpt["iters"] >= 3 and len(read_csv(out / "losses.csv")) == ckpt["iters"]
    assert (out / "progress.gif").exists() and (out / "netG.pt").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="signals to a process group are POSIX")
def test_a_schedulers_sigterm_to_the_whole_job_saves(started):
    """systemd and SLURM send SIGTERM to every process of the job, DataLoader workers too: they
    must live on until the main process has finished its iteration and saved."""
    dump, [_, (returncode, stdout, stderr), _] = started
    assert returncode == 130, stderr
    assert "Traceback" not in stderr and "Stopped by SIGTERM" in stdout
    assert load(dump / "sigterm" / "checkpoint.pt")["iters"] >= 3


def test_each_process_reads_its_own_shard():
    data = list(range(11))
    alone = common.EpochSampler(data, num_replicas=1, rank=0, seed=5, drop_last=True)
    alone.set_epoch(3)
    g = torch.Generator()
    g.manual_seed(5 + 3)
    assert list(alone) == torch.randperm(11, generator=g).tolist()  # shuffle by (seed, epoch)
    shards = []
    for rank in (0, 1):
        sampler = common.EpochSampler(data, num_replicas=2, rank=rank, seed=5, drop_last=True)
        sampler.set_epoch(3)
        shards.append(list(sampler))
        assert len(sampler) == 5  # 11 // 2: both processes take the same number of steps
    assert not set(shards[0]) & set(shards[1])
    assert shards[0] + shards[1] != list(alone) and sorted(shards[0] + shards[1]) == sorted(list(alone)[:10])
    # a resumed epoch skips what this process had already read
    sampler = common.EpochSampler(data, num_replicas=2, rank=1, seed=5, drop_last=True)
    sampler.set_epoch(3, start=2)
    assert list(sampler) == shards[1][2:] and len(sampler) == 5


def test_alone_nothing_changes(monkeypatch):
    for var in ("LOCAL_RANK", "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(var, raising=False)
    assert common.init_processes(torch.device("cpu")) == (torch.device("cpu"), 0, 1)
    assert not torch.distributed.is_initialized()
