"""The original GAN (Goodfellow et al.): two multilayer perceptrons on MNIST, §12.2 and §12.3.

    pip install -r requirements.txt
    python 01_mlp_gan.py                        # MNIST (downloads it), a few minutes on a CPU
    python 01_mlp_gan.py --g-loss minimax       # Eq. (1) as written (§12.3 D, §12.7.1)
    python 01_mlp_gan.py --g-loss minimax --k 5 # a stronger D: watch G's minimax loss stall near 0
    python 01_mlp_gan.py --k 3 --smooth 0.9     # k D-steps per G-step (§12.2.4); one-sided label smoothing
    python 01_mlp_gan.py --generate 100 --checkpoint runs/01_mlp_gan-mnist/checkpoint.pt
    torchrun --nproc_per_node=2 01_mlp_gan.py --device cpu  # two processes (README, "More than one GPU")

A run writes into runs/01_mlp_gan-<dataset>/ (or --out): real_samples.png, fake_samples_XXXXXX.png,
progress.gif, real_vs_fake.png, losses.csv, losses.png, checkpoint.pt and netG.pt.
"""
import math
import os
import random

import torch
import torch.nn as nn
import torch.optim as optim
import torch.utils.data
import torchvision.transforms as transforms

import common

SCRIPT = "01_mlp_gan"

# Settings: the networks, Adam's learning rate 0.001, the batch of 100 and the latent size of
# 100 are the lecture notes' (001). Adam's beta1 is 0.5, as in the chapter (§12.4.4) and the DCGAN
# paper, not PyTorch's 0.9 that 001 leaves it at: with 0.9 these MLPs were still noisy, look-alike
# blobs after 15 epochs of MNIST here; with 0.5 they draw digits after 5. 10 epochs: 5 minutes
# on a 2-core CPU (about 30 s an epoch), with clear, if speckled, digits at the end.
parser = common.make_parser(
    __doc__,
    datasets=["mnist", "fashion-mnist", "fake", "folder"],
    dataset="mnist",
    dataroot="data",
    workers=None,        # the chapter: 2; 0 for in-memory data, else min(4, CPUs) (README, Speed)
    batch_size=100,      # m, the minibatch size of §12.2.4
    nz=100,              # size of the noise z
    epochs=10,
    lr=0.001,            # Adam's learning rate, as in 001
    beta1=0.5,
    seed=999,
    log_every=200,
    sample_every=600,    # once an epoch of MNIST (600 batches of 100)
)
parser.add_argument("--k", type=int, default=1, choices=range(1, 11), metavar="K",
                    help="discriminator steps per generator step, each on its own minibatch "
                         "(§12.2.4; default: 1, the least expensive option, as in the paper)")
parser.add_argument("--g-loss", default="non-saturating", choices=["non-saturating", "minimax"],
                    help="G maximises log D(G(z)) (non-saturating) or minimises log(1 - D(G(z))) "
                         "as Eq. (1) has it (minimax) (default: non-saturating)")
parser.add_argument("--smooth", type=common.unit_value, default=1.0, metavar="Y",
                    help="the label D is trained towards on real images: 1.0, or 0.9 for "
                         "one-sided label smoothing (004) (default: 1.0)")

IMAGE_SIZE = 28  # the MLPs take 28 x 28 x 1 images: 784 inputs


# Data: 28x28 grey images scaled from [0, 1] to [-1, 1], the range of G's Tanh (004). A folder of
# other images is made grey and 28x28 first.
def get_dataset(args):
    transform = transforms.Compose([
        transforms.Grayscale(1),
        transforms.Resize(IMAGE_SIZE),
        transforms.CenterCrop(IMAGE_SIZE),
        transforms.ToTensor(),
        transforms.Normalize((0.5,), (0.5,)),
    ])
    return common.load_dataset(args.dataset, args.dataroot, transform, (1, IMAGE_SIZE, IMAGE_SIZE))


# §12.2.3 The discriminator D(x; θd): a multilayer perceptron from an image to one number, the
# logit of the probability that x came from the data. No Sigmoid here: BCEWithLogitsLoss
# applies it inside the loss, where it can be computed stably (see below).
class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = nn.Sequential(
            nn.Linear(28 * 28, 300),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(300, 100),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(100, 1),
        )

    def forward(self, x):
        x = x.view(x.size(0), -1)  # flatten: 1 x 28 x 28 -> 784
        return self.model(x).view(-1)


# §12.2.3 The generator G(z; θg): a multilayer perceptron from noise z to an image, with Tanh so
# that its pixels live in [-1, 1] like the scaled data (004).
class Generator(nn.Module):
    def __init__(self, nz):
        super().__init__()
        self.model = nn.Sequential(
            nn.Linear(nz, 300),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(300, 28 * 28),
            nn.Tanh(),
        )

    def forward(self, z):
        return self.model(z).view(z.size(0), 1, 28, 28)


# Samples for the fixed-noise snapshots and --generate (an MLP without BatchNorm: no train/eval
# difference, each image depends on its own z only)
def sample(netG, noise):
    netG = common.unwrap(netG)  # torchrun: this process's copy, so no collective call
    with torch.no_grad():
        return netG(noise).cpu()


def main(argv=None):
    args, ckpt = common.get_args(parser, argv, SCRIPT)

    # Decide which device we want to run on: an NVIDIA GPU, else Apple's GPU, else the CPU
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else
                              "mps" if torch.backends.mps.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    # torchrun (README, "More than one GPU"): this process joins the others and takes its own
    # GPU. Started without torchrun, nothing changes.
    world = common.init_processes(device)
    device = world.device
    print(f"Device: {device}")

    if args.generate:
        return generate(args, ckpt, device)

    print("Random Seed: ", args.seed)
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    common.prepare_out(args.out, resume_iters=ckpt["iters"] if ckpt else None)
    dataset = get_dataset(args)
    sampler = common.EpochSampler(dataset, args.seed, world)  # this process's shard
    dataloader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, sampler=sampler,
                                             num_workers=args.workers, drop_last=True,
                                             **common.loader_options(device, args.workers))
    # One iteration of §12.2.4 takes k minibatches (one per D step)
    iterations = len(dataloader) // args.k  # per epoch
    if iterations == 0:
        raise common.UserError(f"the dataset has {len(dataset)} images, fewer than --k {args.k} "
                               f"batches of --batch-size {args.batch_size}: use a smaller --batch-size")
    print(f"Dataset: {args.dataset}, {len(dataset)} images, {len(dataloader)} batches of "
          f"{args.batch_size} per epoch, {iterations} iterations of k = {args.k} D steps + 1 G step")
    world.say_batch(args.batch_size)

    real_batch = next(iter(dataloader))
    common.save_grid(real_batch[0][:64], os.path.join(args.out, "real_samples.png"))

    netG = Generator(args.nz).to(device)
    print(netG)
    netD = Discriminator().to(device)
    print(netD)
    # torchrun: DistributedDataParallel averages the gradients of all processes in backward
    netG, netD = world.wrap(netG), world.wrap(netD)

    # §12.3 D 1) The cross-entropy loss. BCEWithLogitsLoss on a logit a = D's output, target y:
    #   l = -[y log σ(a) + (1 - y) log(1 - σ(a))]
    # so y = 1 gives -log D(x) and y = 0 gives -log(1 - D(G(z))): the two terms of Eq. (1)/(2),
    # negated, because optimizers minimise. It computes log σ(a) = -softplus(-a) directly,
    # never rounding σ(a) to 0 or 1 first, so the loss and its gradient stay finite even when
    # D is very sure (a Sigmoid followed by BCELoss would clamp log(0) to -100 and lose the
    # gradient there).
    criterion = nn.BCEWithLogitsLoss()
    fixed_noise = torch.randn(64, args.nz, device=device)
    # The chapter's labels (the lecture notes 001 use the reverse): real 1, fake 0. D's target
    # on real images is --smooth: 0.9 is 004's one-sided label smoothing, which keeps D from
    # becoming overconfident; the fakes' target stays 0 and G's target stays 1.
    real_label = 1.
    fake_label = 0.
    real_labels = torch.full((args.batch_size,), real_label, device=device)
    fake_labels = torch.full((args.batch_size,), fake_label, device=device)
    smooth_labels = torch.full((args.batch_size,), args.smooth, device=device)
    optimizerD = optim.Adam(netD.parameters(), lr=args.lr, betas=(args.beta1, 0.999))
    optimizerG = optim.Adam(netG.parameters(), lr=args.lr, betas=(args.beta1, 0.999))

    iters = 0
    if ckpt:  # --resume: the models, optimizers, fixed noise and random state where they were
        iters = common.restore(ckpt, args.resume, device, netG=netG, netD=netD,
                               optimizerG=optimizerG, optimizerD=optimizerD)
        fixed_noise = ckpt["fixed_noise"].to(device)
    world.seed_noise(args.seed, iters)  # torchrun: from here each process draws its own noise
    start_epoch, start_i = common.start_point(args, iters, iterations)

    history = common.History(os.path.join(args.out, "losses.csv"),
                             ["Loss_D", "Loss_G", "D_x", "D_G_z1", "D_G_z2"],
                             rows=ckpt["history"] if ckpt else ())
    ckpt_path = os.path.join(args.out, "checkpoint.pt")

    def save_checkpoint():
        common.save_training(ckpt_path, SCRIPT, args, iters, history, device, netG=netG, netD=netD,
                             optimizerG=optimizerG, optimizerD=optimizerD, fixed_noise=fixed_noise)

    # §12.2.4 Minibatch stochastic gradient descent training of GANs
    print("Starting Training Loop...")
    speed = common.IterRate(iters)
    fixed_fake = None
    stop = False
    with common.Interrupt(world) as interrupt:
        for epoch in range(start_epoch, args.epochs):
            sampler.set_epoch(epoch, start=start_i * args.k * args.batch_size)
            minibatches = iter(dataloader)
            # for number of training iterations do
            for i in range(start_i, iterations):

                # (part 1: update the discriminator) for k steps do
                for _ in range(args.k):
                    # Sample a minibatch of m examples from the data
                    x = next(minibatches)[0].to(device, non_blocking=True)
                    m = x.size(0)
                    # Sample a minibatch of m noise samples from the prior p(z)
                    z = torch.randn(m, args.nz, device=device)
                    # Ascend ∇θd 1/m Σ [log D(x) + log(1 - D(G(z)))], i.e. descend its negative
                    netD.zero_grad()
                    output = netD(x)
                    errD_real = criterion(output, smooth_labels)        # -log D(x)
                    D_x = torch.sigmoid(output).mean()
                    output = netD(netG(z).detach())   # detach: this step moves θd only
                    errD_fake = criterion(output, fake_labels)          # -log(1 - D(G(z)))
                    D_G_z1 = torch.sigmoid(output).mean()
                    errD = errD_real + errD_fake
                    errD.backward()
                    optimizerD.step()

                # (part 2: update the generator) with a new minibatch of m noise samples
                z = torch.randn(m, args.nz, device=device)
                netG.zero_grad()
                output = netD(netG(z))
                if args.g_loss == "minimax":
                    # Descend ∇θg 1/m Σ log(1 - D(G(z))), Eq. (1) as written. BCE with y = 0 is
                    # -log(1 - D(G(z))), so minimise its negative. Its slope on D's logit a is
                    # -σ(a) = -D(G(z)): when D rejects the fakes (D(G(z)) near 0) the curve is
                    # flat and G gets almost no gradient (§12.7.1).
                    errG = -criterion(output, fake_labels)
                else:
                    # Non-saturating: maximise log D(G(z)), i.e. minimise -log D(G(z)) = BCE
                    # with y = 1. Same fixed point, but its slope on the logit is
                    # D(G(z)) - 1: strongest exactly when D rejects the fakes (§12.3 D 1).
                    errG = criterion(output, real_labels)
                errG.backward()
                D_G_z2 = torch.sigmoid(output).mean()
                optimizerG.step()

                # Losses wait on the device until the next log line (no per-iteration sync)
                history.append(epoch, i, iters, errD, errG, D_x, D_G_z1, D_G_z2)
                if i % args.log_every == 0:
                    row = history.flush()
                    print('[%d/%d][%d/%d]\tLoss_D: %.4f\tLoss_G: %.4f\tD(x): %.4f\tD(G(z)): %.4f / %.4f'
                          '\t%.2f it/s' % (epoch, args.epochs, i, iterations, *row[3:], speed(iters + 1)),
                          flush=True)

                # G's progress on fixed_noise
                last = (epoch == args.epochs - 1 and i == iterations - 1) or iters + 1 == args.max_steps
                if (iters % args.sample_every == 0) or last:
                    fixed_fake = sample(netG, fixed_noise)
                    common.save_grid(fixed_fake, os.path.join(args.out, f"fake_samples_{iters:06d}.png"))

                iters += 1
                stop = interrupt.requested or iters == args.max_steps
                if stop:
                    break
            if stop:
                break
            start_i = 0
            save_checkpoint()  # the end of an epoch

        if stop:  # --max-steps or Ctrl-C
            save_checkpoint()
            snapshot = os.path.join(args.out, f"fake_samples_{iters - 1:06d}.png")
            if not os.path.exists(snapshot):
                fixed_fake = sample(netG, fixed_noise)
                common.save_grid(fixed_fake, snapshot)

    common.save_checkpoint(common.unwrap(netG).state_dict(), os.path.join(args.out, "netG.pt"))

    # Results: the loss plot, G's progression, real beside fake
    G_losses, D_losses = history.column("Loss_G"), history.column("Loss_D")
    common.plot_losses({"G": G_losses, "D": D_losses}, "Generator and Discriminator Loss During Training",
                       os.path.join(args.out, "losses.png"))
    common.write_gif(args.out, os.path.join(args.out, "progress.gif"))
    if fixed_fake is None:
        fixed_fake = sample(netG, fixed_noise)
    common.save_real_vs_fake(real_batch[0][:64], fixed_fake, os.path.join(args.out, "real_vs_fake.png"))

    print(f"Wrote {args.out}/: real_samples.png, fake_samples_*.png, progress.gif, "
          "real_vs_fake.png, losses.csv, losses.png, checkpoint.pt, netG.pt")
    if interrupt.requested:
        print(f"Stopped by Ctrl-C after {iters} iterations. Go on with: "
              f"python {SCRIPT}.py --resume {ckpt_path}")
        return 130
    return 0


# --generate N: N new samples from the generator of a checkpoint (or of a netG.pt)
def generate(args, ckpt, device):
    netG = Generator(args.nz).to(device)
    common.load_state(netG, ckpt["netG"], "the generator", args.checkpoint)
    torch.manual_seed(args.seed)
    noise = torch.randn(args.generate, args.nz, device=device)
    fake = torch.cat([sample(netG, z) for z in noise.split(1024)])
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "generated.png")
    common.save_grid(fake, path, nrow=math.ceil(math.sqrt(args.generate)))
    print(f"Wrote {args.generate} samples of {args.checkpoint} to {path}")
    return 0


if __name__ == "__main__":
    common.cli(main)
