"""New images from a trained generator: any of the four scripts' checkpoint.pt.

    python sample.py runs/02_dcgan-celeba/checkpoint.pt                    # 64 faces: generated.png
    python sample.py runs/02_dcgan-celeba/checkpoint.pt --n 10000          # a PNG each, in generated/
    python sample.py runs/01_mlp_gan-mnist/checkpoint.pt --n 80 --walk 10  # 8 latent walks of 10 steps
    python sample.py runs/03_cgan-mnist/checkpoint.pt --n 10 --labels 7    # ten 7s
    python sample.py runs/03_cgan-mnist/checkpoint.pt --n 100 --walk 10    # 03: class morphs

The images go beside the checkpoint (or into --out): up to 1024 as one grid, generated.png;
more as one PNG each in generated/, made and written a batch at a time, so that memory holds
one batch at any N. With --walk K: N/K walks of K images, as walk.png (a walk a row) and the
animation walk.gif. The script's own sample() draws them, with BatchNorm in eval mode, so an
image depends on its own z alone. More in docs/shared.md, "Sampling".
"""
import argparse
import glob
import importlib
import math
import os

import torch
import torchvision.utils as vutils
from PIL import Image

import common

GRID_MAX = 1024  # up to this many images, one grid; more, a PNG each
BATCH = 256  # images made at a time
# Each script's Generator from its run's settings (a), with k classes (03), and the shape of its z
GENERATORS = {
    "01_mlp_gan": (lambda m, a, k: m.Generator(a.nz), (-1,)),
    "02_dcgan": (lambda m, a, k: m.Generator(a.nz, a.ngf, m.channels(a.dataset)), (-1, 1, 1)),
    "03_cgan": (lambda m, a, k: m.Generator(a.nz, a.ngf, m.channels(a.dataset), k), (-1, 1, 1)),
    "04_wgan_gp": (lambda m, a, k: m.Generator(a.nz, m.channels(a.dataset), a.image_size), (-1,)),
}


def label_list(text):
    """--labels 7 or --labels 0,3,8: class numbers, in the order given."""
    try:
        labels = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected class numbers separated by commas, got {text!r}")
    if len(set(labels)) != len(labels):
        raise argparse.ArgumentTypeError(f"a class is listed twice in {text!r}")
    return labels


parser = argparse.ArgumentParser(prog="sample.py", description=__doc__, allow_abbrev=False,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("checkpoint", help="a checkpoint.pt that one of the four scripts wrote")
parser.add_argument("--n", type=common.positive_int, default=64, help="how many images (default: 64)")
parser.add_argument("--walk", type=common.checked(int, lambda v: v >= 2, "must be 2 or more: a walk "
                    "has two ends"), metavar="K", help="N/K latent walks of K images each, from one "
                    "random z to another: walk.png and walk.gif")
parser.add_argument("--interp", choices=["slerp", "lerp"], help="--walk's path: slerp, along the "
                    "sphere on which Gaussian z lie, or lerp, the straight line (default: slerp)")
parser.add_argument("--labels", type=label_list, metavar="L[,L...]", help="03_cgan only: the "
                    "classes to draw, N/len(L) each, a row each (default: all). With --walk: one "
                    "class, walks of z within it; or two, a,b: each row morphs a into b (default: "
                    "row r morphs class r into r + 1)")
parser.add_argument("--seed", type=common.seed, help="which images (default: the run's seed)")
parser.add_argument("--out", metavar="DIR", help="where the images go (default: the checkpoint's folder)")
parser.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"],
                    help="auto picks cuda, then mps, then cpu (default: auto)")


def generator(path, device):
    """The script (its module), the run's settings, its G with the checkpoint's weights (in
    eval mode, by the script's sample()), and its class names (03; else None)."""
    ckpt = common.load_checkpoint(path)
    if ckpt["script"] not in GENERATORS:
        raise common.UserError(f"{path} was written by {ckpt['script']}.py, which these tools do not know")
    module, (make, _) = importlib.import_module(ckpt["script"]), GENERATORS[ckpt["script"]]
    run = argparse.Namespace(**ckpt["args"])
    classes = ckpt.get("classes")
    try:
        netG = make(module, run, len(classes or ())).to(device)
        if not isinstance(run.seed, int):  # the default --seed, here and in evaluate.py
            raise TypeError
    except (AttributeError, TypeError):  # a setting missing, or of the wrong kind
        raise common.UserError(f"{path} is not a complete checkpoint of {ckpt['script']}.py (its args)") from None
    try:
        netG.load_state_dict(ckpt["netG"])
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[-1].strip()
        raise common.UserError(f"{path}: the generator does not fit this model ({detail}). Were the sizes "
                               "(--nz, --ngf, --ndf, --dataset) different?") from None
    return module, run, netG, classes


def draw(module, netG, z, y=None):
    """module.sample(netG, z[, y]) a batch at a time: a generator of image batches."""
    zs, ys = z.split(BATCH), y.split(BATCH) if y is not None else None
    for k, zb in enumerate(zs):
        yield module.sample(netG, zb) if y is None else module.sample(netG, zb, ys[k])


def samples(path, n, seed, device, labels=None):
    """n images of the checkpoint's G (evaluate.py's too): (batches, the class asked of each
    image or None, class names or None, the run's settings). 03 draws n/len(labels) of each
    class in turn; the others, n of z alone. Noise is drawn a batch at a time."""
    module, run, netG, classes = generator(path, device)
    torch.manual_seed(run.seed if seed is None else seed)
    shape = GENERATORS[module.__name__][1]
    if classes is None:
        if labels:
            raise common.UserError(f"--labels is for 03_cgan.py's classes; {module.__name__}.py has none")
        z = (torch.randn(min(BATCH, n - k), run.nz, device=device).view(-1, run.nz, *shape[1:])
             for k in range(0, n, BATCH))
        return (module.sample(netG, zb) for zb in z), None, None, run
    labels = check_labels(labels or list(range(len(classes))), classes)
    if n % len(labels):
        raise common.UserError(f"--n {n} does not split into equal rows for {len(labels)} classes: "
                               f"use a multiple of {len(labels)}")
    asked = torch.tensor(labels).repeat_interleave(n // len(labels))
    onehot = torch.eye(len(classes), device=device).view(len(classes), len(classes), 1, 1)
    batches = (module.sample(netG, torch.randn(len(y), run.nz, 1, 1, device=device), onehot[y.to(device)])
               for y in asked.split(BATCH))
    return batches, asked, classes, run


def check_labels(labels, classes):
    bad = [y for y in labels if not 0 <= y < len(classes)]
    if bad:
        names = ", ".join(f"{c}: {name}" for c, name in enumerate(classes))
        raise common.UserError(f"--labels {','.join(map(str, bad))}: this generator knows "
                               f"{len(classes)} classes, numbered 0 to {len(classes) - 1} ({names})")
    return labels


# The K points t = 0 ... 1 of each path from z0 to z1 (n x nz each; n x K x nz out). A Gaussian
# z lies near the sphere of radius √nz, and the straight line, lerp = (1-t) z0 + t z1, cuts
# inside it (at t = 1/2 its norm is about √(nz/2)), where G saw no z in training: washed-out
# images mid-walk. slerp keeps to the sphere, θ the angle between z0 and z1:
#   slerp(z0, z1; t) = sin((1-t)θ)/sin θ · z0 + sin(tθ)/sin θ · z1
def interpolate(z0, z1, t, interp):
    z0, z1, t = z0.unsqueeze(1), z1.unsqueeze(1), t.view(1, -1, 1)
    if interp == "lerp":
        return (1 - t) * z0 + t * z1
    theta = torch.acos(torch.cosine_similarity(z0, z1, dim=2).clamp(-1, 1)).unsqueeze(2)
    # the weights first, as written above: at t = 0 and 1 exactly 1 and 0, so the ends are z0, z1
    return torch.sin((1 - t) * theta) / torch.sin(theta) * z0 + torch.sin(t * theta) / torch.sin(theta) * z1


# A latent walk: §12.2.2's G maps the random variable z to an image, so a path from one z to
# another is a path through G's images, and a smooth one shows a smooth map (not a lookup of
# training images). For 03 also the class morph (§12.5.1: G(z|y) is a function of y as much as
# of z): z held along a row while G's one-hot label input goes from class a to class b,
# y = (1-t) onehot[a] + t onehot[b]: one-hots at the ends, mixtures G never saw between them.
# By default row r goes from class r to r + 1; --labels a,b: every row a to b; --labels C:
# walks of z with the class held at C.
def walks(path, n, k, interp, seed, device, labels=None):
    """(batches of the n / k walks' images, walk after walk, and a line that says what they are)."""
    module, run, netG, classes = generator(path, device)
    if run.nz < 2 and interp != "lerp":
        raise common.UserError("--walk: slerp follows the sphere on which z lie, and at --nz 1 that "
                               "is two points: use --interp lerp")
    torch.manual_seed(run.seed if seed is None else seed)
    rows, nz, t = n // k, run.nz, torch.linspace(0, 1, k, device=device)
    z = interpolate(torch.randn(rows, nz, device=device), torch.randn(rows, nz, device=device), t, interp)
    shape = GENERATORS[module.__name__][1]
    if classes is None:
        if labels:
            raise common.UserError(f"--labels is for 03_cgan.py's classes; {module.__name__}.py has none")
        return draw(module, netG, z.reshape(-1, nz, *shape[1:])), "latent walks"
    labels = check_labels(labels or [], classes)
    if len(labels) > 2:
        raise common.UserError(f"--walk --labels {','.join(map(str, labels))}: give one class (walks "
                               "of z within it) or two, a,b (each row morphs a into b)")
    if len(labels) != 1:  # a class morph: z held along each row
        if interp:
            raise common.UserError("--interp picks the path of z, and a class morph holds z along its "
                                   "row: for walks of z, hold the class with --labels C")
        z = z[:, :1].expand(-1, k, -1)
    if labels:  # from the first class given to the last (one class: held)
        a, b = torch.full((rows,), labels[0], device=device), torch.full((rows,), labels[-1], device=device)
    else:
        a = torch.arange(rows, device=device) % len(classes)
        b = (a + 1) % len(classes)
    onehot = torch.eye(len(classes), device=device)
    y = interpolate(onehot[a], onehot[b], t, "lerp")  # rows x K x classes
    pairs = dict.fromkeys(zip(a.tolist(), b.tolist()))  # the rows' classes, each pair once
    said = "classes " + ", ".join(classes[i] if i == j else f"{classes[i]} to {classes[j]}" for i, j in pairs)
    return draw(module, netG, z.reshape(-1, nz, 1, 1), y.reshape(-1, len(classes), 1, 1)), said


def save_generated(out, n, batches, nrow):
    """Up to GRID_MAX images, one grid, generated.png; more, each its own PNG in generated/, as
    it comes; a larger earlier sampling's images past n go, so the folder holds these n."""
    if n <= GRID_MAX:
        path = os.path.join(out, "generated.png")
        common.save_grid(torch.cat(list(batches)), path, nrow=nrow)
        return path
    folder = os.path.join(out, "generated")
    os.makedirs(folder, exist_ok=True)
    k = 0
    for fake in batches:
        for image in fake:
            common.save_grid(image, os.path.join(folder, f"{k:07d}.png"))
            k += 1
    for path in glob.glob(os.path.join(folder, "[0-9]" * 7 + ".png")):
        if int(os.path.basename(path)[:7]) >= n:
            os.remove(path)
    return folder + "/"


def save_walks(out, k, batches):
    """walk.png (a walk a row) and walk.gif, whose frame j is step j of every walk, as a grid,
    there and back."""
    images = torch.cat(list(batches))
    common.save_grid(images, os.path.join(out, "walk.png"), nrow=k)
    frames = []
    for step in images.view(-1, k, *images.shape[1:]).transpose(0, 1):  # step j of every walk
        grid = vutils.make_grid(step, nrow=math.ceil(math.sqrt(len(step))), padding=2,
                                normalize=True, value_range=(-1, 1))
        # to 8 bits as the PNGs are (torchvision's save_image)
        frames.append(Image.fromarray(grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0)
                                      .to(torch.uint8).numpy()))
    common.save_gif(frames + frames[-2:0:-1], os.path.join(out, "walk.gif"), 150)  # the ends once
    return os.path.join(out, "walk.png"), os.path.join(out, "walk.gif")


def main(argv=None):
    args = parser.parse_args(argv)
    if args.interp and not args.walk:
        parser.error("--interp picks the path of --walk: add --walk K")
    if args.walk and args.n % args.walk:
        parser.error(f"--n {args.n} --walk {args.walk}: N must be a multiple of K, N/K walks of K "
                     f"images each (e.g. --n {args.walk * (args.n // args.walk + 1)})")
    if args.walk and args.n > GRID_MAX:
        parser.error(f"--n {args.n} --walk {args.walk}: walk.png is one grid, of at most {GRID_MAX} images")
    common.check_device(args.device)
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available()
                          else "mps" if torch.backends.mps.is_available() else "cpu")
    out = args.out or os.path.dirname(args.checkpoint) or "."
    if args.walk:
        batches, said = walks(args.checkpoint, args.n, args.walk, args.interp, args.seed, device, args.labels)
    else:
        batches, asked, classes, _ = samples(args.checkpoint, args.n, args.seed, device, args.labels)
    with common.lock(out):  # not into the folder of a run that is writing there
        if args.walk:
            paths = save_walks(out, args.walk, batches)
            print(f"Wrote {args.n // args.walk} walks of {args.walk} images of {args.checkpoint} to "
                  + " and ".join(paths) + f": {said}")
            return 0
        rows = asked.unique_consecutive().tolist() if asked is not None else None
        path = save_generated(out, args.n, batches, args.n // len(rows) if rows else math.ceil(math.sqrt(args.n)))
        print(f"Wrote {args.n} samples of {args.checkpoint} to {path}"
              + (": classes in order " + ", ".join(classes[c] for c in rows) if rows else ""))
        return 0


if __name__ == "__main__":
    common.cli(main)
