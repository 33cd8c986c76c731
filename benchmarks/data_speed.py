"""Images a second that the data path delivers, batches of 128 at 64x64 (docs/speed.md, Data).

    python benchmarks/data_speed.py                 # 5,000 CelebA-sized JPEGs, made in a temp folder
    python benchmarks/data_speed.py --n 20000 --folder DIR   # more, or a folder of your own

For an image folder: today's path (ImageFolder and the chapter's transform on every image, every
epoch) at 0, 2 and 4 workers; the decoded cache's first pass (the build) and its batches
afterwards. For an in-memory dataset the size of MNIST at 64x64: a float32 TensorDataset indexed
a sample at a time and collated (the path before) against uint8 Images, a batch one indexing.
Each figure is one whole epoch after the workers have started, as float batches ready for the
model (ToTensor and Normalize on this CPU) and, where the data is uint8, as the uint8 batches
a GPU run is fed (it normalises them itself). On a GPU: benchmarks/gpu_check.sh.
"""
import argparse
import os
import sys
import tempfile
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402
import torch  # noqa: E402
import torchvision.datasets as dset  # noqa: E402
import torchvision.transforms as transforms  # noqa: E402
from PIL import Image  # noqa: E402

BATCH = 128


def make_jpegs(folder, n):
    """n JPEGs of CelebA's size (178x218) and compression: smooth colour fields with fine grain,
    quality 90, about CelebA's 10 KB a file."""
    os.makedirs(folder, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for k in range(n):
        low = torch.randint(0, 256, (3, 7, 6), generator=g, dtype=torch.uint8)
        image = transforms.functional.resize(low, [218, 178], antialias=True).float()
        image = (image + 4 * torch.randn(image.shape, generator=g)).clamp(0, 255).to(torch.uint8)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(os.path.join(folder, f"{k:06d}.jpg"), quality=90)


def epoch_rate(loader):
    """Images a second over one epoch, the workers started (as a run's first batch starts them)."""
    next(iter(loader))
    start, n = time.perf_counter(), 0
    for images, _ in loader:
        n += len(images)
    return n / (time.perf_counter() - start)


def run_for(out, dataset="folder", no_cache=False):
    args = types.SimpleNamespace(out=out, resume=None, seed=0, dataset=dataset, no_cache=no_cache)
    return common.Run("benchmark", args, None, torch.device("cpu"))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=5000, help="JPEGs to make (default: 5000)")
    p.add_argument("--folder", help="an ImageFolder root of your own instead (its cache is written there)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="data_speed-")
    os.environ.setdefault("XDG_CACHE_HOME", os.path.join(tmp, "home"))
    root = args.folder or os.path.join(tmp, "celeba")
    if not args.folder:
        start = time.perf_counter()
        make_jpegs(os.path.join(root, "img_align_celeba"), args.n)
        print(f"made {args.n} JPEGs of 178x218 in {time.perf_counter() - start:.0f} s")
    transform = transforms.Compose([transforms.Resize(64), transforms.CenterCrop(64),
                                    transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])
    print(f"CPU cores: {os.cpu_count()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []  # (what, float batches a second here, uint8 ones: what a GPU is fed)
    for workers in args.workers:  # today's path
        run = run_for(os.path.join(tmp, f"jpeg{workers}"), no_cache=True)
        data = common.load_dataset("folder", root, transform, (3, 64, 64))
        rate = epoch_rate(run.dataloader(data, BATCH, workers, drop_last=True))
        rows.append((f"JPEGs: ImageFolder + the transform, {workers} workers", rate, None))
        run.release()
    for workers in args.workers:  # the first pass: one build each, from scratch
        for old in common.cache_folders(root):
            for f in os.listdir(old) if os.path.isdir(old) else []:
                if f.startswith("gan-cache-"):
                    os.remove(os.path.join(old, f))
        data = common.load_dataset("folder", root, transform, (3, 64, 64))
        start = time.perf_counter()
        cached = common.decoded_cache(data, workers)
        rows.append((f"decoded cache, its first pass (the build), {workers} workers",
                     len(data) / (time.perf_counter() - start), None))
    for workers in args.workers:  # afterwards
        run = run_for(os.path.join(tmp, f"cache{workers}"))
        loader = run.dataloader(cached, BATCH, workers, drop_last=True)
        rows.append((f"decoded cache, afterwards, {workers} workers", epoch_rate(loader),
                     epoch_rate(loader.loader)))
        run.release()
    # in memory, MNIST's size at 64x64: before (float32, per sample) and after (uint8, one index)
    images = torch.randint(0, 256, (60000, 1, 64, 64), dtype=torch.uint8)
    labels = torch.randint(0, 10, (60000,))
    before = torch.utils.data.TensorDataset(images.float().div(255).sub(0.5).div(0.5), labels)
    loader = torch.utils.data.DataLoader(before, batch_size=BATCH, sampler=common.EpochSampler(before, 0),
                                         drop_last=True)
    rows.append(("MNIST-sized, in memory before: float32 TensorDataset, per sample + collate",
                 epoch_rate(loader), None))
    run = run_for(os.path.join(tmp, "memory"), dataset="mnist")
    after = common.Images(images, labels, [str(c) for c in range(10)], (0.5,), (0.5,))
    loader = run.dataloader(after, BATCH, drop_last=True)
    rows.append(("MNIST-sized, in memory now: uint8 Images, one index a batch", epoch_rate(loader),
                 epoch_rate(loader.loader)))
    run.release()
    print(f"\n| batches of {BATCH}, 64x64 | images/s, as float (ToTensor, Normalize here) | "
          "as uint8 (the GPU normalises) |\n| --- | ---: | ---: |")
    for what, rate, raw in rows:
        print(f"| {what} | {rate:,.0f} | {f'{raw:,.0f}' if raw else '-'} |")


if __name__ == "__main__":
    main()
