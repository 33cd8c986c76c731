"""Seconds per training iteration of each script: fp32 NCHW, fp32 channels_last, and --amp.

    python benchmarks/step_time.py                          # the four scripts, their defaults
    python benchmarks/step_time.py --scripts 02_dcgan --device cuda
    python benchmarks/step_time.py --mnist ../shared/data   # and 02 on the real MNIST (1x64x64)

Each measurement runs the script itself (its main(), so its own loop) on --dataset fake, which
is kept in memory, at the script's default batch size and network sizes, for 7 iterations: the
first 2 warm up (allocations, oneDNN or cuDNN picking algorithms), the median of the other 5 is
reported. An iteration is timed from one run.append() to the next (every script calls it
once per iteration), after a device synchronize on CUDA so that the GPU's time is counted.

"NCHW" runs the scripts with their channels_last line turned into a no-op (torch.channels_last
is replaced by torch.contiguous_format while that row runs). "--amp" is the flag as a user gets
it: where bfloat16 is not native it trains in fp32 and the table says so; --force-bf16 runs
autocast anyway, to show what emulated bfloat16 costs. No timing is asserted anywhere.
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
CONV = {"02_dcgan", "03_cgan", "04_wgan_gp"}  # the ones with channels_last and --amp
WARMUP, TIMED = 2, 5


def step_times(script, device, extra=(), nchw=False, force_bf16=False):
    """Seconds of each of the WARMUP + TIMED iterations of one run of the script."""
    stamps = []
    append = common.Run.append

    def timed_append(self, **values):
        append(self, **values)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    saved = torch.channels_last, common._native_bf16
    common.Run.append = timed_append
    if nchw:
        torch.channels_last = torch.contiguous_format
    if force_bf16:
        common._native_bf16 = lambda device: True
    try:
        with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
            module = importlib.import_module(script)
            argv = ["--dataset", "fake", "--device", device, "--max-steps", str(WARMUP + TIMED + 1),
                    "--log-every", "1000000", "--sample-every", "1000000", "--out", out, *extra]
            status = module.main(argv)
    finally:
        common.Run.append = append
        torch.channels_last, common._native_bf16 = saved
    assert status == 0, f"{script} exited with {status}"
    return [b - a for a, b in zip(stamps, stamps[1:])]


def median_step(*args, **kw):
    return statistics.median(step_times(*args, **kw)[WARMUP:])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scripts", default=",".join(SCRIPTS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--mnist", metavar="DIR", help="also time 02 on the real MNIST in DIR/MNIST")
    p.add_argument("--force-bf16", action="store_true",
                   help="a column with autocast to bfloat16 even where it is not native")
    args = p.parse_args()
    native = common._native_bf16(torch.device(args.device))

    rows = [(s, []) for s in args.scripts.split(",")]
    if args.mnist:
        rows.append(("02_dcgan", ["--dataset", "mnist", "--dataroot", args.mnist]))
    cols = ["fp32 NCHW", "fp32 channels_last", "--amp" if native else "--amp (no bf16 here: fp32)"]
    if args.force_bf16:
        cols.append("bf16 forced")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, device "
          f"{args.device}, torch {torch.__version__}; median s per iteration of {TIMED} after "
          f"{WARMUP} warm-up")
    print("| script | " + " | ".join(cols) + " |")
    print("| --- |" + " --- |" * len(cols))
    for script, extra in rows:
        # a real dataset as the last flag wins over --dataset fake
        name = script + (" (MNIST 1x64x64)" if extra else "")
        if script not in CONV:
            nchw = median_step(script, args.device, extra)
            cells = [f"{nchw:.4f}", "(no convolutions)", "(no --amp: MLP)"] + \
                    (["-"] if args.force_bf16 else [])
        else:
            nchw = median_step(script, args.device, extra, nchw=True)
            cl = median_step(script, args.device, extra)
            amp = median_step(script, args.device, [*extra, "--amp"])
            cells = [f"{nchw:.3f}", f"{cl:.3f} ({cl / nchw:.2f}x)", f"{amp:.3f} ({amp / nchw:.2f}x)"]
            if args.force_bf16:
                forced = median_step(script, args.device, [*extra, "--amp"], force_bf16=True)
                cells.append(f"{forced:.3f} ({forced / nchw:.2f}x)")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
