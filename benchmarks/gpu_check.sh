#!/usr/bin/env bash
# The GPU check (docs/speed.md, On a GPU): what a machine with an NVIDIA GPU runs, in under 11
# minutes, with nothing but this checkout and its own python3 and torch: no network, no pip
# (--dataset fake throughout).
#
#   bash benchmarks/gpu_check.sh [cuda|cpu] [FOLDER]
#
# FOLDER (default: $OUT if set, else gpu_check-<date>-<time>) gets one NAME.log per step and
# summary.txt: send the folder back. `cpu` runs the same steps on the CPU at small sizes (a few
# minutes on 2 cores), so that on the GPU only the GPU can fail. PYTHON: the interpreter
# (default: python3). No step stops the others, and each has a time limit, so a hang costs
# that step only.
set -u
device=${1:-cuda}
case $device in cuda | cpu) ;; *) echo "usage: bash $0 [cuda|cpu] [FOLDER]" >&2; exit 2 ;; esac
dir=${2:-${OUT:-gpu_check-$(date +%Y%m%d-%H%M%S)}}
mkdir -p "$dir" && dir=$(cd "$dir" && pwd) && cd "$(dirname "$0")/.." || exit 2
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1  # a step stopped at its time limit keeps its log up to there
runs=$(mktemp -d) && trap 'rm -rf "$runs"' EXIT  # the training runs' files (their logs are kept)

if [ "$device" = cuda ]; then  # the chapter's batch 128 at 64x64x3; step_time adds ngf = ndf = 128
    bench="" batch=128 small="" steps=210
else  # the same code paths, at sizes for 2 CPU cores
    bench="--scripts 01_mlp_gan,02_dcgan --batch-size 8 --compile" batch=16 small="--ngf 16 --ndf 16" steps=50
fi

failed=0 summary=("gpu_check.sh $device, $(date '+%F %T'), commit $(git describe --always --dirty 2>/dev/null || echo unknown): $dir")
step() {  # step NAME SECONDS COMMAND...: its output into NAME.log, its outcome into the summary
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    echo "\$ $*" >"$dir/$name.log"
    { timeout -k 5 "$limit" "$@"; } >>"$dir/$name.log" 2>&1  # (SIGKILL 5 s after SIGTERM: 137)
    rc=$?
    local said=PASS
    [ $rc -eq 0 ] || { said=FAIL failed=1; }
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && said="FAIL: its $limit s limit"
    summary+=("$(printf '%-14s %-22s exit %3d, %3d s' "$name" "$said" $rc $((SECONDS - start)))")
}

img_s() {  # NAME: the median it/s of the log's lines after the first two (start-up) x batch
    grep -o '[0-9.]* it/s' "$dir/$1.log" | tail -n +3 | sort -n |
        awk -v b="$batch" '{v[NR] = $1} END {if (NR) printf "%.0f img/s (median of %d log lines x batch %d)", v[int((NR + 1) / 2)] * b, NR, b}'
}

# a) the machine and the software
if [ "$device" = cuda ]; then step nvidia-smi 15 nvidia-smi; else summary+=("nvidia-smi     skipped (cpu)"); fi
step versions 30 "$py" -c 'import sys, torch, torchvision
print("python", sys.version.split()[0], "torch", torch.__version__, "torchvision", torchvision.__version__,
      "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(), "compute capability", torch.cuda.get_device_capability())'
# b) every test on the device. Not -x: one run shows every failure; -rfEs: why each failed or
# skipped; a test that hangs for 60 s prints where (faulthandler)
step pytest 180 "$py" -m pytest --device "$device" -q -rfEs -o faulthandler_timeout=60
# c) benchmarks/step_time.py's table (img/s in each cell)
step benchmark 170 "$py" benchmarks/step_time.py --device "$device" $bench
# d) 02 as a user runs it, without and with --amp; its log's it/s as img/s (fake's 1000 images
# are 7 batches of 128: --log-every 7 logs every 7 iterations at any batch size)
train="02_dcgan.py --dataset fake --device $device --batch-size $batch $small --epochs 1000 --max-steps $steps --log-every 7"
step train-02-fp32 40 "$py" $train --out "$runs/fp32"
summary[-1]+=" $(img_s train-02-fp32)"
step train-02-amp 40 "$py" $train --amp --out "$runs/amp"
summary[-1]+=" $(img_s train-02-amp)"
# e) 02 on a folder of CelebA-sized JPEGs, from the decoded cache (built by the first run) and
# with --no-cache (every JPEG decoded every epoch by the DataLoader's workers)
jpegs=$([ "$device" = cuda ] && echo 3000 || echo 300)
step make-jpegs 60 "$py" -c "import sys; sys.path.insert(0, 'benchmarks'); import data_speed
data_speed.make_jpegs('$runs/jpegs/img_align_celeba', $jpegs)"
folder="${train/--dataset fake/--dataset folder --dataroot $runs/jpegs}"
step train-02-cache 60 "$py" $folder --out "$runs/cache"
summary[-1]+=" $(img_s train-02-cache)"
step train-02-jpegs 60 "$py" $folder --no-cache --out "$runs/jpegs-run"
summary[-1]+=" $(img_s train-02-jpegs)"

{ printf '%s\n' "${summary[@]}"; echo; sed -n '/^# /,$p' "$dir/benchmark.log"; } | tee "$dir/summary.txt"
exit $failed
