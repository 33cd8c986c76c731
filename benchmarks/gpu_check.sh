#!/usr/bin/env bash
# The GPU check (docs/speed.md, On a GPU): what a machine with an NVIDIA GPU runs as one job of
# at most 540 s (the step limits add up to 530), with nothing but this checkout and its own
# python3 and torch: no network, no pip (--dataset fake, and JPEGs made here).
#
#   bash benchmarks/gpu_check.sh [cuda|cpu] [FOLDER]
#
# FOLDER (default: $OUT if set, else gpu_check-<date>-<time>) gets two files: summary.txt (every
# step PASS, FAIL or SKIP with its reason, and the timings) and logs.tar.gz (each step's log).
# `cpu` runs the same steps on the CPU at small sizes, so that on the GPU only the GPU can fail.
# PYTHON: the interpreter (default: python3). No step stops the others, and each has a time
# limit, so a hang costs that step only.
set -u
device=${1:-cuda}
case $device in cuda | cpu) ;; *) echo "usage: bash $0 [cuda|cpu] [FOLDER]" >&2; exit 2 ;; esac
dir=${2:-${OUT:-gpu_check-$(date +%Y%m%d-%H%M%S)}}
mkdir -p "$dir" && dir=$(cd "$dir" && pwd) && cd "$(dirname "$0")/.." || exit 2
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1  # a step stopped at its time limit keeps its log up to there
work=$(mktemp -d) && trap 'rm -rf "$work"' EXIT  # the logs (tarred at the end) and the runs' files
mkdir "$work/logs"

if [ "$device" = cuda ]; then  # the chapter's batch 128 at 64x64x3; step_time adds ngf = ndf = 128
    bench="" batch=128 small="" steps=150 jpegs=3000
else  # the same code paths, at sizes for 2 CPU cores
    bench="--scripts 01_mlp_gan,02_dcgan --batch-size 8" batch=16 small="--ngf 16 --ndf 16" steps=40 jpegs=300
fi

failed=0 summary=("gpu_check.sh $device, $(date '+%F %T'), commit $(git describe --always --dirty 2>/dev/null || echo unknown)")
step() {  # step NAME SECONDS COMMAND...: its output into NAME.log, its outcome into the summary
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    echo "\$ $*" >"$work/logs/$name.log"
    { timeout -k 5 "$limit" "$@"; } >>"$work/logs/$name.log" 2>&1  # (SIGKILL 5 s after SIGTERM: 137)
    rc=$?
    local said=PASS
    [ $rc -eq 0 ] || { said=FAIL failed=1; }
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && said="FAIL: its $limit s limit"
    summary+=("$(printf '%-14s %-22s exit %3d, %3d s' "$name" "$said" $rc $((SECONDS - start)))")
}
skip() { summary+=("$(printf '%-14s SKIP: %s' "$1" "$2")"); }

img_s() {  # NAME: the median it/s x batch of the log lines, but those at an epoch's first batch
    # (their interval holds the end of the epoch before: its checkpoint) and the first (start-up)
    grep '\]\[[1-9][0-9]*/' "$work/logs/$1.log" | grep -o '[0-9.]* it/s' | tail -n +2 | sort -n |
        awk -v b="$batch" '{v[NR] = $1} END {if (NR) printf " %.0f img/s (median of %d log lines x batch %d)", v[int((NR + 1) / 2)] * b, NR, b; else printf " (no timed log line)"}'
}

# a) the machine and the software; what is missing is a SKIP with its reason, not a failure
if [ "$device" = cuda ]; then
    if command -v nvidia-smi >/dev/null; then step nvidia-smi 15 nvidia-smi; else skip nvidia-smi "not on PATH"; fi
fi
step versions 30 "$py" -c 'import sys, torch, torchvision
print("python", sys.version.split()[0], "torch", torch.__version__, "torchvision", torchvision.__version__,
      "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(), "compute capability", torch.cuda.get_device_capability())'
has() { "$py" -c "import $1" 2>/dev/null; }
if ! has torch || ! has torchvision; then
    skip everything "$py cannot import torch and torchvision (versions.log says why)"
else
    # b) every test on the device. Not -x: one run shows every failure; -rfEs: why each failed or
    # skipped; a test that hangs for 60 s prints where (faulthandler)
    if has pytest; then
        has matplotlib || summary+=("               (no matplotlib: the loss-plot tests skip)")
        step pytest 180 "$py" -m pytest --device "$device" -q -rfEs -o faulthandler_timeout=60
    else
        skip pytest "pytest is not installed for $py"
    fi
    # c) benchmarks/step_time.py's table (img/s in each cell); torch.compile needs a C compiler
    # and Python's headers
    compile="--no-compile"
    if [ "$device" = cuda ] && command -v cc >/dev/null &&
        "$py" -c 'import os, sysconfig; assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' 2>/dev/null; then
        compile="--compile"
    elif [ "$device" = cuda ]; then
        summary+=("               (torch.compile row left out: no C compiler or no Python.h)")
    fi
    step benchmark 150 "$py" benchmarks/step_time.py --device "$device" $bench $compile
    # d) 02 as a user runs it; its log's it/s as img/s. 20,000 fake images (in memory) are 156
    # batches of 128: no epoch ends, so no checkpoint is written, inside a timed interval
    fake="import sys, common, importlib; common.FAKE_SIZE = 20000; common.cli(importlib.import_module('02_dcgan').main)"
    train="--device $device --batch-size $batch $small --epochs 1000 --max-steps $steps --log-every 10"
    step train-02 50 "$py" -c "$fake" --dataset fake $train --out "$work/fake"
    summary[-1]+=$(img_s train-02)
    # e) 02 on a folder of CelebA-sized JPEGs, each decoded every epoch by the DataLoader's workers
    step make-jpegs 45 "$py" -c "import sys; sys.path.insert(0, 'benchmarks'); import data_speed
data_speed.make_jpegs('$work/jpegs/celeba/img_align_celeba', $jpegs)"
    step train-02-jpegs 60 "$py" 02_dcgan.py --dataset celeba --dataroot "$work/jpegs" $train --out "$work/jpegs-run"
    summary[-1]+=$(img_s train-02-jpegs)
fi

tar -czf "$dir/logs.tar.gz" -C "$work" logs
{ printf '%s\n' "${summary[@]}"; echo; [ -f "$work/logs/benchmark.log" ] && sed -n '/^# /,$p' "$work/logs/benchmark.log"; } |
    tee "$dir/summary.txt"
exit $failed
