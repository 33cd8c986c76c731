"""How good is a GAN? Numbers for its samples, to compare runs, seeds or losses (§12.7.3;
002's FID and Inception Score).

    python evaluate.py runs/02_dcgan-mnist/checkpoint.pt          # 10,000 samples of its G
    python evaluate.py runs/03_cgan-mnist/checkpoint.pt --json    # and one JSON line at the end
    python evaluate.py runs/01_mlp_gan-mnist/generated/ --dataset mnist  # PNGs made elsewhere
    python evaluate.py runs/01_mlp_gan-mnist/checkpoint.pt --neighbours  # did it just memorise?
    python evaluate.py --train --dataset fashion-mnist            # (re)train the classifier

For MNIST and Fashion-MNIST the numbers live in the feature space of a small classifier of the
dataset, trained here once (about a minute on 2 CPU cores) and kept beside the data with the
mean and covariance of its features on the test split:
  FID      the Fréchet distance between the samples' features and the test split's; beside it
           the floor, the same distance for as many real training images, sized the same way
  score    the Inception Score, from the same classifier: 1 (one class) to 10 (all, sharply)
  coverage the share of classes drawn at least half as often as an even spread would, and the
           class histogram (§12.7.2's mode collapse)
  cond_accuracy (03_cgan.py) how often the classifier reads the class that G was asked for
  memorisation (--neighbours) the mean distance to the nearest training image, of the samples
           over that of held-out real images: 1 for new digits, near 0 for copies; and
           neighbours.png, samples above their nearest training images
Other datasets use torchvision's Inception-v3, where its weights are on this machine.
More in docs/evaluate.md.
"""
import argparse
import glob
import json
import math
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms as transforms
import torchvision.utils as vutils
from PIL import Image

import common
import sample

OWN = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "fake": "FakeData"}  # own classifier
VERSION = 2  # of the classifier's file: another one is rebuilt
SIZE = 28    # the classifier's input, MNIST's own size
MAX_N = 50000  # --n's: FID's usual N, and CIFAR-10's training split (as many real images)


def sample_count(text):
    """--n: from 2 (a covariance needs two) to MAX_N (every sample's features are kept)."""
    n = common.positive_int(text)
    if not 2 <= n <= MAX_N:
        raise argparse.ArgumentTypeError(f"from 2 (FID's covariance needs two samples) to {MAX_N}, got {text}")
    return n


parser = argparse.ArgumentParser(prog="evaluate.py", description=__doc__, allow_abbrev=False,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("path", nargs="?", help="a checkpoint.pt of one of the scripts, a PNG grid, "
                    "or a folder of PNGs (one image each, as sample.py writes them)")
parser.add_argument("--n", type=sample_count, default=10000,
                    help=f"samples to draw from a checkpoint (default: 10000; at most {MAX_N}, FID's "
                    "usual N: up to it the training splits hold as many real images, which the floor "
                    "or Inception's FID compares, and every sample's features are kept in memory)")
parser.add_argument("--dataset", choices=["mnist", "fashion-mnist", "cifar10", "celeba", "folder", "fake"],
                    help="the data the images imitate (default: the checkpoint's; mnist for PNGs)")
parser.add_argument("--dataroot", metavar="DIR", help="parent folder of the datasets, as in the "
                    "scripts (default: the checkpoint's; data for PNGs)")
parser.add_argument("--classifier", metavar="PATH", help="the classifier's file (default: "
                    "<dataroot>/MNIST/classifier.pt, or FashionMNIST/...)")
parser.add_argument("--train", action="store_true", help="train the classifier again, even if "
                    "there is one (it is trained on first use anyway)")
parser.add_argument("--image-size", type=common.positive_int, metavar="N",
                    help="a PNG grid's image size (default: found from the grid: 28, 32 or 64)")
parser.add_argument("--seed", type=common.seed, help="which samples (default: the run's seed)")
parser.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"],
                    help="auto picks cuda, then mps, then cpu (default: auto)")
parser.add_argument("--json", action="store_true", help="also print the numbers as one JSON "
                    "object, on the last line")
parser.add_argument("--neighbours", action="store_true", help="did it just memorise? Write "
                    "neighbours.png beside PATH (samples above their nearest training images) and "
                    "the mean distance to the nearest training image, of the samples against "
                    "held-out real images (MNIST and Fashion-MNIST)")


# The classifier: two small convolutions and a 128-wide layer whose activations are the
# features (FID's space). 99.15 % on MNIST's test split after its 3 epochs
class Classifier(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.features = nn.Sequential(
            # input is 1 x 28 x 28
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            # state size. 16 x 14 x 14
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            # state size. 32 x 7 x 7
            nn.Flatten(), nn.Dropout(0.25),
            nn.Linear(32 * 7 * 7, 128), nn.ReLU(),
            # state size. 128: the features
        )
        self.head = nn.Linear(128, classes)
        self.size, self.nc = SIZE, 1

    def forward(self, x):
        return self.head(self.features(x))


def embed(net, batches, device):
    """The features (float64, for the covariance) and class probabilities of batches of images
    in [-1, 1], each made fit for the network first (fit); and the images' own size."""
    feats, probs, size = [], [], None
    net.eval()
    with torch.no_grad():
        for x in batches:
            size = x.shape[-1]
            f = net.features(fit(x.to(device), net))  # the resize too (to 299x299 for Inception) on the GPU
            feats.append(f.cpu().double())  # on the CPU: MPS has no float64
            probs.append(F.softmax(net.head(f).float(), dim=1).cpu())
    return torch.cat(feats), torch.cat(probs), size


def fit(images, net):
    """Images as the network takes them: grey if it is, and resized to its input size, the same
    way for real and generated ones."""
    if images.shape[1] == 3 and net.nc == 1:
        images = images.mean(1, keepdim=True)
    elif images.shape[1] == 1 and net.nc == 3:
        images = images.expand(-1, 3, -1, -1)
    return resize(images, net.size)


def resize(images, size):
    """Bicubic and antialiased: of the ways tried, the one that blurs digits least (the floor of
    02's 64x64 MNIST: 57, against 113 bilinear and 2.6 for MNIST's own 28x28; docs/evaluate.md)."""
    if images.shape[-2:] == (size, size):
        return images
    try:
        resized = F.interpolate(images, size=(size, size), mode="bicubic", antialias=True)
    except NotImplementedError:  # no kernel for it on this device (MPS before torch 2.8): the CPU's
        resized = F.interpolate(images.cpu(), size=(size, size), mode="bicubic", antialias=True).to(images.device)
    return resized.clamp(-1, 1)


# --- The numbers --------------------------------------------------------------------------------
def statistics(feats):
    return feats.mean(0), torch.cov(feats.T)


def frechet(mu1, sigma1, mu2, sigma2):
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2). Tr (S1 S2)^1/2 is the sum of the square
    roots of the eigenvalues of S1^1/2 S2 S1^1/2, which is symmetric: no complex sqrtm needed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 128 x 128 eigh: 1 ms alone, 1 s when threads wait on a busy CPU
    try:
        w, v = torch.linalg.eigh(sigma1)
        root1 = v @ torch.diag(w.clamp(min=0).sqrt()) @ v.T
        middle = torch.linalg.eigvalsh(root1 @ sigma2 @ root1).clamp(min=0).sqrt().sum()
    finally:
        torch.set_num_threads(threads)
    return ((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * middle).item()


def inception_score(probs):
    """exp E_x KL(p(y|x) || p(y)): high when each image is one class and all classes appear."""
    p_y = probs.mean(0, keepdim=True)
    kl = (torch.special.xlogy(probs, probs) - torch.special.xlogy(probs, p_y)).sum(1)
    return kl.mean().exp().item()


def class_histogram(probs, classes):
    return torch.bincount(probs.argmax(1), minlength=len(classes)).tolist()


def coverage(hist):
    """The share of classes drawn at least half as often as an even spread would draw them. The
    classifier reads every blot as some class, so a class G has lost (§12.7.2's mode collapse)
    is rarely never drawn at all: at 10,000 samples, it is drawn far less than its share."""
    return sum(k >= sum(hist) / (2 * len(hist)) for k in hist) / len(hist)


def conditional_accuracy(probs, asked, classes):
    """For each class G was asked for, the share of its samples read as that class; their mean."""
    said = probs.argmax(1)
    per_class = {classes[c]: (said[asked == c] == c).float().mean().item() for c in asked.unique().tolist()}
    return sum(per_class.values()) / len(per_class), per_class


# --- The classifier's file ----------------------------------------------------------------------
def load_images(dataset, dataroot, train=True, size=SIZE, nc=1, n=None):
    """A dataset (n of its images, drawn at random, if n is given) as one tensor in [-1, 1], by
    the scripts' transform; its labels, and its class names."""
    transform = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size),
                                    transforms.ToTensor(), transforms.Normalize((0.5,) * nc, (0.5,) * nc)])
    data = common.load_dataset(dataset, dataroot, transform, (nc, size, size), train=train)
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:n]
    if isinstance(data, torch.utils.data.TensorDataset):  # in memory already
        return data.tensors[0][idx], data.tensors[1][idx], data.classes
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(data, idx.tolist()), batch_size=500,
                                         num_workers=min(4, os.cpu_count() or 1))
    images, labels = zip(*loader)
    return torch.cat(images), torch.cat(labels), data.classes


def train_classifier(dataset, dataroot, path, device):
    """Train on the training split, measure on the test split, keep the test split's feature
    statistics (never the training split's: a G that memorised it gains nothing), save."""
    start = time.perf_counter()
    print(f"Training the classifier of {dataset} on its training split, once (about a minute on 2 "
          "CPU cores)")
    try:
        images, labels, classes = load_images(dataset, dataroot)
    except common.UserError as e:
        raise common.UserError(f"no classifier at {path}, and no data to train one: {e}") from None
    images, labels = images.to(device), labels.to(device)  # once, not a copy per batch
    torch.manual_seed(0)
    net = Classifier(len(classes)).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    epochs = 5 if dataset == "fashion-mnist" else 3
    steps = math.ceil(len(images) / 128)  # a one-cycle schedule: up to 3e-3 and down, in few epochs
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=epochs * steps)
    for epoch in range(epochs):
        net.train()
        for idx in torch.randperm(len(images), device=device).split(128):  # no index copy a batch
            optimizer.zero_grad()
            F.cross_entropy(net(images[idx]), labels[idx]).backward()
            optimizer.step()
            schedule.step()
        print(f"  epoch {epoch + 1}/{epochs}, {time.perf_counter() - start:.0f} s", flush=True)
    test, test_labels, _ = load_images(dataset, dataroot, train=False)
    feats, probs, _ = embed(net, test.split(500), device)
    accuracy = (probs.argmax(1) == test_labels).float().mean().item()
    mu, sigma = statistics(feats)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    common.save_checkpoint({"evaluate": VERSION, "dataset": dataset, "classes": classes,
                            "net": {k: v.cpu() for k, v in net.state_dict().items()},  # loads without a GPU
                            "mu": mu, "sigma": sigma,
                            "test_accuracy": accuracy, "test_n": len(test)}, path)
    print(f"Classifier: {accuracy:.2%} on the {len(test)} test images, in "
          f"{time.perf_counter() - start:.0f} s; saved to {path}")


REFUSED = ("classifier of evaluate.py: move it away (it is then trained again), or pass "
           "--classifier PATH")


def classifier_from(ckpt, path):
    """The network of a classifier's file of this version, all of whose parts must be there and
    fit (a hand-made or damaged one would fail anywhere later, with a traceback)."""
    try:
        net = Classifier(len(ckpt["classes"]))
        net.load_state_dict(ckpt["net"])
        w, mu, sigma = net.head.in_features, ckpt["mu"], ckpt["sigma"]  # w: the features' width
        ok = (isinstance(ckpt["dataset"], str) and all(isinstance(c, str) for c in ckpt["classes"])
              and torch.is_tensor(mu) and mu.shape == (w,) and torch.is_tensor(sigma)
              and sigma.shape == (w, w) and isinstance(ckpt["test_accuracy"], float) and "test_n" in ckpt
              # flipped bytes can load: a NaN or inf would give a LinAlgError, or an absurd FID
              and all(t.isfinite().all() for t in [*net.state_dict().values(), mu, sigma] if t.is_floating_point()))
    except (KeyError, TypeError, RuntimeError):  # a part missing, of the wrong kind, or not fitting
        ok = False
    if not ok:
        raise common.UserError(f"{path} is not a complete {REFUSED}")
    return net


def load_classifier(dataset, dataroot, path, device, retrain):
    """The classifier and its reference statistics, trained first where there is none yet (or
    it is from another version of this file); a file that is not one is refused."""
    ckpt = None
    if os.path.exists(path) and not retrain:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            ckpt = "unreadable"
        if not (isinstance(ckpt, dict) and isinstance(ckpt.get("evaluate"), int)):
            raise common.UserError(f"{path} is not a {REFUSED}")
        if isinstance(ckpt.get("dataset"), str) and ckpt["dataset"] != dataset:
            raise common.UserError(f"{path} is the classifier of {ckpt['dataset']}, and these "
                                   f"images are {dataset}: pass the right --classifier or --dataset")
        if ckpt["evaluate"] != VERSION:
            print(f"{path} is from another version of evaluate.py: training it again")
            ckpt = None
    if ckpt is None:
        train_classifier(dataset, dataroot, path, device)
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    net = classifier_from(ckpt, path)
    print(f"Classifier: {path} ({ckpt['test_accuracy']:.2%} on {dataset}'s {ckpt['test_n']} test images)")
    return net.to(device), ckpt


# --- Other datasets: Inception-v3 ---------------------------------------------------------------
def inception_net(device):
    """torchvision's Inception-v3 from its ImageNet weights, found locally or not at all (no
    download here: one that fails offline is what this file avoids)."""
    from torchvision.models import Inception_V3_Weights, inception_v3
    url = Inception_V3_Weights.IMAGENET1K_V1.url
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
    if not os.path.exists(path):
        raise common.UserError(
            f"FID on this dataset is measured in the features of Inception-v3, and its weights are "
            f"not on this machine: download {url} (104 MB) to {path}, then run again. (MNIST and "
            "Fashion-MNIST need no download: evaluate.py trains its own classifier for them.)")
    # The weights are ported from Google's, which take [-1, 1]: torchvision's transform_input=True
    # turns ImageNet-normalised images back into that. Ours are in [-1, 1] already: in as they are
    net = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    head, net.fc = net.fc, nn.Identity()

    class Inception(nn.Module):  # [-1, 1] in, the 2048 pool features out; head: ImageNet's logits
        def __init__(self):
            super().__init__()
            self.features, self.head, self.size, self.nc = net, head, 299, 3
    return Inception().to(device)


# --- What is scored -----------------------------------------------------------------------------
def from_pngs(path, nc, image_size):
    """A folder of PNGs (one image each), or a PNG grid as save_grid writes it (padding 2)."""
    to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,) * nc, (0.5,) * nc)])

    def read(file):
        try:
            with Image.open(file) as image:
                return to_tensor(image.convert("L" if nc == 1 else "RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as e:  # (the last is no OSError)
            raise common.UserError(f"cannot read {file} as an image: {e}") from None
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "*.png")))
        if not files:
            raise common.UserError(f"{path} has no .png files")
        images = [read(f) for f in files]
        if len({x.shape for x in images}) > 1:
            raise common.UserError(f"the PNGs in {path} are not all the same size")
        return torch.stack(images)
    grid = read(path)
    _, h, w = grid.shape
    sizes = [image_size] if image_size else [28, 32, 64]
    fits = [s for s in sizes if (h - 2) % (s + 2) == 0 and (w - 2) % (s + 2) == 0
            and (grid[:, ::s + 2] == -1).all() and (grid[:, :, ::s + 2] == -1).all()]
    if len(fits) != 1:
        raise common.UserError(f"cannot tell the images apart in the {w}x{h} grid {path}: pass "
                               "--image-size N (the grid must have save_grid's padding of 2)")
    s = fits[0]
    cells = grid[:, 2:, 2:].unfold(1, s, s + 2).unfold(2, s, s + 2)  # C, rows, cols, s, s
    images = cells.permute(1, 2, 0, 3, 4).reshape(-1, grid.shape[0], s, s)
    while len(images) > 1 and (images[-1] == -1).all():  # a last row's empty cells
        images = images[:-1]
    return images


# --- Did it just memorise? (--neighbours) -------------------------------------------------------
SHOWN, K = 24, 3  # neighbours.png: 24 samples, each above its 3 nearest training images


def nearest(queries, train, k=K, chunk=1000):
    """The distances and indices of the k rows of train nearest to each row of queries, nearest
    first. A chunk of queries at a time: 1,000 of them against MNIST's 60,000 are 240 MB of
    distances (about twice that while cdist works)."""
    found = [torch.cdist(q, train).topk(k, dim=1, largest=False) for q in queries.split(chunk)]
    return torch.cat([d for d, _ in found]), torch.cat([i for _, i in found])


def memorisation(generated, held_out, train):
    """The mean distance to the nearest training image, of the samples and of real images that
    no training saw (an honest generator's yardstick), and their ratio: a copier is near 0."""
    g, h = nearest(generated, train, 1)[0].mean().item(), nearest(held_out, train, 1)[0].mean().item()
    return {"generated": g, "held_out": h, "ratio": g / h}


def neighbours(net, batches, feats, dataset, dataroot, device, path):
    """--neighbours: the memorisation figure of the samples (batches, and their features) in the
    classifier's features and in its input's pixels (28x28 grey), against its own training
    split; and neighbours.png at path."""
    train, _, _ = load_images(dataset, dataroot)
    # held-out images sized as the samples were, like the floor's: the resizing blurs both alike
    held_out, _, _ = load_images(dataset, dataroot, train=False, n=len(feats), size=batches[0].shape[-1])
    # in each space: the samples, the held-out images, the training images
    features = [feats] + [embed(net, x.split(500), device)[0] for x in (held_out, train)]
    pixels = [torch.cat([fit(x.to(device), net) for x in batches]),
              fit(held_out.to(device), net), train.to(device)]
    spaces = {"features": [f.float().to(device) for f in features], "pixels": [p.flatten(1) for p in pixels]}
    figure = {space: memorisation(*rows) for space, rows in spaces.items()}
    figure["held_out_n"] = len(held_out)
    shown = [train[nearest(g[:SHOWN], t)[1].cpu()] for g, _, t in spaces.values()]  # SHOWN x K images each
    save_neighbours(pixels[0][:SHOWN].cpu(), shown, path)
    print(f"Neighbours: {path} (top row: {len(shown[0])} samples as the classifier sees them; below "
          f"each, its {K} nearest training images in the classifier's features, then in pixels, "
          "nearest first)")
    for space in spaces:
        f = figure[space]
        print(f"Memorisation in {space}: {f['ratio']:.2f} (mean distance to the nearest of the "
              f"{len(train)} training images: {f['generated']:.2f} for the samples, {f['held_out']:.2f} "
              f"for {len(held_out)} held-out real images, which define 1; a copier is near 0)")
    return figure


def save_neighbours(samples, shown, path):
    """The samples in a row, and below them, after a white gap, their neighbours in each space:
    the nearest in the first row, the next nearest in the second..."""
    grids = [vutils.make_grid(x, nrow=len(samples), padding=2, normalize=True, value_range=(-1, 1))
             for x in [samples] + [s.transpose(0, 1).flatten(0, 1) for s in shown]]
    gap = torch.ones(3, 8, grids[0].shape[2])
    vutils.save_image(torch.cat([grids[0], gap, grids[1], gap, grids[2]], dim=1), path)


def main(argv=None):
    args = parser.parse_args(argv)
    if not args.path and not args.train:
        parser.error("give a checkpoint, a PNG grid or a folder of PNGs to score (or --train)")
    if args.neighbours and not args.path:
        parser.error("--neighbours looks for the nearest training images of samples: give a "
                     "checkpoint, a PNG grid or a folder of PNGs")
    if args.path and not args.path.endswith(".pt") and not os.path.exists(args.path):
        raise common.UserError(f"{args.path}: no such file or folder")
    common.check_device(args.device)
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available()
                          else "mps" if torch.backends.mps.is_available() else "cpu")
    start, run, asked = time.perf_counter(), None, None
    if args.path and args.path.endswith(".pt"):  # the run's settings: its dataset, its seed
        ckpt = common.load_checkpoint(args.path)
        run = argparse.Namespace(**ckpt["args"])
        if not all(isinstance(getattr(run, k, None), str) for k in ("dataset", "dataroot")):
            raise common.UserError(f"{args.path} is not a complete checkpoint of {ckpt['script']}.py (its args)")
    dataset = args.dataset or (run.dataset if run else "mnist")
    dataroot = args.dataroot or (run.dataroot if run else "data")
    if args.neighbours and dataset not in OWN:  # before Inception's weights are looked for
        raise common.UserError(f"--neighbours is for MNIST and Fashion-MNIST, where evaluate.py's own "
                               f"classifier has features to compare and there is a held-out test split; "
                               f"{dataset} has neither")
    if dataset in OWN:
        path = args.classifier or os.path.join(dataroot, OWN[dataset], "classifier.pt")
        net, ref = load_classifier(dataset, dataroot, path, device, args.train)
    elif args.train:
        raise common.UserError(f"--train: evaluate.py's own classifier is for MNIST and "
                               f"Fashion-MNIST; {dataset} is scored with Inception-v3")
    else:
        net, ref = inception_net(device), None
    if not args.path:
        return 0
    if run is not None:  # drawn after the classifier is ready: its making uses the random generator
        batches, asked, _, _ = sample.samples(args.path, args.n, args.seed, device)  # sample.py's images
        seed = run.seed if args.seed is None else args.seed
        what = f"{args.n} samples of {args.path} ({run.dataset}, seed {seed})"
    else:
        batches = from_pngs(args.path, net.nc if ref else 3, args.image_size)
        what = f"{len(batches)} images of {args.path}"
        batches = batches.split(500)
    if args.neighbours:  # kept, for their pixels (a checkpoint's are drawn a batch at a time)
        batches = list(batches)
    print(f"Scoring {what}", flush=True)
    feats, probs, size = embed(net, batches, device)
    n = len(feats)
    if size != net.size:
        print(f"(resized from {size}x{size} to {net.size}x{net.size} for the network, as are the "
              "real images)")

    # the real images as the script's transform made them (sized like the samples), then fit for
    # the network the same way
    real, _, _ = load_images(dataset, dataroot, n=n, size=size, nc=1 if ref else 3)
    real_feats, _, _ = embed(net, real.split(500), device)
    fake_stats, real_stats = statistics(feats), statistics(real_feats)
    r = {"fid": None, "fid_floor": None, "score": inception_score(probs), "coverage": None,
         "class_hist": None, "n": n}
    if ref is None:  # Inception: against the real images themselves; no floor, no classes
        r["fid"] = frechet(*fake_stats, *real_stats)
        print(f"FID: {r['fid']:.2f} (against {len(real)} real training images, in Inception-v3's features)")
        print(f"Score: {r['score']:.2f} (Inception Score, over ImageNet's 1000 classes)")
    else:  # against the test split's statistics; the floor: the real training images'
        test_stats, classes = (ref["mu"].double(), ref["sigma"].double()), ref["classes"]
        r["fid"], r["fid_floor"] = frechet(*fake_stats, *test_stats), frechet(*real_stats, *test_stats)
        hist = class_histogram(probs, classes)
        r["coverage"], r["class_hist"] = coverage(hist), dict(zip(classes, hist))
        print(f"FID: {r['fid']:.2f} (floor {r['fid_floor']:.2f}: {len(real)} real training images, "
              "sized the same way, against the same test-split statistics)")
        print(f"Score: {r['score']:.2f} (1 to {len(classes)})")
        least, most = hist.index(min(hist)), hist.index(max(hist))
        print(f"Coverage: {r['coverage']:.0%}, the classes drawn at least half as often as an even "
              f"spread would ({1 / (2 * len(hist)):.1%} of the samples); least drawn "
              f"{classes[least]} ({hist[least] / n:.1%}), most {classes[most]} ({hist[most] / n:.1%})")
        print("Classes: " + ", ".join(f"{c}: {k}" for c, k in zip(classes, hist)))
        if asked is not None:
            r["cond_accuracy"], per_class = conditional_accuracy(probs, asked, classes)
            r["cond_accuracy_per_class"] = per_class
            print(f"Conditional accuracy: {r['cond_accuracy']:.2%} of the samples read as the class "
                  "asked for (" + ", ".join(f"{c}: {a:.0%}" for c, a in per_class.items()) + ")")
    if args.neighbours:  # beside what was scored (for a folder of PNGs, not among them)
        path = os.path.join(os.path.dirname(os.path.abspath(args.path)), "neighbours.png")
        r["memorisation"] = neighbours(net, batches, feats, dataset, dataroot, device, path)
    print(f"({time.perf_counter() - start:.0f} s on {device.type})")
    if args.json:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    common.cli(main)
