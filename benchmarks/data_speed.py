"""Images a second that the data path delivers, batches of 128 at 64x64 (docs/speed.md, Data).

    python benchmarks/data_speed.py                 # 5,000 CelebA-sized JPEGs, made in a temp folder
    python benchmarks/data_speed.py --n 20000 --folder DIR   # more, or a folder of your own

An image folder (ImageFolder and the chapter's transform on every image, every epoch, as
run.dataloader serves it) at 0, 2 and 4 workers; and a dataset the size of MNIST at 64x64, read
by PIL and the transform every epoch against held in memory (common.in_memory: a TensorDataset,
what the downloaded datasets become). Each figure is one whole epoch after the workers have
started, as float batches ready for the model. On a GPU: benchmarks/gpu_check.sh.
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


class Digits(torch.utils.data.Dataset):
    """n random 28x28 grey images read as torchvision's MNIST reads its own: uint8 to PIL, then
    the transform."""

    def __init__(self, n, transform):
        self.data = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8)
        self.transform, self.classes = transform, [str(c) for c in range(10)]

    def __len__(self):
        return len(self.data)

    def __getitem__(self, k):
        return self.transform(Image.fromarray(self.data[k].numpy(), mode="L")), k % 10


def run_for(out, dataset="folder"):
    args = types.SimpleNamespace(out=out, resume=None, seed=0, dataset=dataset)
    return common.Run("benchmark", args, None, torch.device("cpu"))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=5000, help="JPEGs to make (default: 5000)")
    p.add_argument("--folder", help="an ImageFolder root of your own instead")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="data_speed-")
    root = args.folder or os.path.join(tmp, "celeba")
    if not args.folder:
        start = time.perf_counter()
        make_jpegs(os.path.join(root, "img_align_celeba"), args.n)
        print(f"made {args.n} JPEGs of 178x218 in {time.perf_counter() - start:.0f} s")
    transform = transforms.Compose([transforms.Resize(64), transforms.CenterCrop(64),
                                    transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])
    print(f"CPU cores: {os.cpu_count()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []
    for workers in args.workers:
        run = run_for(os.path.join(tmp, f"jpeg{workers}"))
        data = dset.ImageFolder(root, transform=transform, loader=common.read_image)
        rows.append((f"JPEG folder, {workers} workers", epoch_rate(run.dataloader(data, BATCH, workers, drop_last=True))))
        run.release()
    # MNIST's size at 64x64: 28x28 grey PNG-like images through Resize(64) each epoch, or once
    grey = transforms.Compose([transforms.Resize(64), transforms.CenterCrop(64), transforms.ToTensor(),
                               transforms.Normalize((0.5,), (0.5,))])
    mnist = Digits(60000, grey)
    run = run_for(os.path.join(tmp, "memory"), dataset="mnist")
    for workers in args.workers:
        rows.append((f"MNIST-sized, transformed every epoch, {workers} workers",
                     epoch_rate(run.dataloader(mnist, BATCH, workers, drop_last=True))))
    start = time.perf_counter()
    kept = common.in_memory(mnist)
    took = time.perf_counter() - start
    rows.append((f"MNIST-sized, in memory (made once in {took:.0f} s), 0 workers",
                 epoch_rate(run.dataloader(kept, BATCH, 0, drop_last=True))))
    run.release()
    print(f"\n| batches of {BATCH}, 64x64 | images/s |\n| --- | ---: |")
    for what, rate in rows:
        print(f"| {what} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
