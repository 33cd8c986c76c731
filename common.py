"""Plumbing of the four training scripts (and sample.py, evaluate.py): the command line, the
datasets' clear errors, checkpoints, the run folder, torchrun, and `Run`, which logs, saves and
stops a run. Nothing here changes a model or what it computes: the GANs are in the scripts."""
import argparse
import contextlib
import csv
import errno
import glob
import math
import os
import shlex
import shutil
import signal
import sys
import time

import torch
import torch.distributed as dist
import torch.utils.data
import torchvision.datasets as dset
import torchvision.transforms as T
import torchvision.utils as vutils
from PIL import Image

try:
    import fcntl  # the run folder's lock; where it is missing (Windows) a folder is not locked
except ImportError:
    fcntl = None

FAKE_SIZE = 1000  # --dataset fake: torchvision FakeData's own default size
IN_MEMORY = 2**30  # bytes: a dataset whose transformed images fit is kept in memory
FIXED = (T.Resize, T.CenterCrop, T.Grayscale, T.ToTensor, T.Normalize)  # the same pixels every epoch
FREE_ON_RESUME = {"epochs", "out", "dataroot", "workers", "log_every", "sample_every"}  # others: the run's
PER_INVOCATION = {"resume", "max_steps", "device"}  # never taken from a checkpoint
DIVERGED = "training stopped; checkpoint.pt, if any, is kept. Try a lower --lr (docs/shared.md, Troubleshooting)"
_RUN = None  # this process's Run, once it holds its folder: cli() lets go of it
_QUITTING = False  # a second Ctrl-C has come: whatever torch.save makes of it, quit


class UserError(Exception):
    """Something the user can fix: cli() prints it without a traceback and exits with 1."""


def cli(main, argv=None):
    """main(argv) as a command: a user error is one line and exit status 1; Ctrl-C or SIGTERM
    before the training loop (which saves on them) quits with 130."""
    global _RUN
    status = 1
    sigterm = signal.signal(signal.SIGTERM, signal.default_int_handler)  # as Ctrl-C
    try:
        status = main(argv)
    except UserError as e:  # (sys.exit of a text prints it to stderr and exits with 1)
        status = f"error: {e}"
        if "Original Traceback" in status:  # raised in a DataLoader worker: its message is the last line
            status = "error: " + status.strip().splitlines()[-1].split(": ", 1)[-1]
    except OSError as e:  # the file system refused: read-only, full, a file where a folder goes
        status = f"error: {e}"
    except (MemoryError, torch.cuda.OutOfMemoryError) as e:
        status = f"error: out of memory ({str(e)[:200]}): use a smaller --batch-size, or smaller sizes"
    except KeyboardInterrupt:  # the second Ctrl-C, or a signal before the training loop
        print("interrupted", file=sys.stderr)
        status = 130
    finally:
        signal.signal(signal.SIGTERM, sigterm)
        if _RUN is not None:
            _RUN.release(failed=status != 0)
            _RUN = None
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    sys.exit(status)


# --- Command line ------------------------------------------------------------------------------
def checked(kind, ok, says):
    """An argparse type: kind(text), refused with `says` where ok(value) is false."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{says}, got {text}")
        return value
    return parse


positive_int = checked(int, lambda v: v >= 1, "must be a positive whole number")
positive_float = checked(float, lambda v: 0 < v <= 1e30, "must be a positive number up to 1e30")
seed = checked(int, lambda v: 0 <= v < 2**32, "must be a whole number from 0 to 2**32 - 1")
beta = checked(float, lambda v: 0 <= v < 1, "must be in [0, 1)")
non_negative_int = checked(int, lambda v: v >= 0, "must be 0 or more")
non_negative = checked(float, lambda v: v >= 0 and math.isfinite(v), "must be 0 or more")  # 04's λ
unit_value = checked(float, lambda v: 0 < v <= 1, "must be in (0, 1]")  # 01's --smooth, 04's --clip


def make_parser(doc, datasets, lr_said=None, **defaults):
    """The flags all scripts share (CONVENTIONS.md): those the script gives a default, its document's."""
    p = argparse.ArgumentParser(description=doc, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)

    def add(flag, help, said="%(default)s", **kw):
        dest = flag[2:].replace("-", "_")
        if dest in defaults:
            p.add_argument(flag, default=defaults[dest], help=f"{help} (default: {said})", **kw)

    add("--dataset", "which data to train on", choices=datasets)
    add("--dataroot", "the datasets' folder: DIR/MNIST, DIR/celeba/img_align_celeba, ...", metavar="DIR")
    p.add_argument("--out", metavar="DIR", help="where the run writes (default: runs/<script>-<dataset>)")
    add("--epochs", "number of training epochs", type=positive_int, metavar="N")
    add("--batch-size", "batch size during training", type=positive_int, metavar="N")
    add("--lr", "learning rate of both optimizers", lr_said or "%(default)s", type=positive_float)
    add("--beta1", "beta1 of Adam", type=beta)
    add("--beta2", "beta2 of Adam", type=beta)
    add("--nz", "size of the latent vector z", type=positive_int, metavar="N")
    add("--ngf", "size of the feature maps in the generator", type=positive_int, metavar="N")
    add("--ndf", "size of the feature maps in the discriminator", type=positive_int, metavar="N")
    add("--workers", "DataLoader workers", "0 in memory, else min(4, CPUs)", type=non_negative_int, metavar="N")
    add("--seed", "random seed", type=seed)
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"],
                   help="auto: cuda, else mps, else cpu (default: auto)")
    add("--log-every", "iterations between log lines", type=positive_int, metavar="N")
    add("--sample-every", "iterations between fixed-noise snapshots", type=positive_int, metavar="N")
    p.add_argument("--max-steps", type=positive_int, metavar="N", help="stop after N iterations in all")
    p.add_argument("--resume", metavar="PATH", help="continue the run saved in this checkpoint")
    return p


def check_device(device):
    """--device cuda or mps where there is none: one line; auto: a warning where torch misses an NVIDIA GPU."""
    this = f"this torch ({torch.__version__}, {'CUDA ' + torch.version.cuda if torch.version.cuda else 'CPU-only'})"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device cuda: {this} cannot use a GPU here (README, Your torch)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps: MPS (Apple GPU) is not available here; use --device cpu or auto")
    if device == "auto" and not torch.cuda.is_available() and shutil.which("nvidia-smi"):
        print(f"Warning: this machine has an NVIDIA GPU, and {this} cannot use it: training on the "
              "CPU, 50 to 100 times slower (README, Your torch, says which torch fits)", flush=True)


def get_args(parser, argv, script):
    """The command line; with --resume also the checkpoint, whose run's settings it takes (a
    flag that contradicts one is an error). Returns (args, checkpoint or None)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    check_device(args.device)
    ckpt = load_checkpoint(args.resume, script) if args.resume else None
    if ckpt:
        args.out = args.out or os.path.dirname(args.resume) or "."
        given = {a.dest for a in parser._actions for s in a.option_strings
                 if any(x == s or x.startswith(s + "=") for x in argv)}
        for key, value in ckpt["args"].items():
            if key in PER_INVOCATION or key == "out" or not hasattr(args, key):
                continue
            if key not in given:
                setattr(args, key, value)
            elif key not in FREE_ON_RESUME and getattr(args, key) != value:
                raise UserError(f"the checkpoint's run has --{key.replace('_', '-')} {value}, and that "
                                "stays with it: drop the flag (or start a new run for new settings)")
    args.out = args.out or f"runs/{script}-{args.dataset}"
    return args, ckpt


# --- Data --------------------------------------------------------------------------------------
CELEBA_HELP = """CelebA not found in {root}: {problem}. The chapter's layout (§12.4.1) is
{root}/img_align_celeba/000001.jpg ... (directly in {root} is one level too shallow). Get
img_align_celeba.zip (https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html, or Kaggle's "celeba-dataset"),
then: mkdir -p {root} && unzip img_align_celeba.zip -d {root}"""
DOWNLOAD_HELP = """could not download or read {name} in {folder}: {reason}
Without internet, put the files there by hand: {files}. If they are there and damaged, delete
{folder} to download them again. Or pass --dataroot DIR for a folder that holds them."""


def read_image(path):
    """ImageFolder's loader (PIL, RGB), with the file's name in the error."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot read image {path}: {e}. Remove or replace it, and run again") from None


def load_dataset(name, dataroot, transform, image_shape, train=True):
    """The torchvision dataset of --dataset (fake: FakeData of image_shape), or a clear error."""
    if name in ("celeba", "folder"):
        root = os.path.join(dataroot, "celeba") if name == "celeba" else dataroot
        problem = "it does not exist"
        if os.path.isdir(root):
            try:
                return dset.ImageFolder(root=root, transform=transform, loader=read_image)
            except FileNotFoundError:
                problem = "it has no sub-folder with images (.jpg, .png, ...) in it"
                if any(f.lower().endswith(dset.folder.IMG_EXTENSIONS) for f in os.listdir(root)):
                    problem = "the images are directly in it, one level too shallow: move them into a sub-folder"
        raise UserError(CELEBA_HELP.format(root=root, problem=problem) if name == "celeba" else
                        f"--dataset folder: no images in {root}: {problem} (ImageFolder wants DIR/NAME/*.jpg)")
    if name == "fake":
        # FakeData seeds torch's generators for each image and gives back the CPU's alone: the
        # GPU's state is kept around it, so that --seed still decides the GPU's noise
        gpu = torch.cuda if torch.cuda.is_available() else torch.mps if torch.backends.mps.is_available() else None
        state = gpu.get_rng_state() if gpu else None
        dataset = in_memory(dset.FakeData(size=FAKE_SIZE, image_size=image_shape, transform=transform,
                                          random_offset=0 if train else FAKE_SIZE))
        if gpu:
            gpu.set_rng_state(state)
        return dataset
    cls = {"mnist": dset.MNIST, "fashion-mnist": dset.FashionMNIST, "cifar10": dset.CIFAR10}[name]
    folder = os.path.join(dataroot, "cifar-10-batches-py" if name == "cifar10" else cls.__name__)
    try:
        dataset = cls(root=dataroot, train=train, download=True, transform=transform)
    except (RuntimeError, OSError, ValueError, AssertionError, EOFError, IndexError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[-1]  # (torchvision's last word)
        files = ("cifar-10-python.tar.gz, unpacked into cifar-10-batches-py/" if name == "cifar10" else
                 f"the four train-/t10k- *-idx?-ubyte files, .gz or not, into {folder}/raw/")
        raise UserError(DOWNLOAD_HELP.format(name=cls.__name__, folder=folder, files=files, reason=reason)) from None
    return in_memory(dataset)


def in_memory(dataset):
    """The dataset through its transform once, into a TensorDataset: no PIL work per image per epoch.
    Not where it would take over IN_MEMORY bytes, or a step of the transform is random."""
    steps = getattr(dataset.transform, "transforms", [dataset.transform])
    size = len(dataset) * dataset[0][0].nelement() * 4  # bytes, in float32
    if not all(isinstance(s, FIXED) for s in steps) or size > IN_MEMORY:
        return dataset
    images, labels = zip(*torch.utils.data.DataLoader(dataset, batch_size=1000))
    kept = torch.utils.data.TensorDataset(torch.cat(images), torch.cat(labels))
    kept.classes = getattr(dataset, "classes", None) or [str(c) for c in range(dataset.num_classes)]
    return kept


class EpochSampler(torch.utils.data.distributed.DistributedSampler):
    """torch's DistributedSampler (shuffled by seed and epoch, a shard for each torchrun process),
    whose set_epoch(epoch, start) skips the first `start` indices: a resume in the middle of an epoch."""
    start = 0

    def set_epoch(self, epoch, start=0):
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self):  # (len() stays the epoch's: the loop counts its batches from there)
        return iter(list(super().__iter__())[self.start:])


def _worker_init(worker_id):
    # Ctrl-C and a scheduler's SIGTERM reach every process of the job, and the main process needs
    # its workers to finish the iteration; a second SIGTERM (the DataLoader's own) ends one.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: signal.signal(signal.SIGTERM, signal.SIG_DFL))


# --- Files, written whole or not at all --------------------------------------------------------
def is_main():
    """Alone, or torchrun's first process: the one that writes files."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def write_atomically(path, write, sync=False):
    """write(f) into a temporary file, renamed to path once whole: a full disk, a crash or a
    Ctrl-C in the middle leaves the earlier file as it was, and no temporary one."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            if sync:  # a checkpoint: on the disk itself before it replaces the last one
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        folder = os.path.dirname(path) or "."  # full? asked before the partial file frees space
        full = getattr(e, "errno", None) == errno.ENOSPC or (
            isinstance(e, RuntimeError) and os.path.isdir(folder) and shutil.disk_usage(folder).free < 2**20)
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if _QUITTING or isinstance(e, KeyboardInterrupt):  # (torch.save may turn it into a RuntimeError)
            raise KeyboardInterrupt from None
        if not isinstance(e, (OSError, RuntimeError)):  # torch's zip writer says RuntimeError
            raise
        why = f"no space left on the disk of {folder}" if full else f"cannot write {path}: {e}"
        raise UserError(f"{why} ({os.path.basename(path)} as it was before is kept)") from None


def lock(out):
    """out, made if need be, locked by an flock on out/.lock (not on Windows: no fcntl), refused while
    another process holds it. Returns the open .lock: closing it lets go, as does the process's end."""
    os.makedirs(out, exist_ok=True)
    f = open(os.path.join(out, ".lock"), "a")
    try:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise UserError(f"{out} is in use by another run: wait for it to end, or pass --out DIR") from None
    return f


# --- Checkpoints -------------------------------------------------------------------------------
def _cpu(state):
    """A state_dict (nested dicts and lists) on the CPU: a GPU's checkpoint loads anywhere."""
    if isinstance(state, dict):
        return {k: _cpu(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_cpu(v) for v in state]
    return state.cpu() if torch.is_tensor(state) else state


def save_checkpoint(ckpt, path):
    """torch.save, atomically; under torchrun the first process alone writes."""
    if is_main():
        write_atomically(path, lambda f: torch.save(ckpt, f), sync=True)


def load_checkpoint(path, script=None):
    """torch.load(weights_only=True), or a clear error; script None: any script's checkpoint."""
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}: train first, or pass the right path")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # (weights_only=True refuses Python objects)
        raise UserError(f"{path} is not a checkpoint this script can read: not a file that torch.save wrote, "
                        "one cut short, or one that holds Python objects (loading them could run any code)") from None
    if not (isinstance(ckpt, dict) and "script" in ckpt):
        raise UserError(f"{path} is not a checkpoint of {script + '.py' if script else 'these scripts'} "
                        "(a netG.pt holds a generator's weights alone: use the run's checkpoint.pt)")
    if script and ckpt["script"] != script:
        raise UserError(f"{path} was written by {ckpt['script']}.py: use python {ckpt['script']}.py with it")
    if not {"args", "iters", "history", "rng", "netG", "netD"} <= ckpt.keys():
        raise UserError(f"{path} is not a complete checkpoint of {ckpt['script']}.py (a part is missing)")
    return ckpt


# --- Pictures ----------------------------------------------------------------------------------
def save_grid(images, path, nrow=8):
    """Images in [-1, 1] as a PNG grid, on that fixed range, not the batch's min and max."""
    if is_main():
        write_atomically(path, lambda f: vutils.save_image(
            images, f, format="png", nrow=nrow, padding=2, normalize=True, value_range=(-1, 1)))


def save_real_vs_fake(real, fake, path, fake_nrow=8):
    """§12.4.5 "Real Images vs. Fake Images": the two grids side by side, a white gap between."""
    a = vutils.make_grid(real.cpu(), padding=2, normalize=True, value_range=(-1, 1))
    b = vutils.make_grid(fake, nrow=fake_nrow, padding=2, normalize=True, value_range=(-1, 1))
    h = max(a.shape[1], b.shape[1])
    a, b = (torch.nn.functional.pad(g, (0, 0, 0, h - g.shape[1]), value=1.0) for g in (a, b))
    if is_main():
        write_atomically(path, lambda f: vutils.save_image(torch.cat([a, torch.ones(3, h, 16), b], dim=2),
                                                           f, format="png"))


def save_gif(frames, path, duration):
    """PIL images as an animated GIF that loops."""
    if frames and is_main():
        write_atomically(path, lambda f: frames[0].save(f, format="gif", save_all=True,
                                                        append_images=frames[1:], duration=duration, loop=0))


def plot_losses(curves, title, path):
    """The chapter's loss plot (§12.4.5) where matplotlib is installed; it is optional."""
    try:
        from matplotlib.figure import Figure  # (not pyplot: no backend to pick, no window to close)
    except ImportError:  # (then the run's closing line leaves out losses.png)
        return False
    fig = Figure(figsize=(10, 5))
    ax = fig.subplots()
    for label, values in curves.items():
        ax.plot(values, label=label)
    ax.set(title=title, xlabel="iterations", ylabel="Loss")
    ax.legend()
    write_atomically(path, lambda f: fig.savefig(f, format="png"))
    return True


# --- torchrun, and the run --------------------------------------------------------------------
def init_processes(device):
    """Under torchrun, join its processes (NCCL on this process's GPU, Gloo on the CPU): (device, rank, size)."""
    if "LOCAL_RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return device, 0, 1
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    if not dist.is_initialized():  # (once per process: tests call main() again)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.get_rank() > 0:
        sys.stdout = open(os.devnull, "w")  # the first process alone prints (errors still show)
    return device, dist.get_rank(), dist.get_world_size()


def unwrap(model):
    """The model inside DistributedDataParallel (what checkpoints hold and samples come from)."""
    return getattr(model, "module", model)


class Run:
    """One training run: its folder, torchrun, the resumable DataLoader, the checkpoint, the
    losses, and the stop on Ctrl-C, SIGTERM or --max-steps (docs/shared.md, How a script is built)."""

    def __init__(self, script, args, ckpt, device):
        global _RUN, _QUITTING
        if _RUN is not None:  # a run of this process's that main() left without cli(): a notebook's
            _RUN.release()
        self.script, self.args, self.ckpt, self.out = script, args, ckpt, args.out
        self.device, self.rank, self.size = init_processes(device)
        self.iters = ckpt["iters"] if ckpt else 0
        self.rows = [list(r) for r in ckpt["history"]] if ckpt else []  # losses.csv so far
        self.pending, self.columns, self.csv_mode = [], None, "w"
        self.started = self.stopped = self.signal = False
        self.fake, self.nrow, self.state, self._handlers = None, 8, {}, {}
        self.lockfile, self.made = None, False  # (the folder's: only the first torchrun process takes it)
        self.pinned = self.device.type == "cuda"  # batches in pinned memory: copies that do not wait
        self.gpu = {"cuda": torch.cuda, "mps": torch.mps}.get(self.device.type)  # its random generator
        if is_main():  # the folder, locked, this run's alone
            self.made = not os.path.isdir(self.out)  # (a new run that fails before training takes it away)
            self.lockfile = lock(self.out)
            ckpt = os.path.join(self.out, "checkpoint.pt")
            if os.path.exists(ckpt) and not (args.resume and os.path.samefile(ckpt, args.resume)):
                self.release()
                raise UserError(f"{self.out} already holds a run's checkpoint.pt: continue that run with "
                                f"--resume {ckpt}, or write this one elsewhere with --out DIR")
        _RUN, _QUITTING = self, False
        if hasattr(sys.stdout, "reconfigure"):  # each log line shows at once, in a pipe or a file too
            sys.stdout.reconfigure(line_buffering=True)
        print(f"Device: {self.device}")

    def dataloader(self, dataset, batch_size, num_workers=None, drop_last=False):
        """The chapter's DataLoader(dataset, batch_size, shuffle=True, num_workers), resumable."""
        kept = isinstance(dataset, torch.utils.data.TensorDataset)  # (in_memory's)
        if num_workers is None:  # decoding images wants workers; a tensor in memory does not
            num_workers = 0 if kept else min(4, os.cpu_count() or 1)
        # drop_last: as many indices in each process, so that all take the same number of steps
        sampler = EpochSampler(dataset, self.size, self.rank, shuffle=True, seed=self.args.seed, drop_last=True)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
            drop_last=drop_last, pin_memory=self.pinned, persistent_workers=num_workers > 0,
            worker_init_fn=_worker_init,
            generator=torch.Generator().manual_seed(0))  # (the workers' seeds: the global one is left be)
        if len(loader) == 0:
            raise UserError(f"{len(dataset)} images are fewer than one batch: use a smaller --batch-size")
        print(f"Dataset: {self.args.dataset}, {len(dataset)} images{', in memory' * kept}, {len(loader)} batches "
              f"of {batch_size} per epoch" + (f" in each of {self.size} processes (torchrun)" * (self.size > 1)))
        return loader

    def parallel(self, model):
        """torchrun: DistributedDataParallel (backward averages the gradients); alone, model."""
        if self.size == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def keep(self, sample, nrow=8, **state):
        """What the checkpoint holds, by name; a resumed run's is loaded back into it here, with
        the random generators. sample(): G's fixed-noise images, for a stop and real_vs_fake."""
        self.state, self.sample, self.nrow = state, sample, nrow
        for name, x in state.items() if self.ckpt else ():  # (a plain value, such as 03's classes, stays)
            if torch.is_tensor(x):
                x.copy_(self.ckpt[name])
            elif hasattr(x, "load_state_dict"):  # the models (DDP's inner one) and the optimizers
                try:
                    unwrap(x).load_state_dict(self.ckpt[name])
                except (RuntimeError, ValueError, KeyError) as e:  # other sizes: the file or the model edited
                    raise UserError(f"{self.args.resume}: {name} does not fit this model: "
                                    f"{str(e).strip().splitlines()[-1].strip()}") from None
        if self.ckpt:  # the random generators, the device's where it is of the same kind
            torch.set_rng_state(self.ckpt["rng"]["cpu"])
            if self.gpu and self.ckpt["rng"]["device_type"] == self.device.type:
                self.gpu.set_rng_state(self.ckpt["rng"]["device"])
        if self.rank > 0:  # torchrun: each process draws its own noise from here on
            torch.manual_seed(self.args.seed + self.rank + 1000003 * self.iters)

    def enumerate(self, dataloader, epoch, per_step=None):
        """enumerate(dataloader, 0); with per_step k, (i, the batch iterator) for k batches an
        iteration (01's k, 04's n_critic). Past epochs of a resumed run, and after a stop: none."""
        single, per_step = per_step is None, per_step or 1
        n = len(dataloader) // per_step  # iterations per epoch
        if not self.started:
            self._start(n, per_step)
        if self.stopped or epoch < self.iters // n:
            return
        start = self.iters - epoch * n
        dataloader.sampler.set_epoch(epoch, start=start * per_step * dataloader.batch_size)
        batches = iter(dataloader)
        for i in range(start, n):
            self.at = [epoch, i, self.iters]
            yield (i, next(batches)) if single else (i, batches)
            self.iters += 1
            if i % self.args.log_every == 0:
                self.flush()  # (under torchrun: where the processes agree to stop)
            if self.stopped or (self.signal and self.size == 1) or self.iters == self.args.max_steps:
                self.stopped = True
                break
        self.save()  # the end of an epoch, or a stop: a resumed run goes on from here exactly
        if self.stopped:  # the images of the stop, for progress.gif and real_vs_fake.png
            self.snapshot(self.sample(), self.iters - 1)

    def _start(self, n, per_step):
        if n == 0:
            raise UserError(f"an iteration takes {per_step} batches, more than an epoch has: use a smaller "
                            "--batch-size")
        if self.iters >= min(self.args.epochs * n, self.args.max_steps or math.inf):
            raise UserError(f"{self.args.resume} has done {self.iters} iterations ({self.iters // n} epochs) "
                            "already: pass a larger --epochs or --max-steps to go on")
        self.started, self.rate = True, (self.iters, time.perf_counter())
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._handlers[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame):
        """The first Ctrl-C or SIGTERM: finish the iteration, save, stop; a second Ctrl-C quits,
        unless within a second (the same press, passed on by a launcher such as torchrun)."""
        global _QUITTING
        if self.signal:
            if signum == signal.SIGINT and time.monotonic() - self.signalled_at > 1:
                _QUITTING = True
                raise KeyboardInterrupt
            return
        self.signal, self.signalled_at = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM", time.monotonic()
        if is_main():  # straight to the terminal: sys.stdout may be in the middle of a write
            with contextlib.suppress(OSError):
                os.write(2, f"\n{self.signal}: finishing this iteration, then saving a checkpoint "
                         "(press Ctrl-C again to quit without saving)\n".encode())

    def release(self, failed=False):
        """The signal handlers back, and the folder: a run that failed before training removes the one it made."""
        while self._handlers:
            signal.signal(*self._handlers.popitem())
        if failed and self.made and not self.started:
            shutil.rmtree(self.out, ignore_errors=True)
        if self.lockfile:
            self.lockfile.close()
            self.lockfile = None

    def append(self, **values):
        """An iteration's row of losses.csv, on the device until the next log line (an .item() would wait)."""
        self.columns = self.columns or ["epoch", "i", "iters", *values]
        self.pending.append((self.at, torch.stack([v.detach().float() for v in values.values()])))

    def flush(self):
        """The rows into losses.csv, in one transfer; a NaN or infinite loss, or a signal, stops the run."""
        values = torch.stack([v for _, v in self.pending]).tolist() if self.pending else []
        new = [at + v for (at, _), v in zip(self.pending, values)]
        if new and is_main():  # the first write has the header and a resumed run's rows too
            with open(os.path.join(self.out, "losses.csv"), self.csv_mode, newline="") as f:
                csv.writer(f).writerows(new if self.csv_mode == "a" else [self.columns, *self.rows, *new])
            self.csv_mode = "a"
        self.pending, self.rows = [], self.rows + new
        bad = next((r for r in new if not all(math.isfinite(x) for x in r[3:])), None)
        stop, nan = bool(self.signal), bad is not None
        if self.size > 1:  # each process votes: one's signal or NaN stops them all
            votes = torch.tensor([stop, nan], dtype=torch.float, device=self.device)
            dist.all_reduce(votes, op=dist.ReduceOp.MAX)
            stop, nan = votes.tolist()
            self.signal = self.signal or (stop and "a signal in another process")
        if nan:
            said = ", ".join(f"{k} {v:.4g}" for k, v in zip(self.columns[3:], bad[3:])) if bad else ""
            where = f"at iteration {bad[2]} ({said})" if bad else "in another process"
            raise UserError(f"a loss became NaN or infinite {where}: {DIVERGED}")
        self.stopped = self.stopped or stop

    def column(self, name):
        """A column of losses.csv, the whole run's: G_losses, D_losses..."""
        self.flush()
        return [r[self.columns.index(name)] for r in self.rows] if self.columns else []

    def speed(self):
        """Iterations per second since the last call, for the log line."""
        (iters, then), now = self.rate, time.perf_counter()
        self.rate = (self.iters + 1, now)
        return "%.2f it/s" % ((self.iters + 1 - iters) / max(now - then, 1e-9))

    def save(self):
        self.flush()  # raises on a non-finite loss, before the state can replace a good checkpoint
        state = {k: _cpu(unwrap(x).state_dict() if hasattr(x, "state_dict") else x)
                 for k, x in self.state.items()}
        weights = [t for net in ("netG", "netD") for t in state[net].values() if t.is_floating_point()]
        if not all(t.isfinite().all() for t in weights):
            raise UserError(f"the weights became NaN or infinite by iteration {self.iters}: {DIVERGED}")
        rng = {"cpu": torch.get_rng_state(), "device_type": self.device.type,
               "device": self.gpu.get_rng_state() if self.gpu else None}
        save_checkpoint({"script": self.script, "args": vars(self.args), "iters": self.iters,
                         "history": self.rows, "rng": rng, **state},
                        os.path.join(self.out, "checkpoint.pt"))

    def snapshot(self, fake, iters):
        """G's images of the fixed noise at this iteration: the chapter's img_list, as files."""
        self.fake = fake
        save_grid(fake, os.path.join(self.out, f"fake_samples_{iters:06d}.png"), nrow=self.nrow)

    def finish(self, real, curves, title):
        """netG.pt, the loss plot, progress.gif, real_vs_fake.png; the exit status (130: a signal)."""
        save_checkpoint(_cpu(unwrap(self.state["netG"]).state_dict()), os.path.join(self.out, "netG.pt"))
        plotted = is_main() and plot_losses(curves, title, os.path.join(self.out, "losses.png"))
        files = sorted(glob.glob(os.path.join(self.out, "fake_samples_*.png"))) if is_main() else []
        save_gif([Image.open(f).convert("RGB") for f in files], os.path.join(self.out, "progress.gif"), 1000)
        save_real_vs_fake(real, self.fake, os.path.join(self.out, "real_vs_fake.png"), self.nrow)
        print(f"Wrote {self.out}/: real_samples.png, fake_samples_*.png, progress.gif, "
              f"real_vs_fake.png, losses.csv, {'losses.png' if plotted else 'no losses.png (pip install matplotlib)'}, "
              "checkpoint.pt, netG.pt")
        if self.signal:
            print(f"Stopped by {self.signal} after {self.iters} iterations. Go on with: "
                  f"python {self.script}.py --resume {shlex.quote(os.path.join(self.out, 'checkpoint.pt'))}")
        self.release()
        return 130 if self.signal else 0
