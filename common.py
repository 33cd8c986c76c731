"""Plumbing shared by the four scripts, and nothing the chapter teaches.

The GANs (data transforms, device choice, models, init, losses, optimizers, the training loop,
sampling) are in the scripts. Here: the command line, opening datasets with clear errors, the
run folder, checkpoints, and writing the grids, the GIF, the CSV and the loss plot.
"""
import argparse
import contextlib
import csv
import glob
import itertools
import math
import os
import signal
import sys
import threading
import time
from urllib.error import URLError

import torch
import torch.distributed as dist
import torch.utils.data
import torchvision.datasets as dset
import torchvision.utils as vutils
from PIL import Image

# --dataset fake: how many random images torchvision's FakeData makes (its own default).
FAKE_SIZE = 1000

# Settings a resumed run may change. Every other setting of a checkpoint (dataset, sizes, batch,
# learning rate, seed...) defines the run: changing it on resume is refused, not silently ignored.
FREE_ON_RESUME = {"epochs", "out", "dataroot", "workers", "log_every", "sample_every"}
# Settings that belong to one invocation (or one machine) and are never taken from a checkpoint.
PER_INVOCATION = {"resume", "generate", "checkpoint", "max_steps", "device", "labels", "amp"}


class UserError(Exception):
    """Something the user can fix: cli() prints it without a traceback and exits with 1."""


class UnreadableImage(UserError):
    """An image file that PIL cannot decode (raised in DataLoader workers too)."""


def cli(main, argv=None):
    """Run a script's main() as a command: user errors become a message and exit status 1."""
    try:
        status = main(argv)
    except UserError as e:
        msg = str(e)
        # A DataLoader worker's error reaches us wrapped with its traceback: keep the last line.
        if "Original Traceback" in msg:
            msg = msg.strip().splitlines()[-1].split(": ", 1)[-1]
        sys.exit(f"error: {msg}")
    except KeyboardInterrupt:
        sys.exit("interrupted")
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    sys.exit(status)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def label_list(text):
    """--labels 7 or --labels 0,3,8: class indices, in the order given."""
    try:
        labels = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected class numbers separated by commas, got {text!r}")
    if len(set(labels)) != len(labels):
        raise argparse.ArgumentTypeError(f"a class is listed twice in {text!r}")
    return labels


def _number(text, kind):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _positive_int(text):
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text}")
    return value


def _non_negative_int(text):
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _positive_float(text):
    value = _number(text, float)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _beta(text):
    value = _number(text, float)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def unit_value(text):
    """A number in (0, 1]: a BCE target for real images (01), a clipping bound (04)."""
    value = _number(text, float)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def make_parser(doc, datasets, defaults_said=None, **defaults):
    """The flags all scripts share (CONVENTIONS.md), with the script's document values as defaults.

    A model flag (--nz, --ngf, --ndf, --beta1, --beta2) exists only if the script gives a default
    for it. defaults_said: {dest: text} for a default that depends on other flags (the script
    then gives None and decides). Scripts add their own flags to the parser this returns.
    """
    defaults_said = defaults_said or {}
    p = argparse.ArgumentParser(description=doc, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)

    def add(flag, help, **kw):
        dest = flag[2:].replace("-", "_")
        if dest in defaults:
            if kw.get("type") in (_positive_int, _non_negative_int, int):
                kw.setdefault("metavar", "N")
            said = defaults_said.get(dest, "%(default)s")
            p.add_argument(flag, default=defaults[dest], help=f"{help} (default: {said})", **kw)

    add("--dataset", "which data to train on", choices=datasets)
    add("--dataroot", "parent folder of the datasets: MNIST in DIR/MNIST, CelebA in "
        "DIR/celeba/img_align_celeba/*.jpg; for --dataset folder, an ImageFolder root", metavar="DIR")
    p.add_argument("--out", metavar="DIR", help="where the run writes everything "
                   "(default: runs/<script>-<dataset>)")
    add("--epochs", "number of training epochs", type=_positive_int)
    add("--batch-size", "batch size during training", type=_positive_int)
    add("--lr", "learning rate of both optimizers", type=_positive_float)
    add("--beta1", "beta1 of Adam", type=_beta)
    add("--beta2", "beta2 of Adam", type=_beta)
    add("--nz", "size of the latent vector z", type=_positive_int)
    add("--ngf", "size of the feature maps in the generator", type=_positive_int)
    add("--ndf", "size of the feature maps in the discriminator", type=_positive_int)
    if "workers" in defaults and defaults["workers"] is None:
        defaults_said.setdefault("workers", "0 for mnist, fashion-mnist and fake, which are in "
                                            "memory; else min(4, CPUs)")
    add("--workers", "DataLoader worker processes (0: load in the main process)",
        type=_non_negative_int)
    add("--seed", "random seed", type=int)
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"],
                   help="auto picks cuda, then mps, then cpu (default: auto)")
    if "amp" in defaults:
        p.add_argument("--amp", action="store_true", help="forward passes in bfloat16 (autocast) "
                       "on CUDA and on CPUs with native bfloat16; the losses stay in float32. "
                       "Faster, and the same results within rounding (README, Speed)")
    add("--log-every", "iterations between log lines", type=_positive_int)
    add("--sample-every", "iterations between fixed-noise snapshots", type=_positive_int)
    p.add_argument("--max-steps", type=_positive_int, metavar="N",
                   help="stop after N training iterations in all, and save a checkpoint")
    p.add_argument("--resume", metavar="PATH", help="continue the run saved in this checkpoint")
    p.add_argument("--generate", type=_positive_int, metavar="N",
                   help="no training: sample N images from --checkpoint into generated.png")
    p.add_argument("--checkpoint", metavar="PATH", help="the checkpoint (or netG.pt) that "
                   "--generate samples from (default: <out>/checkpoint.pt)")
    return p


def _given_flags(parser, argv):
    """The dests of the options that appear on the command line (not left at their default)."""
    given = set()
    for action in parser._actions:
        for s in action.option_strings:
            if any(a == s or a.startswith(s + "=") for a in argv):
                given.add(action.dest)
    return given


def get_args(parser, argv, script):
    """Parse the command line. Returns (args, checkpoint or None).

    With --resume, or with --generate, the checkpoint is loaded and the run's settings come from
    it: a flag given on the command line that contradicts it is an error. The default --out is
    runs/<script>-<dataset> for a new run, the checkpoint's folder otherwise.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.resume and args.generate:
        parser.error("--resume trains, --generate samples: use one of them")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: this torch sees no CUDA GPU "
                        f"(torch {torch.__version__}); use --device cpu or auto")
    if args.device == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps: MPS (Apple GPU) is not available here; use --device cpu or auto")

    ckpt = None
    if args.generate:
        path = args.checkpoint or os.path.join(args.out or f"runs/{script}-{args.dataset}",
                                               "checkpoint.pt")
        ckpt = load_checkpoint(path, script, allow_state_dict=True)
        args.checkpoint = path
        args.out = args.out or os.path.dirname(path) or "."
    elif args.resume:
        ckpt = load_checkpoint(args.resume, script)
        args.out = args.out or os.path.dirname(args.resume) or "."
    if ckpt is not None and "args" in ckpt:
        given = _given_flags(parser, argv)
        free = FREE_ON_RESUME | ({"seed"} if args.generate else set())  # --seed picks the samples
        for key, value in ckpt["args"].items():
            if key in PER_INVOCATION or key == "out" or not hasattr(args, key):
                continue
            if key not in given:
                setattr(args, key, value)
            elif key not in free and getattr(args, key) != value:
                raise UserError(f"the checkpoint's run has --{key.replace('_', '-')} {value}, and "
                                "that stays with it: drop the flag (or start a new run for new "
                                "settings)")
    if args.out is None:
        args.out = f"runs/{script}-{args.dataset}"
    if getattr(args, "workers", 0) is None:
        # In memory, a batch is an index into one tensor: worker processes would only add the
        # copying between processes. From disk (JPEG decoding), a few workers keep the model fed.
        args.workers = 0 if args.dataset in IN_MEMORY else min(4, os.cpu_count() or 1)
    return args, ckpt


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
CELEBA_HELP = """CelebA not found: looked in {root}: {problem}.
The chapter's layout (§12.4.1) is
    {root}/img_align_celeba/000001.jpg ... 202599.jpg
ImageFolder wants the images one sub-folder below {root}; images directly in {root} are
one level too shallow. Get img_align_celeba.zip from the CelebA page
(https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html, "Align&Cropped Images"; also on Kaggle as
"celeba-dataset"), then
    mkdir -p {root} && unzip img_align_celeba.zip -d {root}
or pass --dataroot DIR where DIR/celeba/img_align_celeba holds the images."""

DOWNLOAD_HELP = """could not download {name} into {folder}: {reason}
Without internet, put the files there by hand: {files}.
Or pass --dataroot DIR for a folder that already holds them."""
DOWNLOAD_FILES = {
    "mnist": "the four train-/t10k- *-idx?-ubyte files, .gz or not, into MNIST/raw/",
    "fashion-mnist": "the four train-/t10k- *-idx?-ubyte files, .gz or not, into FashionMNIST/raw/",
    "cifar10": "cifar-10-python.tar.gz, unpacked into cifar-10-batches-py/",
}


def read_image(path):
    """ImageFolder's loader (PIL, converted to RGB), with the file's name in the error."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UnreadableImage(f"cannot read image {path}: {e}. Remove or replace it, "
                              "then run again (or --resume the last checkpoint)") from None


def _image_folder(root, transform, what):
    if not os.path.isdir(root):
        if what == "celeba":
            raise UserError(CELEBA_HELP.format(root=root, problem="the folder does not exist"))
        raise UserError(f"--dataset folder: {root} does not exist. Pass --dataroot DIR where DIR "
                        "has one sub-folder per class (or just one) with the images inside")
    try:
        return dset.ImageFolder(root=root, transform=transform, loader=read_image)
    except FileNotFoundError:
        flat = any(f.lower().endswith(dset.folder.IMG_EXTENSIONS) for f in os.listdir(root))
        if flat:
            sub = "img_align_celeba" if what == "celeba" else "images"
            problem = ("the images are directly in it, one level too shallow: move them into a "
                       f"sub-folder, e.g. {os.path.join(root, sub)}/")
        else:
            problem = "it has no sub-folder with images (.jpg, .png, ...) in it"
        if what == "celeba":
            raise UserError(CELEBA_HELP.format(root=root, problem=problem)) from None
        raise UserError(f"--dataset folder: no images found in {root}: {problem}") from None


# Small, fixed datasets: transformed once per run into memory (MNIST at 64x64: 60,000 x 16 KB)
IN_MEMORY = ("mnist", "fashion-mnist", "fake")


def load_dataset(name, dataroot, transform, image_shape):
    """The torchvision dataset behind --dataset, with a clear error when it cannot be had.

    celeba: ImageFolder on <dataroot>/celeba (§12.4.1); folder: ImageFolder on <dataroot>;
    mnist, fashion-mnist, cifar10: the torchvision class with download=True (§12.4.6);
    fake: FakeData of image_shape (C, H, W), no download. The IN_MEMORY ones come back as
    in_memory(dataset).
    """
    if name == "celeba":
        return _image_folder(os.path.join(dataroot, "celeba"), transform, "celeba")
    if name == "folder":
        return _image_folder(dataroot, transform, "folder")
    if name == "fake":
        return in_memory(dset.FakeData(size=FAKE_SIZE, image_size=image_shape, transform=transform))
    cls = {"mnist": dset.MNIST, "fashion-mnist": dset.FashionMNIST, "cifar10": dset.CIFAR10}[name]
    try:
        dataset = cls(root=dataroot, train=True, download=True, transform=transform)
    except (RuntimeError, URLError, OSError) as e:
        folder = os.path.join(dataroot, cls.__name__ if name != "cifar10" else "cifar-10-batches-py")
        lines = [l.strip() for l in str(e).splitlines() if l.strip()] or [type(e).__name__]
        reason = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"  # what, and why
        raise UserError(DOWNLOAD_HELP.format(name=cls.__name__, folder=folder, reason=reason,
                                             files=DOWNLOAD_FILES[name])) from None
    return in_memory(dataset) if name in IN_MEMORY else dataset


class InMemory(torch.utils.data.TensorDataset):
    """(images, labels) tensors, with the `classes` of the dataset they came from."""

    def __init__(self, images, labels, classes):
        super().__init__(images, labels)
        self.classes = classes


def in_memory(dataset):
    """Every image of a small dataset through its transform once, kept as one tensor: each epoch
    then indexes memory instead of making a PIL image, resizing it and converting it again for
    every sample (the transform is the same each time: it has no random step)."""
    start = time.perf_counter()
    workers = min(4, os.cpu_count() or 1) if len(dataset) > 10000 else 0  # MNIST: 17 s -> 9.5 s here
    loader = torch.utils.data.DataLoader(dataset, batch_size=1000, num_workers=workers)
    images, labels = zip(*loader)
    images, labels = torch.cat(images), torch.cat(labels)
    classes = getattr(dataset, "classes", None) or [str(c) for c in range(dataset.num_classes)]
    print(f"Transformed the {len(images)} images once, into memory: {images.nbytes / 2**20:.0f} MB "
          f"in {time.perf_counter() - start:.1f} s")
    return InMemory(images, labels, classes)


class EpochSampler(torch.utils.data.distributed.DistributedSampler):
    """shuffle=True whose order depends only on (seed, epoch): DistributedSampler, which also
    gives each torchrun process its own shard of that order (rank, rank + world, ...).

    set_epoch(epoch, start) also skips this process's first `start` indices of that epoch
    without loading them, so a run resumed in the middle of an epoch sees exactly the batches
    it had not seen. Alone (world 1) the order is torch.randperm(n) seeded with seed + epoch.
    """

    def __init__(self, dataset, seed, world=None):
        rank, size = (world.rank, world.size) if world else (0, 1)
        # drop_last: every process gets n // size indices, so all run the same number of steps
        super().__init__(dataset, num_replicas=size, rank=rank, shuffle=True, seed=seed,
                         drop_last=True)
        self.start = 0

    def set_epoch(self, epoch, start=0):
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self):
        return self.num_samples - self.start


def _worker_init(worker_id):
    # Ctrl-C reaches the whole process group (under torchrun too, which passes it on). The main
    # process finishes its iteration and saves; a worker that died of the same signal would leave
    # it without the batch it is waiting for. (SIGTERM stays: the DataLoader ends stuck workers
    # with it.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def loader_options(device, workers):
    """DataLoader keywords that keep the model fed and leave the global RNG alone."""
    generator = torch.Generator()  # worker seeds come from here, not from the global RNG
    generator.manual_seed(0)
    return dict(pin_memory=device.type == "cuda",  # page-locked batches copy to the GPU faster
                persistent_workers=workers > 0,  # no new worker processes every epoch
                worker_init_fn=_worker_init, generator=generator)


# ---------------------------------------------------------------------------------------------
# --amp
# ---------------------------------------------------------------------------------------------
def _native_bf16(device):
    """Whether this device computes in bfloat16 natively (else autocast would emulate it, slowly)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:  # torch has no public probe for this (2.14 neither): ask Linux
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16", "bf16"))  # bf16: Arm
    except OSError:
        return False


def autocast(device, amp):
    """--amp: torch.autocast to bfloat16 for the forward passes it wraps; without --amp (or where
    bfloat16 is not native, which it says once) a context that does nothing, so the same loop
    runs in float32. bfloat16 has float32's range, so no GradScaler is needed."""
    if amp and not _native_bf16(device):
        print(f"--amp: {device.type} here has no native bfloat16 (on CPUs: AVX512-BF16 or AMX); "
              "training in float32")
        amp = False
    if amp:
        print(f"--amp: forward passes in bfloat16 on {device.type}")
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------
# Several processes: torchrun (README, "More than one GPU")
# ---------------------------------------------------------------------------------------------
_MAIN = True  # False in torchrun's processes other than rank 0: they write no file and print nothing
_WORLD = None  # this process's World once it has joined torchrun's group


class World:
    """This process's place among torchrun's: rank, size and its device. Alone: rank 0 of 1."""

    def __init__(self, device, rank=0, size=1, flags=None):
        self.device, self.rank, self.size, self._flags = device, rank, size, flags

    def wrap(self, model):
        """DistributedDataParallel under torchrun: each backward averages the gradients of all
        processes, so their copies of the model take the same steps. Alone: the model itself."""
        if self._flags is None:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def say_batch(self, batch_size):
        if self.size > 1:
            print(f"torchrun: {self.size} processes, each on its own shard of the data with "
                  f"batches of {batch_size}: a global batch of {self.size * batch_size}")

    def seed_noise(self, seed, iters):
        """Rank r > 0 draws its own noise from seed + r (and, on resume, the iterations done, so
        that it does not draw again what it drew before); rank 0 keeps the run's generator."""
        if self.rank > 0:
            torch.manual_seed(seed + self.rank + 1000003 * iters)

    def any(self, flag):
        """True on every process if it is true on one (a CPU collective: no GPU sync)."""
        if self._flags is None:
            return flag
        t = torch.tensor([int(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self._flags)
        return bool(t.item())


def unwrap(model):
    """The model inside DistributedDataParallel (what checkpoints hold and rank 0 samples with)."""
    return getattr(model, "module", model)


def init_processes(device):
    """Join torchrun's process group when its environment is there; returns the World.

    Each process takes the GPU of its LOCAL_RANK (NCCL), or stays on the CPU (Gloo).
    Without torchrun nothing happens: no process group, no wrappers."""
    global _MAIN, _WORLD
    if "LOCAL_RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return World(device)
    if _WORLD is not None:  # main() called again in this process (tests, notebooks)
        return _WORLD
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        gpus = torch.cuda.device_count()
        if local_rank >= gpus:
            raise UserError(f"torchrun started {os.environ.get('LOCAL_WORLD_SIZE', local_rank + 1)} "
                            f"processes on this machine and it has {gpus} GPU(s): pass "
                            f"--nproc_per_node={gpus} (or fewer)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type == "mps":
        raise UserError("torchrun with --device mps: PyTorch has no multi-process backend for "
                        "Apple GPUs; use --device cpu, or run one process without torchrun")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    # Ctrl-C is agreed on over the CPU (Gloo), so checking it never waits for the GPU
    flags = dist.new_group(backend="gloo") if device.type == "cuda" else dist.group.WORLD
    _WORLD = World(device, dist.get_rank(), dist.get_world_size(), flags)
    if _WORLD.rank > 0:
        _MAIN = False
        sys.stdout = open(os.devnull, "w")  # rank 0 alone prints (errors still go to stderr)
    return _WORLD


# ---------------------------------------------------------------------------------------------
# The run: folder, interrupts, loss history
# ---------------------------------------------------------------------------------------------
def prepare_out(out, resume_iters=None):
    """Create the run folder. A new run refuses a folder that holds a checkpoint (it would be
    overwritten); snapshots of a previous attempt that the checkpoint does not cover are removed,
    so progress.gif shows this run only."""
    ckpt = os.path.join(out, "checkpoint.pt")
    if resume_iters is None and os.path.exists(ckpt):
        raise UserError(f"{out} already holds a run's checkpoint.pt. Continue it with --resume "
                        f"{ckpt}, or write the new run elsewhere with --out DIR (or delete {out})")
    if not _MAIN:
        return
    os.makedirs(out, exist_ok=True)
    for path in glob.glob(os.path.join(out, "fake_samples_*.png")):
        if resume_iters is None or _snapshot_iter(path) >= resume_iters:
            os.remove(path)


def _snapshot_iter(path):
    return int(os.path.basename(path)[len("fake_samples_"):-len(".png")])


class Interrupt:
    """Ctrl-C (or SIGTERM, from torchrun or a job scheduler) sets `requested`; the loop finishes
    its iteration, saves and stops. A second Ctrl-C stops at once (KeyboardInterrupt).

    Under torchrun every process reads `requested` at the same point of each iteration, and it is
    true on all of them as soon as one got the signal: they stop at the same iteration, and none
    waits forever for the others."""

    def __init__(self, world=None):
        self._local, self._world, self._previous = False, world, {}

    @property
    def requested(self):
        return self._world.any(self._local) if self._world else self._local

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def _handler(self, signum, frame):
        if self._local:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self._local = True
        print(f"\n{'Ctrl-C' if signum == signal.SIGINT else 'SIGTERM'}: finishing this iteration, "
              "then saving a checkpoint (press Ctrl-C again to quit without saving)", flush=True)

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


class History:
    """The per-iteration numbers behind losses.csv and losses.png.

    append() keeps each iteration's values on the device: calling .item() every iteration would
    make the CPU wait for the GPU each time. flush() brings them over in one transfer (at log
    lines and before checkpoints), appends them to losses.csv, and raises UserError on a NaN/inf.
    """

    def __init__(self, path, columns, rows=()):
        self.path, self.columns = path, ["epoch", "i", "iters"] + list(columns)
        self.rows, self._pending = [list(r) for r in rows], []
        if _MAIN:
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerows([self.columns] + self.rows)

    def append(self, epoch, i, iters, *values):
        self._pending.append(([epoch, i, iters], torch.stack(values).detach()))

    def flush(self):
        """Returns the newest row (a list, in the order of columns)."""
        if self._pending:
            values = torch.stack([v for _, v in self._pending]).tolist()  # the one host sync
            new = [k + v for (k, _), v in zip(self._pending, values)]
            self._pending = []
            self.rows += new
            if _MAIN:
                with open(self.path, "a", newline="") as f:
                    csv.writer(f).writerows(new)
            bad = next((r for r in new if not all(math.isfinite(x) for x in r[3:])), None)
            if bad is not None:
                values = ", ".join(f"{k} {v:.4g}" for k, v in zip(self.columns[3:], bad[3:]))
                raise NonFiniteLoss(f"a loss became NaN or infinite at iteration {bad[2]} "
                                    f"({values})", os.path.dirname(self.path))
        return self.rows[-1] if self.rows else None

    def column(self, name):
        k = self.columns.index(name)
        return [r[k] for r in self.rows]


class NonFiniteLoss(UserError):
    def __init__(self, what, out):
        ckpt = os.path.join(out, "checkpoint.pt")
        kept = (f"The last good checkpoint, {ckpt}, is kept (--resume it to go on from there)"
                if os.path.exists(ckpt) else "No checkpoint had been written yet")
        super().__init__(f"{what}, so training stopped. {kept}. Try a lower --lr, and check "
                         "that the data has no broken images")


@contextlib.contextmanager
def nan_guard(out):
    """Stop clearly when D's probabilities become NaN (its weights diverged). BCELoss refuses
    them with a RuntimeError before any loss shows a NaN (on CUDA, with a device-side assert
    that ends the process; the last checkpoint is safe either way)."""
    try:
        yield
    except RuntimeError as e:
        if "should be between 0 and 1" not in str(e):
            raise
        raise NonFiniteLoss("D's output became NaN", out) from None


class IterRate:
    """Iterations per second since the previous call."""

    def __init__(self, iters):
        self.iters, self.time = iters, time.perf_counter()

    def __call__(self, iters):
        now = time.perf_counter()
        rate = (iters - self.iters) / max(now - self.time, 1e-9)
        self.iters, self.time = iters, now
        return rate


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------
def rng_state(device):
    """The random generators a resumed run must continue from (noise is drawn on `device`)."""
    state = {"cpu": torch.get_rng_state(), "device_type": device.type, "device": None}
    if device.type == "cuda":
        state["device"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps" and hasattr(torch, "mps") and hasattr(torch.mps, "get_rng_state"):
        state["device"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state, device):
    torch.set_rng_state(state["cpu"])
    if state.get("device") is None or state.get("device_type") != device.type:
        return  # saved on another kind of device: the noise there goes on from its own seed
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["device"], device)
    elif device.type == "mps" and hasattr(torch, "mps") and hasattr(torch.mps, "set_rng_state"):
        torch.mps.set_rng_state(state["device"])


def save_checkpoint(ckpt, path):
    """Write atomically: a crash or Ctrl-C during the write leaves the previous file intact.
    Under torchrun, rank 0 alone writes."""
    if not _MAIN:
        return
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(ckpt, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path, script, allow_state_dict=False):
    """torch.load(weights_only=True) with a clear error for every way it can go wrong.

    With allow_state_dict, a bare generator state_dict (netG.pt) is accepted too and returned
    as {"netG": state_dict}.
    """
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}: train first (python {script}.py ...), "
                        "or pass the right path")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, truncated, or pickled objects other than tensors
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path} is not a checkpoint this script can read ({first})") from None
    if isinstance(ckpt, dict) and "script" in ckpt:
        if ckpt["script"] != script:
            raise UserError(f"{path} was written by {ckpt['script']}.py, not {script}.py: "
                            f"use python {ckpt['script']}.py with it")
        return ckpt
    if allow_state_dict and isinstance(ckpt, dict) and all(torch.is_tensor(v) for v in ckpt.values()):
        return {"netG": ckpt}
    raise UserError(f"{path} is not a checkpoint of {script}.py")


def load_state(module, state, what, path):
    """module.load_state_dict with a clear error when the sizes do not match."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as e:
        detail = str(e).strip().splitlines()
        raise UserError(f"{path}: {what} does not fit this model ({detail[-1].strip()}). "
                        "Were the sizes (--nz, --ngf, --ndf, --dataset) different?") from None


def save_training(path, script, args, iters, history, device, **state):
    """The one checkpoint dict of a run: its settings, where it is, its loss history, the random
    generators, and every model, optimizer (as state_dicts) or tensor passed by name."""
    history.flush()  # raises on a NaN loss, so a bad state never replaces a good checkpoint
    save_checkpoint({
        "script": script, "args": vars(args), "iters": iters, "history": history.rows,
        "rng": rng_state(device),
        **{name: unwrap(x).state_dict() if hasattr(x, "state_dict") else x
           for name, x in state.items()},
    }, path)


def restore(ckpt, path, device, **state):
    """Load a save_training checkpoint into the models and optimizers passed by name (the
    names it was saved under) and the random generators; returns the iterations done."""
    for name, x in state.items():
        if isinstance(x, torch.nn.Module):
            load_state(unwrap(x), ckpt[name], name, path)
        else:
            x.load_state_dict(ckpt[name])
    set_rng_state(ckpt["rng"], device)
    return ckpt["iters"]


def start_point(args, iters, per_epoch):
    """(epoch, iteration in it) where a run that has done `iters` iterations goes on."""
    start_epoch, start_i = divmod(iters, per_epoch)
    if start_epoch >= args.epochs or (args.max_steps and iters >= args.max_steps):
        raise UserError(f"{args.resume} has done {iters} iterations ({start_epoch} epochs) "
                        "already: pass a larger --epochs (or --max-steps) to go on")
    if iters:
        print(f"Resuming {args.resume}: epoch {start_epoch}, iteration {start_i} of {per_epoch}")
    return start_epoch, start_i


# ---------------------------------------------------------------------------------------------
# What a run writes
# ---------------------------------------------------------------------------------------------
def save_grid(images, path, nrow=8, padding=2):
    """Images in [-1, 1] (Tanh, Normalize(0.5, 0.5)) as a PNG grid. A fixed range, not the
    batch's min and max, so that one image's brightness never depends on the others."""
    if _MAIN:
        vutils.save_image(images, path, nrow=nrow, padding=padding, normalize=True, value_range=(-1, 1))


def save_real_vs_fake(real, fake, path, fake_nrow=8):
    """§12.4.5 "Real Images vs. Fake Images": the two grids side by side, a white gap between."""
    if not _MAIN:
        return
    a = vutils.make_grid(real, padding=2, normalize=True, value_range=(-1, 1))
    b = vutils.make_grid(fake, nrow=fake_nrow, padding=2, normalize=True, value_range=(-1, 1))
    h = max(a.shape[1], b.shape[1])
    pad = lambda g: torch.nn.functional.pad(g, (0, 0, 0, h - g.shape[1]), value=1.0)
    gap = torch.ones(3, h, 16)
    vutils.save_image(torch.cat([pad(a), gap, pad(b)], dim=2), path)


def write_gif(out, path):
    """§12.4.5's animation of G's progression, as a file: every fake_samples_*.png in order."""
    files = sorted(glob.glob(os.path.join(out, "fake_samples_*.png")), key=_snapshot_iter)
    if not files or not _MAIN:
        return
    frames = [Image.open(f).convert("RGB") for f in files]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=1000, loop=0)


_said_no_matplotlib = False


def plot_losses(curves, title, path):
    """The chapter's loss plot (§12.4.5) where matplotlib is installed; it is optional."""
    global _said_no_matplotlib
    if not _MAIN:
        return False
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if not _said_no_matplotlib:
            print("matplotlib is not installed, so there is no losses.png "
                  "(pip install matplotlib); losses.csv has the numbers")
            _said_no_matplotlib = True
        return False
    fig = plt.figure(figsize=(10, 5))
    plt.title(title)
    for label, values in curves.items():
        plt.plot(values, label=label)
    plt.xlabel("iterations")
    plt.ylabel("Loss")
    plt.legend()
    fig.savefig(path)
    plt.close(fig)
    return True
