"""Plumbing shared by the four scripts, and nothing the chapter teaches: the command line, the
datasets' clear errors, and `Run`, which owns a training run's folder, checkpoints, Ctrl-C,
torchrun, losses.csv and the pictures at the end. The GANs themselves are in the scripts.
"""
import argparse
import contextlib
import copy
import csv
import errno
import glob
import hashlib
import itertools
import json
import math
import os
import pickle
import shlex
import shutil
import signal
import sys
import threading
import time
import types
import urllib.request
import zipfile

try:
    import fcntl  # the run folder's lock: an flock, which the system releases with its process
except ImportError:  # Windows
    fcntl = None
    import msvcrt


def _quiet(signum, frame):
    sys.exit(print("interrupted", file=sys.stderr) or 130)


# A Ctrl-C in the seconds torch takes to load (the scripts import this file first) ends with
# "interrupted" and status 130, not a traceback; cli() handles Ctrl-C from then on
_sigint = signal.signal(signal.SIGINT, _quiet) if threading.current_thread() is threading.main_thread() else None
import numpy as np
import PIL
import torch
import torch.distributed as dist
import torch.utils.data
import torchvision
import torchvision.datasets as dset
import torchvision.transforms as T
import torchvision.utils as vutils
from PIL import Image

if _sigint is not None:
    signal.signal(signal.SIGINT, _sigint)

FAKE_SIZE = 1000  # --dataset fake: torchvision FakeData's own default size
# A resumed run may change these; any other setting defines the run and stays with it.
FREE_ON_RESUME = {"epochs", "out", "dataroot", "workers", "log_every", "sample_every"}
# Settings of one invocation (or one machine), never taken from a checkpoint.
PER_INVOCATION = {"resume", "generate", "checkpoint", "max_steps", "device", "labels", "amp", "walk", "interp",
                  "no_cache"}
_MAIN = True  # False in torchrun's processes but rank 0: they write no file and print nothing
_RUN = None  # the Run of this process, for cli()'s messages


class UserError(Exception):
    """Something the user can fix: cli() prints it without a traceback and exits with 1."""


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def cli(main, argv=None):
    """Run a script's main() as a command: user errors become one message and exit status 1.
    A SIGTERM before the training loop (which saves on it) quits as Ctrl-C does, cleanly."""
    global _RUN
    _RUN = None
    sigterm = signal.signal(signal.SIGTERM, _interrupt)
    try:
        status = main(argv)
    except UserError as e:
        msg = str(e)
        if "Original Traceback" in msg:  # raised in a DataLoader worker: keep the last line
            msg = msg.strip().splitlines()[-1].split(": ", 1)[-1]
        sys.exit(f"error: {msg}")
    except OSError as e:  # the file system refused: read-only, full, a file where a folder goes
        sys.exit(f"error: {e}")
    except (MemoryError, RuntimeError) as e:  # torch's allocators: CUDA's has a type, the CPU's a text
        if not isinstance(e, (MemoryError, torch.cuda.OutOfMemoryError)) and "can't allocate memory" not in str(e):
            raise
        sys.exit(f"error: too large for this machine's memory ({str(e).splitlines()[0][:200]}): use "
                 "smaller sizes (--nz, --ngf, --ndf, --image-size) or a smaller --batch-size")
    except KeyboardInterrupt:  # the second Ctrl-C, or a signal before the training loop
        print("interrupted", file=sys.stderr)
        status = 130
    finally:
        signal.signal(signal.SIGTERM, sigterm)
        if _RUN is not None:
            _RUN.release()
            with contextlib.suppress(OSError):  # a run that failed before writing anything
                os.rmdir(_RUN.out)
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    sys.exit(status)


# --- Command line ------------------------------------------------------------------------------
def _checked(kind, ok, says):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{says}, got {text}")
        return value
    return parse


positive_int = _checked(int, lambda v: v >= 1, "must be a positive whole number")
_positive_float = _checked(float, lambda v: 0 < v <= 1e30, "must be a positive number up to 1e30")
_seed = _checked(int, lambda v: 0 <= v < 2**32, "must be a whole number from 0 to 2**32 - 1")
_beta = _checked(float, lambda v: 0 <= v < 1, "must be in [0, 1)")
_workers = _checked(int, lambda v: v >= 0, "must be 0 or more")
non_negative = _checked(float, lambda v: v >= 0 and math.isfinite(v), "must be 0 or more")  # 04's λ
unit_value = _checked(float, lambda v: 0 < v <= 1, "must be in (0, 1]")  # 01's --smooth, 04's --clip
_walk_steps = _checked(int, lambda v: v >= 2, "must be 2 or more: a walk has two ends")


def label_list(text):
    """03's --labels 7 or --labels 0,3,8: class numbers, in the order given."""
    try:
        labels = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected class numbers separated by commas, got {text!r}")
    if len(set(labels)) != len(labels):
        raise argparse.ArgumentTypeError(f"a class is listed twice in {text!r}")
    return labels


def make_parser(doc, datasets, defaults_said=None, **defaults):
    """The flags all scripts share (CONVENTIONS.md), the script's document values as defaults.
    A model flag exists only where the script gives it a default; defaults_said: {dest: text}
    for a default the script decides later (given as None)."""
    said = dict(defaults_said or {})
    if defaults.get("workers", 0) is None:
        said["workers"] = ("0 where the images are one array (in memory, or a folder's decoded "
                           "cache); min(4, CPUs) to decode images")
    p = argparse.ArgumentParser(description=doc, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)

    def add(flag, help, **kw):
        dest = flag[2:].replace("-", "_")
        if dest in defaults:
            if kw.get("type") in (positive_int, _workers, int):
                kw.setdefault("metavar", "N")
            text = said.get(dest, "%(default)s")
            p.add_argument(flag, default=defaults[dest], help=f"{help} (default: {text})", **kw)

    add("--dataset", "which data to train on", choices=datasets)
    add("--dataroot", "parent folder of the datasets: MNIST in DIR/MNIST, CelebA in "
        "DIR/celeba/img_align_celeba/*.jpg; for --dataset folder, an ImageFolder root", metavar="DIR")
    p.add_argument("--out", metavar="DIR", help="where the run writes everything "
                   "(default: runs/<script>-<dataset>)")
    add("--epochs", "number of training epochs", type=positive_int)
    add("--batch-size", "batch size during training", type=positive_int)
    add("--lr", "learning rate of both optimizers", type=_positive_float)
    add("--beta1", "beta1 of Adam", type=_beta)
    add("--beta2", "beta2 of Adam", type=_beta)
    add("--nz", "size of the latent vector z", type=positive_int)
    add("--ngf", "size of the feature maps in the generator", type=positive_int)
    add("--ndf", "size of the feature maps in the discriminator", type=positive_int)
    add("--workers", "DataLoader worker processes (0: load in the main process)", type=_workers)
    add("--seed", "random seed", type=_seed)
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"],
                   help="auto picks cuda, then mps, then cpu (default: auto)")
    if "amp" in defaults:
        p.add_argument("--amp", action="store_true", help="forward passes in bfloat16 (autocast) "
                       "on CUDA and on CPUs with native bfloat16; the losses stay in float32. "
                       "Faster, and the same results within rounding (docs/speed.md)")
    add("--log-every", "iterations between log lines", type=positive_int)
    add("--sample-every", "iterations between fixed-noise snapshots", type=positive_int)
    if {"celeba", "folder"} & set(datasets):
        p.add_argument("--no-cache", action="store_true", help="celeba, folder: decode the images "
                       "every epoch, not once into the decoded cache (docs/speed.md)")
    p.add_argument("--max-steps", type=positive_int, metavar="N",
                   help="stop after N training iterations in all, and save a checkpoint")
    p.add_argument("--resume", metavar="PATH", help="continue the run saved in this checkpoint")
    p.add_argument("--generate", type=positive_int, metavar="N",
                   help=f"no training: N images from --checkpoint: up to {GRID_MAX} as one grid, "
                   "generated.png; more as one PNG each in generated/, written as they are made")
    p.add_argument("--checkpoint", metavar="PATH", help="the checkpoint (or netG.pt) that "
                   "--generate samples from (default: <out>/checkpoint.pt)")
    p.add_argument("--walk", type=_walk_steps, metavar="K", help="with --generate N: latent walks "
                   "instead of generated.png: N/K rows of K images, each row G along a path between "
                   "two random z, as walk.png and as the animation walk.gif")
    p.add_argument("--interp", choices=["slerp", "lerp"], help="--walk's path: slerp, along the "
                   "sphere on which Gaussian z lie, or lerp, the straight line (default: slerp)")
    return p


def check_device(device):
    """--device cuda or mps where there is none: a clear message, not torch's traceback."""
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: this torch sees no CUDA GPU "
                        f"(torch {torch.__version__}); use --device cpu or auto")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps: MPS (Apple GPU) is not available here; use --device cpu or auto")


def get_args(parser, argv, script):
    """Parse the command line; returns (args, checkpoint or None). With --resume or --generate
    the run's settings come from its checkpoint, and a flag that contradicts one is an error."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.resume and args.generate:
        parser.error("--resume trains, --generate samples: use one of them")
    if args.checkpoint and not args.generate:
        parser.error("--checkpoint names what --generate samples from: add --generate N (to go on "
                     "training a run, use --resume PATH)")
    if args.generate and args.max_steps:
        parser.error("--max-steps stops training, and --generate does not train: use one of them")
    if args.generate and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        parser.error("--generate is for one process: run it without torchrun")
    if getattr(args, "no_cache", False) and args.dataset not in ("celeba", "folder"):
        parser.error(f"--no-cache is for celeba and folder, whose images are files: "
                     f"{args.dataset} is decoded into memory once")
    if args.walk and not args.generate:
        parser.error("--walk K draws walks of --generate's images: add --generate N (N/K walks)")
    if args.interp and not args.walk:
        parser.error("--interp picks the path of --walk: add --generate N --walk K")
    if args.walk and args.generate % args.walk:
        parser.error(f"--generate {args.generate} --walk {args.walk}: N must be a multiple of K, "
                     f"N/K walks of K images each (e.g. --generate {args.walk * (args.generate // args.walk + 1)})")
    if args.walk and args.generate > GRID_MAX:
        parser.error(f"--generate {args.generate} --walk {args.walk}: walk.png is one grid, of at "
                     f"most {GRID_MAX} images")
    check_device(args.device)
    ckpt = None
    if args.generate:
        args.checkpoint = args.checkpoint or os.path.join(
            args.out or f"runs/{script}-{args.dataset}", "checkpoint.pt")
        ckpt = load_checkpoint(args.checkpoint, script, allow_state_dict=True)
        args.out = args.out or os.path.dirname(args.checkpoint) or "."
    elif args.resume:
        ckpt = load_checkpoint(args.resume, script)
        args.out = args.out or os.path.dirname(args.resume) or "."
    if ckpt is not None and "args" in ckpt:
        given = {a.dest for a in parser._actions for s in a.option_strings
                 if any(x == s or x.startswith(s + "=") for x in argv)}
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
    args.out = args.out or f"runs/{script}-{args.dataset}"
    if args.walk and args.interp != "lerp" and args.nz < 2:  # (--nz: the checkpoint's run's)
        raise UserError("--walk: slerp follows the sphere on which z lie, and at --nz 1 that is "
                        "two points: use --interp lerp")
    return args, ckpt


# --- Data --------------------------------------------------------------------------------------
CELEBA_HELP = """CelebA not found: looked in {root}: {problem}.
The chapter's layout (§12.4.1) is {root}/img_align_celeba/000001.jpg ... 202599.jpg (ImageFolder
wants them one sub-folder down: images directly in {root} are one level too shallow). Get
img_align_celeba.zip ("Align&Cropped Images" at https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html,
or Kaggle's "celeba-dataset"), then: mkdir -p {root} && unzip img_align_celeba.zip -d {root}
(or pass --dataroot DIR where DIR/celeba/img_align_celeba holds the images; docs/shared.md)"""
DOWNLOAD_HELP = """could not download {name} into {folder}: {reason}
Without internet, put the files there by hand: {files}.
Or pass --dataroot DIR for a folder that already holds them."""
IDX_FILES = "the four train-/t10k- *-idx?-ubyte files, .gz or not, into {}/raw/"


def read_image(path):
    """ImageFolder's loader (PIL, RGB), with the file's name in the error."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot read image {path}: {e}. Remove or replace it, then run again "
                        "(with --resume if the run has written a checkpoint.pt)") from None


def _image_folder(root, transform, what):
    problem = "the folder does not exist"
    if os.path.isdir(root):
        try:
            dataset = dset.ImageFolder(root=root, transform=transform, loader=read_image)
            folders = {os.path.dirname(path) for path, _ in dataset.samples}
            real = {}
            for folder in folders:  # a link that loops (loop -> .) reaches each image ~40 times
                twin = real.setdefault(os.path.realpath(folder), folder)
                if twin != folder:
                    raise UserError(f"{root}: the folders {twin} and {folder} are the same one, "
                                    "through a folder link: remove the link, so that each image "
                                    "is read once")
            return dataset
        except FileNotFoundError:
            problem = "it has no sub-folder with images (.jpg, .png, ...) in it"
            if any(f.lower().endswith(dset.folder.IMG_EXTENSIONS) for f in os.listdir(root)):
                sub = os.path.join(root, "img_align_celeba" if what == "celeba" else "images")
                problem = ("the images are directly in it, one level too shallow: move them into "
                           f"a sub-folder, e.g. {sub}/")
    if what == "celeba":
        raise UserError(CELEBA_HELP.format(root=root, problem=problem))
    raise UserError(f"--dataset folder: no images found in {root}: {problem}. Pass --dataroot DIR "
                    "where DIR has one sub-folder per class (or just one) with the images inside")


def load_dataset(name, dataroot, transform, image_shape, train=True, n=None):
    """The torchvision dataset behind --dataset, or a clear error: celeba (ImageFolder on
    <dataroot>/celeba, §12.4.1), folder (ImageFolder on <dataroot>), mnist, fashion-mnist,
    cifar10 (download=True, §12.4.6), fake (FakeData of image_shape (C, H, W)). For
    evaluate.py: train=False, the test split; n, only n images of those kept in memory."""
    if name in ("celeba", "folder"):
        return _image_folder(os.path.join(dataroot, "celeba") if name == "celeba" else dataroot,
                             transform, name)
    if name == "fake":
        return in_memory(dset.FakeData(size=FAKE_SIZE, image_size=image_shape, transform=transform,
                                       random_offset=0 if train else FAKE_SIZE), n)
    cls = {"mnist": dset.MNIST, "fashion-mnist": dset.FashionMNIST, "cifar10": dset.CIFAR10}[name]
    folder = os.path.join(dataroot, cls.__name__ if name != "cifar10" else "cifar-10-batches-py")
    try:
        with _first_on_each_machine():  # torchrun: one process downloads, the others wait
            dataset = cls(root=dataroot, train=train, download=True, transform=transform)
    except (RuntimeError, OSError, ValueError, AssertionError, EOFError, IndexError) as e:
        lines = [l.strip() for l in str(e).splitlines() if l.strip()] or [type(e).__name__]
        reason = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"  # what, and why
        # What failed, by what is on disk now, not by torchvision's wording: with every file
        # there, reading one; else fetching one, and then the network's own reason (torchvision
        # 0.16 prints it and raises a bare "Error downloading")
        if not isinstance(e, OSError) and _downloaded(cls, folder):
            raise UserError(f"could not read {cls.__name__} in {folder}: {reason}. A file there is "
                            f"damaged or cut short: delete {folder} to download it again, or put "
                            "good copies there") from None
        url = cls.mirrors[0] + cls.resources[0][0] if hasattr(cls, "mirrors") else cls.url
        reason = _unreachable(url) or reason
        raise UserError(DOWNLOAD_HELP.format(name=cls.__name__, folder=folder, reason=reason,
                                             files=IDX_FILES.format(cls.__name__) if name != "cifar10" else
                                             "cifar-10-python.tar.gz, unpacked into cifar-10-batches-py/")) from None
    return in_memory(dataset, n)  # small and fixed: their PIL steps once, into memory


@contextlib.contextmanager
def _first_on_each_machine():
    """Under torchrun, the block runs on this machine's first process alone, then on the others
    (a download, a cache build: one writer per file)."""
    ranked = dist.is_available() and dist.is_initialized()
    later = ranked and int(os.environ.get("LOCAL_RANK", 0)) > 0
    if later:
        dist.barrier(group=_GROUP)
    try:
        yield
    finally:  # after a failure too: the others then meet it themselves, and say so
        if ranked and not later:
            dist.barrier(group=_GROUP)


def _downloaded(cls, folder):
    """Whether the files torchvision reads for cls are all in folder (the MNISTs' raw/ unpacked,
    or CIFAR-10's batches)."""
    if hasattr(cls, "resources"):
        names = [os.path.join("raw", os.path.splitext(f)[0]) for f, _ in cls.resources]
    else:
        names = [f for f, _ in cls.train_list + cls.test_list]
    return all(os.path.isfile(os.path.join(folder, f)) for f in names)


def _unreachable(url):
    """Why url cannot be fetched, in the network's words, or None where it can."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=10).close()
    except (OSError, ValueError) as e:
        return str(getattr(e, "reason", e))
    return None


FIXED = (T.Resize, T.CenterCrop, T.Grayscale)  # PIL steps that give the same pixels every time


def _split(transform):
    """A transform Compose([fixed PIL steps..., ToTensor(), Normalize(mean, std)]) as (its PIL
    steps then PILToTensor, which give uint8 images; mean; std). None for any other transform:
    a random step must run every epoch, so its images cannot be kept."""
    steps = getattr(transform, "transforms", [])
    if (len(steps) < 2 or not isinstance(steps[-2], T.ToTensor) or not isinstance(steps[-1], T.Normalize)
            or not all(isinstance(s, FIXED) for s in steps[:-2])):
        return None
    return T.Compose(steps[:-2] + [T.PILToTensor()]), steps[-1].mean, steps[-1].std


class Images(torch.utils.data.Dataset):
    """A dataset as one uint8 array, N x C x H x W (in memory, or memory-mapped from the decoded
    cache at path), its labels and class names. The transform's last steps, ToTensor and
    Normalize, are left to whole batches (to_float, on the device), and a batch is one indexing
    of the array (__getitems__), not batch_size __getitem__ calls and a collate."""

    def __init__(self, images, labels, classes, mean, std, path=None):
        self.images, self.labels, self.classes, self.mean, self.std = images, labels, classes, mean, std
        self.path, self._norm = path, None

    def __len__(self):
        return len(self.images)

    def __getitems__(self, indices):  # a DataLoader's whole batch (collate_fn=_as_batch)
        indices = torch.as_tensor(indices)  # index_select: 8x faster than images[indices] here
        return [self.images.index_select(0, indices), self.labels.index_select(0, indices)]

    def to_float(self, images):
        """ToTensor (/ 255) and Normalize on a batch, where it is: the very numbers they give."""
        if self._norm is None or self._norm[0].device != images.device:  # once per device; 255
            # as a tensor too: CUDA divides by a plain number as a product with its inverse
            self._norm = [torch.tensor(v).view(-1, 1, 1).to(images.device)
                          for v in ((255.0,), self.mean, self.std)]
        scale, mean, std = self._norm
        return images.float().div_(scale).sub_(mean).div_(std)

    def __getstate__(self):  # workers started by spawn (macOS, Windows) map the cache again
        return {**self.__dict__, "images": None if self.path else self.images}

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self.path:
            self.images = _open_cache(self.path)


def _as_batch(batch):
    return batch


def _decoded(dataset, pre, workers, indices=None):
    """Batches of (uint8 images, labels): dataset's images (those at indices) through pre, the
    transform's PIL steps, in order, decoded by workers in parallel."""
    dataset = copy.copy(dataset)
    dataset.transform = pre
    source = dataset if indices is None else torch.utils.data.Subset(dataset, indices)
    return torch.utils.data.DataLoader(source, batch_size=256, num_workers=workers,
                                       worker_init_fn=_worker_init)


def in_memory(dataset, n=None):
    """Every image of a small dataset (or n of them, at random) through its transform's fixed
    steps once, kept as uint8 Images: no PIL resize per sample per epoch, and a quarter of
    float32's memory (MNIST at 64x64: 234 MB). Workers for large ones (MNIST: 17 s -> 9.5 s)."""
    start = time.perf_counter()
    parts = _split(dataset.transform)
    if parts is None:  # a random step: it runs every epoch, on each sample
        return dataset
    indices = None if n is None else torch.randperm(
        len(dataset), generator=torch.Generator().manual_seed(0))[:n].tolist()
    workers = min(4, os.cpu_count() or 1) if len(indices or dataset) > 10000 else 0
    images, labels = map(torch.cat, zip(*_decoded(dataset, parts[0], workers, indices)))
    classes = getattr(dataset, "classes", None) or [str(c) for c in range(dataset.num_classes)]
    print(f"Transformed the {len(images)} images once, into memory: {images.nbytes / 2**20:.0f} MB "
          f"in {time.perf_counter() - start:.1f} s")
    return Images(images, labels, classes, *parts[1:])


def cache_folders(root):
    """Where the decoded cache of the image folder root may go: in it, else (read-only) in
    $XDG_CACHE_HOME/gan-scripts/ (default ~/.cache), a folder per image folder."""
    home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser(os.path.join("~", ".cache"))
    return [root, os.path.join(home, "gan-scripts",
                               hashlib.sha256(os.path.realpath(root).encode()).hexdigest()[:16])]


def _open_cache(path):
    return torch.from_numpy(np.load(path, mmap_mode="c"))  # "c": mapped, and writable for torch


def decoded_cache(dataset, workers):
    """An ImageFolder as Images from its decoded cache (docs/speed.md): the transform's fixed
    steps (Resize, CenterCrop) run once, the first time, into one uint8 .npy file, read
    memory-mapped from then on. Its name holds a key of what it was made from (the files with
    their sizes and times, the steps, the library versions), so a changed folder or size makes
    a new one. None where the transform has a random step or no cache can be written."""
    parts = _split(dataset.transform)
    if parts is None:
        print("No decoded cache: the transform has a random step, which must run every epoch")
        return None
    pre, mean, std = parts
    with _first_on_each_machine():  # torchrun: one process builds, the others then read it
        files = []
        for path, _ in dataset.samples:
            stat = os.stat(path)
            files.append((os.path.relpath(path, dataset.root), stat.st_size, stat.st_mtime_ns))
        shape = (len(files), *pre(dataset.loader(dataset.samples[0][0])).shape)
        made_of = json.dumps([files, repr(pre), torchvision.__version__, PIL.__version__])
        key = hashlib.sha256(made_of.encode()).hexdigest()[:16]
        name = f"gan-cache-{'x'.join(map(str, shape[1:]))}-{key}.npy"
        labels = torch.tensor(dataset.targets)
        for folder in cache_folders(dataset.root):
            path = os.path.join(folder, name)
            with contextlib.suppress(OSError, ValueError):  # none there (or not a whole one)
                images = _open_cache(path)
                if images.shape == shape:
                    print(f"Decoded cache: {path} ({images.nbytes / 2**30:.2f} GB)")
                    return Images(images, labels, dataset.classes, mean, std, path)
        reasons = []
        for folder in cache_folders(dataset.root):
            path = os.path.join(folder, name)
            try:
                took = _build_cache(path, shape, _decoded(dataset, pre, workers))
            except OSError as e:  # read-only, full, ...: the next place, else the JPEGs
                reasons.append(f"{folder}: {e.strerror or e}")
                continue
            print(f"Decoded cache: built {path} ({shape[0]} images, "
                  f"{math.prod(shape) / 2**30:.2f} GB) in {took:.0f} s; later runs read it")
            return Images(_open_cache(path), labels, dataset.classes, mean, std, path)
        print(f"No decoded cache ({'; '.join(reasons)}): decoding every image every epoch")
        return None


def _build_cache(path, shape, batches):
    """The batches' images into path, as a .npy of shape; written to a temporary file renamed
    when complete, so a stopped build leaves no cache (and a dead build's temporary file goes).
    Returns the seconds it took."""
    start = time.perf_counter()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for old in glob.glob(f"{glob.escape(path)}.tmp*"):
        try:
            os.kill(int(old.rsplit(".tmp", 1)[1]), 0)  # that build's process lives: leave it
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                os.remove(old)
        except (ValueError, OSError):
            pass
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
            for images, _ in batches:
                f.write(images.numpy().data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)
    return time.perf_counter() - start


class EpochSampler(torch.utils.data.distributed.DistributedSampler):
    """shuffle=True by (seed, epoch), each torchrun process on its own shard; set_epoch(epoch,
    start) skips this process's first `start` indices unloaded, for a resume mid-epoch."""

    def __init__(self, dataset, seed, rank=0, size=1):
        # drop_last: n // size indices each, so all processes take the same number of steps
        super().__init__(dataset, num_replicas=size, rank=rank, shuffle=True, seed=seed,
                         drop_last=True)
        self.start = 0

    def set_epoch(self, epoch, start=0):
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self):  # (len() stays the epoch's: the loop counts its batches from there)
        return itertools.islice(super().__iter__(), self.start, None)


def _worker_init(worker_id):
    # Ctrl-C, and a scheduler's SIGTERM, reach the whole process group; the main process still
    # needs its workers to finish the iteration and save. The next SIGTERM (the DataLoader's own,
    # to end a stuck worker) ends a worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: signal.signal(signal.SIGTERM, signal.SIG_DFL))


# --- --amp, torchrun ---------------------------------------------------------------------------
def _native_bf16(device):
    """Whether this device computes in bfloat16 natively (else autocast emulates it, slowly)."""
    if device.type == "cuda":  # Ampere (8.0) and newer: is_bf16_supported() also counts emulation
        return torch.cuda.get_device_capability(device) >= (8, 0)
    try:  # torch has no public probe for CPUs (2.14 neither): ask Linux
        with open("/proc/cpuinfo") as f:
            flags = f.read().split()
        return device.type == "cpu" and any(f in flags for f in ("avx512_bf16", "amx_bf16", "bf16"))
    except OSError:
        return False


_float32_only = False


def _forward_bf16(self, *inputs):
    with torch.autocast(self._amp_device, dtype=torch.bfloat16, enabled=not _float32_only):
        return type(self).forward(self, *inputs).float()


def _forward_float32(self, *inputs):
    with torch.autocast(self._amp_device, enabled=False):
        return type(self).forward(self, *(x.float() for x in inputs))


def amp(device, enabled, *models):
    """--amp: each model's forward runs under bfloat16 autocast and hands back float32, so the
    losses (BCELoss is not autocast-safe on CUDA) and all after them stay in float32. The last
    layer computes in float32: D's Sigmoid (on neither autocast list) would take a bfloat16
    logit and round every probability above 0.998 to 1, where BCELoss's gradient is 0. Without
    --amp, or where bfloat16 is not native (said once), the models are returned unchanged."""
    if enabled and not _native_bf16(device):
        print(f"--amp: {device.type} here has no native bfloat16 (on CPUs: AVX512-BF16 or AMX); "
              "training in float32")
    elif enabled:
        print(f"--amp: forward passes in bfloat16 on {device.type}, each model's last layer in float32")
        for m in models:  # bound methods, so that copy.deepcopy(m) calls the copy's forward
            last = [l for l in m.modules() if next(l.parameters(recurse=False), None) is not None][-1]
            last._amp_device, last.forward = device.type, types.MethodType(_forward_float32, last)
            m._amp_device, m.forward = device.type, types.MethodType(_forward_bf16, m)
    return models


@contextlib.contextmanager
def float32():
    """Inside, --amp's models compute in float32 (04: the gradient penalty's double backward)."""
    global _float32_only
    _float32_only, before = True, _float32_only
    try:
        yield
    finally:
        _float32_only = before


def init_processes(device):
    """Join torchrun's process group when its environment is there: NCCL on this process's GPU,
    or Gloo on the CPU. Returns (device, rank, size, the group that agrees on Ctrl-C or None)."""
    global _MAIN, _GROUP
    if "LOCAL_RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return device, 0, 1, None
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
    if _GROUP is None:  # once per process (tests call main() again)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        # Ctrl-C is agreed on over the CPU (Gloo), so checking it never waits for the GPU
        _GROUP = dist.new_group(backend="gloo") if device.type == "cuda" else dist.group.WORLD
    if dist.get_rank() > 0:
        _MAIN = False
        sys.stdout = open(os.devnull, "w")  # rank 0 alone prints (errors still go to stderr)
    return device, dist.get_rank(), dist.get_world_size(), _GROUP


_GROUP = None


def unwrap(model):
    """The model inside DistributedDataParallel (what checkpoints hold and samples come from)."""
    return getattr(model, "module", model)


# --- The run -----------------------------------------------------------------------------------
LOSS_LIMIT = 1e4  # no healthy run's loss comes near: D's logit (01) or critic (04) has run away


def _tensors(x):
    """A model's weights, their gradients and buffers; an optimizer's state; a tensor."""
    if isinstance(x, torch.nn.Module):
        return [t for p in x.parameters() for t in (p, p.grad) if t is not None] + list(x.buffers())
    if isinstance(x, torch.optim.Optimizer):
        return [t for state in x.state.values() for t in state.values() if torch.is_tensor(t)]
    return [x] if torch.is_tensor(x) else []


def _all(checks, device, empty):
    """torch.stack([c.all() for c in checks]).all() as one bool on `device`, for checks on
    several devices (Adam keeps its step counters on the CPU beside CUDA weights: one stack of
    both fails); `empty` where there are none."""
    on = {}
    for c in checks:
        on.setdefault(c.device, []).append(c.all())
    return torch.stack([torch.stack(v).all().to(device) for v in on.values()]
                       or [torch.tensor(empty, device=device)]).all()


class NonFiniteLoss(UserError):
    """The run diverged: what, that the last good checkpoint is kept, what to try."""


def diverged(out, what):
    ckpt = os.path.join(out, "checkpoint.pt")
    kept = (f"The last good checkpoint, {ckpt}, is kept (--resume it to go on from there)"
            if os.path.exists(ckpt) else "No checkpoint had been written yet")
    return NonFiniteLoss(f"{what}, so training stopped. {kept}. Try a lower --lr, and check that "
                         "the data has no broken images")


GPU_SHARE = 0.25  # Images kept whole on a CUDA device up to this share of its free memory


class Batches:
    """The DataLoader of Images: each batch one indexing of the array (in the loader's workers,
    or on the GPU where the array is there whole: loader None), then ToTensor and Normalize on
    the device. Batches [images, labels] as a DataLoader's, in the sampler's order."""

    def __init__(self, dataset, loader, sampler, batch_size, drop_last, device):
        self.dataset, self.loader, self.sampler, self.batch_size = dataset, loader, sampler, batch_size
        self.drop_last, self.device = drop_last, device
        if loader is None:
            self.images, self.labels = dataset.images.to(device), dataset.labels.to(device)

    def __len__(self):
        if self.loader is not None:
            return len(self.loader)
        return len(self.sampler) // self.batch_size if self.drop_last else -(-len(self.sampler) // self.batch_size)

    def __iter__(self):
        if self.loader is not None:
            pinned = self.loader.pin_memory
            for images, labels in self.loader:
                yield [self.dataset.to_float(images.to(self.device, non_blocking=pinned)), labels]
            return
        order = torch.tensor(list(self.sampler)).to(self.device, non_blocking=True)  # once an epoch
        end = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
        for k in range(0, end, self.batch_size):
            batch = order[k:k + self.batch_size]
            yield [self.dataset.to_float(self.images.index_select(0, batch)), self.labels.index_select(0, batch)]


class Run:
    """One training run, so that a script's main() shows the GAN and little else. It joins
    torchrun's processes, prepares --out, builds the resumable DataLoader, loads a resumed run's
    state (keep), and its enumerate() is the chapter's enumerate(dataloader, 0) that also resumes
    mid-epoch, writes losses.csv at log lines, stops after Ctrl-C, SIGTERM or --max-steps, and
    saves the checkpoint at each epoch's end and at a stop. finish() writes the end's files."""

    def __init__(self, script, args, ckpt, device):
        global _RUN, _QUITTING
        _QUITTING = False
        self.script, self.args, self.ckpt, self.out = script, args, ckpt, args.out
        self.device, self.rank, self.size, self._group = init_processes(device)
        self.iters = ckpt["iters"] if ckpt else 0
        self.rows = [list(r) for r in ckpt["history"]] if ckpt else []  # losses.csv so far
        self.stopped, self.fake, self._signals = False, None, {}
        self.pinned = self.device.type == "cuda"  # batches in pinned memory: non_blocking copies
        self._nan = None  # on the device: whether netD has output a NaN (see keep)
        self.interrupted = self.signalled = False  # a signal here; one on any torchrun process
        self._columns, self._pending, self._started, self._csv, self._nrow = None, [], False, "w", 8
        self._state, self._silent = {}, 0  # _silent: log lines in a row where no gradient flowed
        self._votes = None  # torchrun: the Ctrl-C vote in flight (_vote)
        self._lock = _prepare_out(self.out, args.resume, self.iters if ckpt else None)
        _RUN = self
        if hasattr(sys.stdout, "reconfigure"):  # each log line shows at once, in a pipe or a file too
            sys.stdout.reconfigure(line_buffering=True)
        print(f"Device: {self.device}")

    def dataloader(self, dataset, batch_size, num_workers=None, drop_last=False):
        """DataLoader(dataset, batch_size, shuffle=True, num_workers), but shuffled by (seed,
        epoch) so that a resume can skip what it has seen, each torchrun process on its own
        share; pinned memory for CUDA, the workers kept from epoch to epoch. An image folder
        is read from its decoded cache (unless --no-cache); Images come a batch at a time
        (Batches), on CUDA from GPU memory where they fit."""
        decoders = min(4, os.cpu_count() or 1) if num_workers is None else num_workers
        if isinstance(dataset, dset.ImageFolder) and not self.args.no_cache:
            dataset = decoded_cache(dataset, decoders) or dataset
        sampler = EpochSampler(dataset, self.args.seed, self.rank, self.size)
        images = isinstance(dataset, Images)
        if num_workers is None:  # (--workers not given) decoding JPEGs wants workers; a batch
            num_workers = 0 if images else decoders  # of one array, one indexing, does not
        # on CUDA the whole array in GPU memory, where it takes a modest share of what is free
        on_gpu = images and self.device.type == "cuda" and dataset.images.nbytes < (
            torch.cuda.mem_get_info(self.device)[0] * GPU_SHARE)
        loader = None if on_gpu else torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
            drop_last=drop_last, pin_memory=self.pinned, collate_fn=_as_batch if images else None,
            persistent_workers=num_workers > 0, worker_init_fn=_worker_init,
            generator=torch.Generator().manual_seed(0))  # worker seeds: the global RNG stays alone
        if images:
            loader = Batches(dataset, loader, sampler, batch_size, drop_last, self.device)
        if len(loader) == 0:
            raise UserError(f"the dataset has {len(dataset)} images, fewer than one batch "
                            f"(--batch-size {batch_size}): use a smaller --batch-size")
        classes = len(getattr(dataset, "classes", ()))
        print(f"Dataset: {self.args.dataset}, {len(dataset)} images"
              + (f" in {classes} classes" if classes > 1 else "")
              + f", {len(loader)} batches of {batch_size} per epoch"
              + (f", all in {self.device}'s memory" if on_gpu else ""))
        if self.size > 1:
            print(f"torchrun: {self.size} processes, each on its own shard of the data with "
                  f"batches of {batch_size}: a global batch of {self.size * batch_size}")
        return loader

    def parallel(self, model):
        """torchrun: DistributedDataParallel (backward averages the processes' gradients, so
        their copies take the same steps); alone, the model itself."""
        if self._group is None:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def keep(self, sample, nrow=8, **state):
        """What the checkpoint holds (models, optimizers, tensors, by name); a resumed run's are
        loaded back into them here, with the random generators. sample() gives G's images of the
        fixed noise, for the snapshot at a stop and for real_vs_fake.png."""
        self._state, self._sample, self._nrow = state, sample, nrow
        if "netD" in state:
            unwrap(state["netD"]).register_forward_hook(self._no_nan)
        for name, x in state.items() if self.ckpt else ():
            if isinstance(x, torch.nn.Module):
                load_state(unwrap(x), self.ckpt.get(name), name, self.args.resume)
                continue
            try:
                if torch.is_tensor(x):
                    x.copy_(self.ckpt[name])
                elif hasattr(x, "load_state_dict"):
                    x.load_state_dict(self.ckpt[name])
            except (KeyError, ValueError, TypeError, RuntimeError, AttributeError, IndexError):
                raise incomplete(self.args.resume, self.script, f"its {name} is missing or does not fit") from None
        try:
            if self.ckpt:
                set_rng_state(self.ckpt["rng"], self.device)
        except (KeyError, ValueError, TypeError, RuntimeError):
            raise incomplete(self.args.resume, self.script, "its rng is not a random state") from None
        if self.rank > 0:  # torchrun: each process draws its own noise from here on
            torch.manual_seed(self.args.seed + self.rank + 1000003 * self.iters)

    def _no_nan(self, module, inputs, output):
        """netD's output, a NaN replaced: BCELoss refuses one, and on CUDA with a device-side
        assert that ends the process before any message. Noted on the device (no wait for it),
        so the next check stops the run with the reason."""
        nan = output.isnan()
        self._nan = nan.any() if self._nan is None else self._nan | nan.any()
        return output.masked_fill(nan, 0.5)

    def enumerate(self, dataloader, epoch, per_step=None):
        """enumerate(dataloader, 0) over one epoch; with per_step k, (i, the batch iterator) for
        k batches an iteration (01's k, 04's n_critic). A resumed run's past epochs yield
        nothing, and neither do the epochs after a stop."""
        single, per_step = per_step is None, per_step or 1
        n = len(dataloader) // per_step  # iterations per epoch
        if not self._started:
            self._start(n, per_step, dataloader.batch_size)
        if self.stopped or epoch < self.iters // n:
            return
        start = self.iters - epoch * n
        dataloader.sampler.set_epoch(epoch, start=start * per_step * dataloader.batch_size)
        batches = iter(dataloader)
        for i in range(start, n):
            self._at = [epoch, i, self.iters]
            yield (i, next(batches)) if single else (i, batches)
            self.iters += 1
            if i % self.args.log_every == 0:
                self.flush()
            # alone: stop at a signal now; under torchrun, when all processes have its vote
            self.signalled = self.interrupted if self._group is None else self._vote()
            if self.signalled or self.iters == self.args.max_steps:
                self.stopped = True
                break
        if self._votes is not None:  # torchrun: the epoch's last vote, counted before it ends
            self.signalled = self.signalled or self._vote(again=False)
            self.stopped = self.stopped or bool(self.signalled)
        self.save()  # the end of an epoch, or a stop: a resumed run goes on from here exactly
        if self.stopped and not os.path.exists(self._snapshot_path(self.iters - 1)):
            self.snapshot(self._sample(), self.iters - 1)

    def _vote(self, again=True):
        """torchrun: whether any process has had a signal (Ctrl-C, SIGTERM), agreed without
        waiting: the vote cast here (an all_reduce on the Gloo group, in the background) is
        counted at the next call, an iteration later, when it has long arrived. Every process
        counts the same votes at the same iteration, so all stop there together."""
        counted = False
        if self._votes is not None:
            stop, work = self._votes
            work.wait()
            counted = bool(stop)  # a CPU tensor: no wait for the GPU
        now = self.interrupted  # read once: a signal may come at any line
        self._votes = None
        if again and not counted:
            stop = torch.tensor([int(bool(now))])
            self._votes = (stop, dist.all_reduce(stop, op=dist.ReduceOp.MAX, group=self._group,
                                                 async_op=True))
        return (now or "a signal") if counted else False

    def _start(self, n, per_step, batch_size):
        if n == 0:
            raise UserError(f"an epoch has fewer than the {per_step} batches of --batch-size "
                            f"{batch_size} one iteration takes: use a smaller --batch-size")
        epoch, i = divmod(self.iters, n)
        if epoch >= self.args.epochs or (self.args.max_steps and self.iters >= self.args.max_steps):
            flag = "--epochs" if epoch >= self.args.epochs else "--max-steps"
            raise UserError(f"{self.args.resume} has done {self.iters} iterations ({epoch} epochs) "
                            f"already: pass a larger {flag} to go on")
        if self.iters:
            print(f"Resuming {self.args.resume}: epoch {epoch}, iteration {i} of {n}")
        self._started, self._rate = True, (self.iters, time.perf_counter())
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._signals[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame):
        """The first Ctrl-C (or a scheduler's SIGTERM) lets the iteration finish, then the run
        saves and stops; a second Ctrl-C quits at once. One within a second of the first is the
        same press passed on by a launcher (torchrun's agent forwards the terminal's)."""
        global _QUITTING
        if self.interrupted:
            if signum == signal.SIGINT and time.monotonic() - self._interrupted_at > 1:
                _QUITTING = True  # (for save_checkpoint: torch.save turns it into a RuntimeError)
                raise KeyboardInterrupt
            return
        self.interrupted = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        self._interrupted_at = time.monotonic()
        # Straight to the terminal: the signal may have come in the middle of a print, and
        # sys.stdout cannot be entered again from inside its own write
        if _MAIN:
            with contextlib.suppress(OSError):
                os.write(2, f"\n{self.interrupted}: finishing this iteration, then saving a checkpoint "
                         "(press Ctrl-C again to quit without saving)\n".encode())

    def release(self):
        """The signal handlers back, and the run folder's lock."""
        while self._signals:
            signal.signal(*self._signals.popitem())
        if self._lock:
            _unlock(self._lock)

    def append(self, **values):
        """One iteration's numbers, a row of losses.csv. They wait on the device until the next
        log line: an .item() every iteration would make the CPU wait for the GPU each time."""
        self._columns = self._columns or ["epoch", "i", "iters", *values]
        self._pending.append((self._at, torch.stack([v.detach().float() for v in values.values()])))

    def flush(self):
        """The pending rows into losses.csv, in one transfer; a NaN or inf stops the run."""
        if not self._pending:
            return
        values = torch.stack([v for _, v in self._pending]).tolist()  # the one host sync
        new = [at + v for (at, _), v in zip(self._pending, values)]
        if _MAIN:  # the first write also has the header and a resumed run's rows
            with open(os.path.join(self.out, "losses.csv"), self._csv, newline="") as f:
                csv.writer(f).writerows(([self._columns] + self.rows) * (self._csv == "w") + new)
        self._pending, self.rows, self._csv = [], self.rows + new, "a"
        self._check(new)

    def _check(self, new=()):
        """Stop a run that has diverged (docs/shared.md, When a run diverges): a number that is
        not finite in the new rows, netD's output, the weights, their gradients or the
        optimizers' state; losses past LOSS_LIMIT for a whole log interval; or every gradient of
        G and D exactly zero at two log lines in a row (D's Sigmoid saturated: nothing can learn
        any more). Under torchrun all processes reach the same verdict before any stops."""
        said = lambda r: ", ".join(f"{k} {v:.4g}" for k, v in zip(self._columns[3:], r[3:]))
        bad = next((r for r in new if not all(math.isfinite(x) for x in r[3:])), None)
        tensors = [t for x in self._state.values() for t in _tensors(x)]
        grads = [p.grad for x in self._state.values() if isinstance(x, torch.nn.Module)
                 for p in x.parameters() if p.grad is not None]
        finite, silent, nan = torch.stack([  # one transfer for all
            _all([t.isfinite() for t in tensors], self.device, True),
            _all([g == 0 for g in grads], self.device, False),
            _all([self._nan] if self._nan is not None else [], self.device, False)]).tolist()
        losses = [k for k, c in enumerate(self._columns or ()) if c.startswith("Loss_")]
        if new:
            self._silent = self._silent + 1 if silent else 0
        problems = [  # the first that holds is the verdict
            (bad is not None, lambda: f"a loss became NaN or infinite at iteration {bad[2]} ({said(bad)})"),
            (nan, lambda: "D's output became NaN"),
            (not finite, lambda: "the weights or the optimizers' state became NaN or infinite by "
             f"iteration {self.iters}"),
            (new and all(any(abs(r[k]) > LOSS_LIMIT for k in losses) for r in new),
             lambda: f"the losses stayed beyond {LOSS_LIMIT:g} for {len(new)} iterations "
             f"(iteration {new[-1][2]}: {said(new[-1])})"),
            (self._silent >= 2, lambda: "no gradient reached G or D for a whole log interval "
             f"(iteration {new[-1][2]}: {said(new[-1])}): D's outputs are stuck at exactly 0 or 1, "
             "where its Sigmoid passes nothing back (§12.7.1's vanishing gradients)")]
        why = next((what() for holds, what in problems if holds), None)
        if self._group is not None:  # the losses differ between processes: all stop, or none
            whys = [None] * self.size
            dist.all_gather_object(whys, why, group=self._group)
            why = next((w for w in whys if w), None)
        if why:
            raise diverged(self.out, why)

    def column(self, name):
        """A column of losses.csv, the whole run's: G_losses, D_losses..."""
        self.flush()
        return [r[self._columns.index(name)] for r in self.rows]

    def speed(self):
        """Iterations per second since the last call, for the log line."""
        (iters, then), now = self._rate, time.perf_counter()
        self._rate = (self.iters + 1, now)
        return "%.2f it/s" % ((self.iters + 1 - iters) / max(now - then, 1e-9))

    def save(self):
        self.flush()  # raises on divergence, so a bad state never replaces a good checkpoint
        self._check()
        save_checkpoint({
            "script": self.script, "args": vars(self.args), "iters": self.iters,
            "history": self.rows, "rng": rng_state(self.device),
            **{k: _cpu(unwrap(x).state_dict() if hasattr(x, "state_dict") else x)
               for k, x in self._state.items()}}, os.path.join(self.out, "checkpoint.pt"))

    def _snapshot_path(self, iters):
        return os.path.join(self.out, f"fake_samples_{iters:06d}.png")

    def snapshot(self, fake, iters):
        """G's images of the fixed noise at this iteration: the chapter's img_list, as files."""
        self.fake = fake
        save_grid(fake, self._snapshot_path(iters), nrow=self._nrow)

    def finish(self, real, curves, title):
        """netG.pt (the generator alone), the loss plot, progress.gif, real_vs_fake.png, and
        where they went. Returns the exit status: 130 after Ctrl-C, else 0."""
        save_checkpoint(_cpu(unwrap(self._state["netG"]).state_dict()), os.path.join(self.out, "netG.pt"))
        plotted = _MAIN and plot_losses(curves, title, os.path.join(self.out, "losses.png"))
        write_gif(self.out, os.path.join(self.out, "progress.gif"))
        fake = self.fake if self.fake is not None else self._sample()
        save_real_vs_fake(real, fake, os.path.join(self.out, "real_vs_fake.png"), self._nrow)
        print(f"Wrote {self.out}/: real_samples.png, fake_samples_*.png, progress.gif, "
              f"real_vs_fake.png, losses.csv, {'losses.png, ' * bool(plotted)}checkpoint.pt, netG.pt")
        if self.signalled:
            print(f"Stopped by {self.signalled} after {self.iters} iterations. Go on with: "
                  f"python {self.script}.py --resume {shlex.quote(os.path.join(self.out, 'checkpoint.pt'))}")
        self.release()
        return 130 if self.signalled else 0


def make_folder(out):
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot make the folder {out}: {e.strerror or e}. Pass --out DIR "
                        "for a folder that can be written") from None


def _prepare_out(out, resume, resume_iters):
    """The run folder is this run's alone: made, locked, and refused when it holds another run's
    checkpoint. Snapshots the checkpoint does not cover (a previous attempt's) are removed, so
    progress.gif shows this run only."""
    if not _MAIN:
        return None
    make_folder(out)
    lock = _lock(out)
    ckpt = os.path.join(out, "checkpoint.pt")
    if os.path.exists(ckpt) and not (resume and os.path.samefile(ckpt, resume)):
        _unlock(lock)
        if resume:
            raise UserError(f"--out {out} holds another run's checkpoint.pt: resume into the "
                            f"checkpoint's own folder (leave out --out), or pass an --out without one")
        raise UserError(f"{out} already holds a run's checkpoint.pt. Continue it with --resume "
                        f"{ckpt}, or write the new run elsewhere with --out DIR (or delete {out})")
    for path in glob.glob(os.path.join(out, "fake_samples_*.png")):
        if resume_iters is None or _snapshot_iter(path) >= resume_iters:
            os.remove(path)
    for path in glob.glob(os.path.join(out, "*.pt.tmp*")):  # of a run killed while saving: the
        os.remove(path)                                     # lock says none is alive
    return lock


_HELD = {}  # the .lock files this process holds, open and locked


def _try_lock(f):
    try:
        if fcntl:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:  # a byte far past the PID, which stays readable
            f.seek(2**20)
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        return True
    except OSError:
        return False


def _lock(out):
    """Take out/.lock: a lock the system holds for its process and frees when it ends, however
    it ends (so it is never stale), in a file that names the process; refused while another
    holds it. This process's own (main() called again) is taken back."""
    path = os.path.realpath(os.path.join(out, ".lock"))
    while path not in _HELD:
        f = open(path, "a+")
        if not _try_lock(f):
            f.seek(0)
            pid = f.read().strip() or "starting"
            f.close()
            raise UserError(f"{out} is in use by another run (process {pid}): wait for it to end, "
                            "or write this run elsewhere with --out DIR")
        with contextlib.suppress(OSError):  # not removed by its last owner since we opened it
            if os.path.samestat(os.fstat(f.fileno()), os.stat(path)):
                f.seek(0)
                f.truncate()
                f.write(str(os.getpid()))
                f.flush()
                _HELD[path] = f
                break
        f.close()
    return path


def _unlock(path):
    f = _HELD.pop(path, None)
    if f is not None:
        with contextlib.suppress(OSError):
            os.remove(path)  # while still locked: a process waiting on this file then sees it gone
        f.close()


@contextlib.contextmanager
def locked(out):
    """out's lock, held inside (or kept, where this process holds it already)."""
    held = os.path.realpath(os.path.join(out, ".lock")) in _HELD
    lock = _lock(out)
    try:
        yield
    finally:
        if not held:
            _unlock(lock)


def _snapshot_iter(path):
    return int(os.path.basename(path)[len("fake_samples_"):-len(".png")])


# --- Checkpoints -------------------------------------------------------------------------------
def rng_state(device):
    """The random generators a resumed run continues from (noise is drawn on `device`)."""
    gpu = {"cuda": torch.cuda, "mps": torch.mps}.get(device.type)
    return {"cpu": torch.get_rng_state(), "device_type": device.type,
            "device": gpu.get_rng_state() if gpu else None}


def set_rng_state(state, device):
    torch.set_rng_state(state["cpu"])
    gpu = {"cuda": torch.cuda, "mps": torch.mps}.get(device.type)
    if gpu and state["device"] is not None and state["device_type"] == device.type:
        gpu.set_rng_state(state["device"])  # (from another kind of device: its own seed goes on)


def _cpu(state):
    """A state_dict (nested dicts and lists of tensors) on the CPU, so that a checkpoint written
    on a GPU loads anywhere, as the chapter's parameters_netG.pt does."""
    if torch.is_tensor(state):
        return state.cpu()
    if isinstance(state, dict):
        return {k: _cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_cpu(v) for v in state)
    return state


_QUITTING = False  # a second Ctrl-C has come: whatever torch.save makes of it, quit


def save_checkpoint(ckpt, path):
    """Atomic: a crash, a full disk or Ctrl-C during the write leaves the previous file intact
    and no temporary one. Under torchrun, rank 0 alone writes."""
    if not _MAIN:
        return
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if _QUITTING or isinstance(e, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        if not isinstance(e, (OSError, RuntimeError)):  # torch's zip writer says RuntimeError
            raise
        folder = os.path.dirname(path) or "."
        full = getattr(e, "errno", None) == errno.ENOSPC or shutil.disk_usage(folder).free < 2**20
        why = f"no space left on the disk of {folder}" if full else f"cannot write {path}: {e}"
        raise UserError(f"{why} ({os.path.basename(path)} as it was before is kept)") from None


def incomplete(path, script, why):
    return UserError(f"{path} is not a complete checkpoint of {script}.py ({why})")


def load_checkpoint(path, script, allow_state_dict=False):
    """torch.load(weights_only=True) with a clear error for every way it can go wrong; with
    allow_state_dict, a bare generator state_dict (netG.pt) comes back as {"netG": it}.
    script None (evaluate.py): any script's checkpoint."""
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}: train first (python "
                        f"{script or '<script>'}.py ...), or pass the right path")
    damaged = "not a file that torch.save wrote, or one cut short"
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive (a cut one is none)
        raise UserError(f"{path} is not a checkpoint this script can read: {damaged}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # weights_only refused a Python object
        raise UserError(f"{path} is not a checkpoint this script can read: it holds Python objects "
                        "other than tensors and plain values, which are not loaded: loading them "
                        "could run any code") from None
    except Exception:  # a damaged archive
        raise UserError(f"{path} is not a checkpoint this script can read: {damaged}") from None
    if isinstance(ckpt, dict) and "script" in ckpt:
        if script and ckpt["script"] != script:
            raise UserError(f"{path} was written by {ckpt['script']}.py, not {script}.py: "
                            f"use python {ckpt['script']}.py with it")
        kinds = {"args": dict, "iters": int, "history": list, "rng": dict, "netG": dict}
        wrong = [k for k, kind in kinds.items() if not isinstance(ckpt.get(k), kind)]
        if wrong or ckpt["iters"] < 0 or not all(torch.is_tensor(v) for v in ckpt["netG"].values()):
            raise incomplete(path, ckpt["script"], "no " + ", ".join(wrong) if wrong else "its netG or "
                             "iters is not what a run saves")
        return ckpt
    if allow_state_dict and isinstance(ckpt, dict) and ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
        return {"netG": ckpt}
    raise UserError(f"{path} is not a checkpoint of {script + '.py' if script else 'these scripts'}")


def load_state(module, state, what, path):
    """module.load_state_dict with a clear error when the sizes do not match, or the weights
    are not finite (they would give blank images, or a run that stops at once)."""
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a complete checkpoint: its {what} is missing or not a model's state")
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as e:
        detail = str(e).strip().splitlines() or [type(e).__name__]
        raise UserError(f"{path}: {what} does not fit this model ({detail[-1].strip()}). "
                        "Were the sizes (--nz, --ngf, --ndf, --dataset) different?") from None
    if not all(t.isfinite().all() for t in state.values() if torch.is_tensor(t) and t.is_floating_point()):
        raise UserError(f"{path}: the weights of {what} are not finite (NaN or infinite): the run that "
                        "wrote them had diverged; use an earlier checkpoint")


# --- Pictures ----------------------------------------------------------------------------------
def save_grid(images, path, nrow=8):
    """Images in [-1, 1] as a PNG grid, on a fixed range rather than the batch's min and max, so
    one image's brightness never depends on the others."""
    if _MAIN:
        vutils.save_image(images, path, nrow=nrow, padding=2, normalize=True, value_range=(-1, 1))


def save_real_vs_fake(real, fake, path, fake_nrow=8):
    """§12.4.5 "Real Images vs. Fake Images": the two grids side by side, a white gap between."""
    if not _MAIN:
        return
    a = vutils.make_grid(real.cpu(), padding=2, normalize=True, value_range=(-1, 1))
    b = vutils.make_grid(fake, nrow=fake_nrow, padding=2, normalize=True, value_range=(-1, 1))
    h = max(a.shape[1], b.shape[1])
    pad = lambda g: torch.nn.functional.pad(g, (0, 0, 0, h - g.shape[1]), value=1.0)
    vutils.save_image(torch.cat([pad(a), torch.ones(3, h, 16), pad(b)], dim=2), path)


GRID_MAX = 1024  # --generate: up to this many images, one grid; more, one PNG each


def save_generated(out, n, batches, nrow=None):
    """--generate's n images, from `batches` (tensors in [-1, 1]): up to GRID_MAX, one grid in
    generated.png; more, each image its own PNG in generated/, written as it comes, so memory
    holds one batch at a time at any n; a larger earlier run's images past n are removed (so the
    folder is these n, for evaluate.py too). Returns where they went."""
    make_folder(out)
    with locked(out):  # not into the folder of a run that is writing there
        return _save_generated(out, n, batches, nrow)


def _save_generated(out, n, batches, nrow):
    if n <= GRID_MAX:
        path = os.path.join(out, "generated.png")
        save_grid(torch.cat(list(batches)), path, nrow=nrow or math.ceil(math.sqrt(n)))
        return path
    folder = os.path.join(out, "generated")
    make_folder(folder)
    k = 0
    for fake in batches:
        for image in fake:
            save_grid(image, os.path.join(folder, f"{k:07d}.png"))
            k += 1
    for path in glob.glob(os.path.join(folder, "[0-9]" * 7 + ".png")):
        if int(os.path.basename(path)[:7]) >= n:
            os.remove(path)
    return folder + "/"


def save_walks(out, k, batches):
    """--generate N --walk K: the N images of `batches` (tensors in [-1, 1]), walk after walk, K
    each, as walk.png (a walk a row) and walk.gif, whose frame j is step j of every walk, as a
    grid, there and back. Returns the two paths."""
    make_folder(out)
    paths = os.path.join(out, "walk.png"), os.path.join(out, "walk.gif")
    with locked(out):  # not into the folder of a run that is writing there
        images = torch.cat(list(batches))
        save_grid(images, paths[0], nrow=k)
        frames = []
        for step in images.view(-1, k, *images.shape[1:]).transpose(0, 1):  # step j of every walk
            grid = vutils.make_grid(step, nrow=math.ceil(math.sqrt(len(step))), padding=2,
                                    normalize=True, value_range=(-1, 1))
            # to 8 bits as save_grid's PNGs are (torchvision's save_image)
            frames.append(Image.fromarray(grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0)
                                          .to(torch.uint8).numpy()))
        frames += frames[-2:0:-1]  # and back, the ends not shown twice
        frames[0].save(paths[1], save_all=True, append_images=frames[1:], duration=150, loop=0)
    return paths


def write_gif(out, path):
    """§12.4.5's animation of G's progression, as a file: every fake_samples_*.png in order."""
    files = sorted(glob.glob(os.path.join(out, "fake_samples_*.png")), key=_snapshot_iter)
    if files and _MAIN:
        frames = [Image.open(f).convert("RGB") for f in files]
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=1000, loop=0)


def plot_losses(curves, title, path):
    """The chapter's loss plot (§12.4.5) where matplotlib is installed; it is optional."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return print("matplotlib is not installed, so there is no losses.png "
                     "(pip install matplotlib); losses.csv has the numbers")  # (None: not plotted)
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
