"""Seconds per training iteration of each script: NCHW against channels_last.

    python benchmarks/step_time.py                          # the four scripts, their defaults
    python benchmarks/step_time.py --scripts 02_dcgan --device cuda
    python benchmarks/step_time.py --mnist ../shared/data   # and 02 on the real MNIST (1x64x64)

Each measurement runs the script itself (its main(), so its own loop) on --dataset fake, which
is kept in memory, at the script's default batch size and network sizes, for 7 iterations: the
first 2 warm up (allocations, oneDNN or cuDNN picking algorithms), the median of the other 5 is
reported. An iteration is timed from one run.append() to the next (every script calls it
once per iteration), after waiting for the device (CUDA and MPS queue their work and return at
once: unsynchronised, the times would be the queue's).

"NCHW" runs the scripts with their channels_last lines turned into no-ops (torch.channels_last
is replaced by torch.contiguous_format while that row runs). Everything is torch's default
precision, float32: on NVIDIA GPUs from Ampere (8.0) on, that runs cuDNN's convolutions in TF32,
as in the scripts, and the table says so. Each cell also gives images per second (the real
images an iteration takes: 04 takes n_critic = 5 batches of 64). --batch-size N runs every
script and the bare loop at batch N instead (benchmarks/gpu_check.sh cpu: a quick try).

Below the table, 02 at the chapter's settings beside a bare loop of the same models and math
(no data loading, logging, snapshots or checkpoints): what the script itself costs. On CUDA
(or with --compile) also the bare loop with torch.compile of G and D, reported, not adopted
unless it gains at least 20 % (04's penalty cannot be compiled: double backward). On CUDA (or
with --ngf128) also a row for 02 at §12.4.6's ngf = ndf = 128. No timing is asserted anywhere.
"""
import argparse
import contextlib
import importlib
import io
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import common  # noqa: E402

SCRIPTS = ["01_mlp_gan", "02_dcgan", "03_cgan", "04_wgan_gp"]
CONV = {"02_dcgan", "03_cgan", "04_wgan_gp"}  # the ones with channels_last
WARMUP, TIMED = 2, 5


def synchronize(device):
    """Wait until the device has done all its queued work (torch.cpu's, always done: a no-op)."""
    getattr(torch, torch.device(device).type).synchronize()


def step_times(script, device, extra=(), nchw=False):
    """Seconds of each of the WARMUP + TIMED iterations of one run of the script."""
    stamps = []
    append = common.Run.append

    def timed_append(self, **values):
        append(self, **values)
        synchronize(device)
        stamps.append(time.perf_counter())

    saved = torch.channels_last
    common.Run.append = timed_append
    if nchw:
        torch.channels_last = torch.contiguous_format
    try:
        with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
            module = importlib.import_module(script)
            argv = ["--dataset", "fake", "--device", device, "--max-steps", str(WARMUP + TIMED + 1),
                    "--log-every", "1000000", "--sample-every", "1000000", "--out", out, *extra]
            status = module.main(argv)
    finally:
        common.Run.append = append
        torch.channels_last = saved
    assert status == 0, f"{script} exited with {status}"
    return [b - a for a, b in zip(stamps, stamps[1:])]


def median_step(*args, **kw):
    return statistics.median(step_times(*args, **kw)[WARMUP:])


BATCH = {"01_mlp_gan": 100, "02_dcgan": 128, "03_cgan": 128, "04_wgan_gp": 64}  # their defaults
BATCHES = {"04_wgan_gp": 5}  # batches an iteration takes (04's n_critic); the others, 1


def bare_step(device, ngf=64, compiled=False, batch=128):
    """Median seconds of an iteration of 02's models and math with no script around them: the
    chapter's loop body on one random batch already on the device, channels_last, no data
    loading, logging, snapshots or checkpoints."""
    m = importlib.import_module("02_dcgan")
    dev = torch.device(device)
    torch.manual_seed(0)
    netG, netD = m.Generator(100, ngf, 3).to(dev), m.Discriminator(3, ngf).to(dev)
    netG.apply(m.weights_init), netD.apply(m.weights_init)
    netG, netD = netG.to(memory_format=torch.channels_last), netD.to(memory_format=torch.channels_last)
    if compiled:
        netG, netD = torch.compile(netG), torch.compile(netD)
    criterion = torch.nn.BCELoss()
    optimizerD = torch.optim.Adam(netD.parameters(), lr=0.0002, betas=(0.5, 0.999))
    optimizerG = torch.optim.Adam(netG.parameters(), lr=0.0002, betas=(0.5, 0.999))
    real = torch.randn(batch, 3, 64, 64, device=dev).contiguous(memory_format=torch.channels_last)
    times = []
    for _ in range(WARMUP + TIMED):
        start = time.perf_counter()
        netD.zero_grad()
        label = torch.full((batch,), 1.0, device=dev)
        criterion(netD(real).view(-1), label).backward()
        fake = netG(torch.randn(batch, 100, 1, 1, device=dev))
        label.fill_(0.0)
        criterion(netD(fake.detach()).view(-1), label).backward()
        optimizerD.step()
        netG.zero_grad()
        label.fill_(1.0)
        criterion(netD(fake).view(-1), label).backward()
        optimizerG.step()
        synchronize(dev)
        times.append(time.perf_counter() - start)
    return statistics.median(times[WARMUP:])


def cell(seconds, images, base=None):
    ratio = f" ({seconds / base:.2f}x)" if base else ""
    return f"{seconds:.4f} s, {images / seconds:,.0f} img/s{ratio}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scripts", default=",".join(SCRIPTS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--mnist", metavar="DIR", help="also time 02 on the real MNIST in DIR/MNIST")
    p.add_argument("--ngf128", action="store_true", default=None,
                   help="also 02 at §12.4.6's ngf = ndf = 128 (default: on CUDA only; 4x the time)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="also the bare loop with torch.compile of G and D, which needs a C compiler "
                   "(default: on CUDA only)")
    p.add_argument("--batch-size", type=int, metavar="N", help="every script and the bare loop at "
                   "batch N (default: the scripts' own)")
    args = p.parse_args()
    cuda = args.device.startswith("cuda")

    size = ["--batch-size", str(args.batch_size)] if args.batch_size else []
    rows = [(s, s, size) for s in args.scripts.split(",")]
    if args.ngf128 or (args.ngf128 is None and cuda):
        rows.append(("02_dcgan (ngf = ndf = 128)", "02_dcgan", [*size, "--ngf", "128", "--ndf", "128"]))
    if args.mnist:  # a real dataset as the last flag wins over --dataset fake
        rows.append(("02_dcgan (MNIST 1x64x64)", "02_dcgan", [*size, "--dataset", "mnist", "--dataroot", args.mnist]))
    cols = ["fp32 NCHW", "fp32 channels_last"]
    where = torch.cuda.get_device_name() if cuda else f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    print(f"# {where}, device {args.device}, torch {torch.__version__}; median of {TIMED} iterations "
          f"after {WARMUP} warm-up; img/s: real images an iteration takes (04: 5 batches)")
    if cuda and torch.backends.cudnn.allow_tf32 and torch.cuda.get_device_capability()[0] >= 8:
        print("# fp32 here: the convolutions run in TF32 (10-bit mantissa) on this GPU's tensor cores, "
              "torch's default (torch.backends.cudnn.allow_tf32), which the scripts keep")
    print("| script | " + " | ".join(cols) + " |")
    print("| --- |" + " --- |" * len(cols))
    for name, script, extra in rows:
        n = (args.batch_size or BATCH[script]) * BATCHES.get(script, 1)
        if script not in CONV:
            cells = [cell(median_step(script, args.device, extra), n), "(no convolutions)"]
        else:
            nchw = median_step(script, args.device, extra, nchw=True)
            cells = [cell(nchw, n), cell(median_step(script, args.device, extra), n, nchw)]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)

    if "02_dcgan" not in args.scripts.split(","):
        return
    # What the script costs beyond its models and math: the same step, bare
    b = args.batch_size or 128
    print(f"\n| 02, batch {b}, 3x64x64, channels_last | fp32 |")
    print("| --- | --- |")
    script = median_step("02_dcgan", args.device, size)
    bare = bare_step(args.device, batch=b)
    print(f"| the script | {cell(script, b)} |")
    print(f"| bare loop, same models and math | {cell(bare, b, script)} |", flush=True)
    if args.compile or (args.compile is None and cuda):
        print(f"| bare loop, torch.compile of G and D | {cell(bare_step(args.device, compiled=True, batch=b), b, bare)} |")


if __name__ == "__main__":
    main()
