"""The original GAN (Goodfellow et al.): two multilayer perceptrons on MNIST, §12.2 and §12.3.

    pip install -r requirements.txt
    python 01_mlp_gan.py                        # MNIST (downloads it), a few minutes on a CPU
    python 01_mlp_gan.py --g-loss minimax       # Eq. (1) as written (§12.3 D, §12.7.1)
    python 01_mlp_gan.py --g-loss minimax --k 5 # a stronger D: watch G's minimax loss stall near 0
    python 01_mlp_gan.py --k 3 --smooth 0.9     # k D-steps per G-step (§12.2.4); one-sided label smoothing
    python sample.py runs/01_mlp_gan-mnist/checkpoint.pt --n 100          # new digits (sample.py)
    python sample.py runs/01_mlp_gan-mnist/checkpoint.pt --n 80 --walk 10 # 8 latent walks
    torchrun --nproc_per_node=2 01_mlp_gan.py --device cpu  # two processes (docs/shared.md)

A run writes into runs/01_mlp_gan-<dataset>/ (or --out): real_samples.png, fake_samples_XXXXXX.png,
progress.gif, real_vs_fake.png, losses.csv, losses.png, checkpoint.pt and netG.pt.
The lesson notes, results and choices of this script: docs/01_mlp_gan.md.
"""
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
    workers=None,        # the chapter has 2; we pick by dataset (docs/speed.md)
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
def get_dataset(dataset, dataroot):
    transform = transforms.Compose([
        transforms.Grayscale(1),
        transforms.Resize(IMAGE_SIZE),
        transforms.CenterCrop(IMAGE_SIZE),
        transforms.ToTensor(),
        transforms.Normalize((0.5,), (0.5,)),
    ])
    return common.load_dataset(dataset, dataroot, transform, (1, IMAGE_SIZE, IMAGE_SIZE))


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


# Samples for the fixed-noise snapshots and sample.py (an MLP without BatchNorm: no train/eval
# difference, each image depends on its own z only)
def sample(netG, noise):
    netG = common.unwrap(netG)  # torchrun: this process's copy, so no collective call
    with torch.no_grad():
        return netG(noise).cpu()


def main(argv=None):
    args, ckpt = common.get_args(parser, argv, SCRIPT)
    dataroot, workers, batch_size = args.dataroot, args.workers, args.batch_size
    nz, num_epochs, lr, beta1, k = args.nz, args.epochs, args.lr, args.beta1, args.k

    # An NVIDIA GPU, else Apple's, else the CPU
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available()
                          else "mps" if torch.backends.mps.is_available() else "cpu")
    # The run's folder, checkpoints, Ctrl-C and torchrun (common.Run; docs/shared.md)
    run = common.Run(SCRIPT, args, ckpt, device)
    device = run.device  # under torchrun: this process's GPU

    # the documents' seed, so that a run can be repeated
    manualSeed = args.seed
    print("Random Seed: ", manualSeed)
    random.seed(manualSeed)
    torch.manual_seed(manualSeed)

    dataset = get_dataset(args.dataset, dataroot)
    dataloader = run.dataloader(dataset, batch_size=batch_size, num_workers=workers, drop_last=True)
    iterations = len(dataloader) // k  # per epoch: k minibatches for D, then one G step
    print(f"{iterations} iterations of k = {k} D steps + 1 G step per epoch")

    real_batch = next(iter(dataloader))
    common.save_grid(real_batch[0][:64], os.path.join(args.out, "real_samples.png"))

    netG = Generator(nz).to(device)
    print(netG)
    netD = Discriminator().to(device)
    print(netD)
    # several GPUs: torchrun's DistributedDataParallel (docs/shared.md)
    netG, netD = run.parallel(netG), run.parallel(netD)

    # §12.3 D 1) The cross-entropy loss. BCEWithLogitsLoss on D's logit a, target y:
    #   l = -[y log σ(a) + (1 - y) log(1 - σ(a))]
    # y = 1 gives -log D(x), y = 0 gives -log(1 - D(G(z))): Eq. (1)'s two terms, negated since
    # optimizers minimise. It computes log σ(a) = -softplus(-a) without rounding σ(a) to 0 or 1,
    # so the loss and its gradient stay finite when D is sure (Sigmoid + BCELoss would clamp
    # log(0) to -100 and lose the gradient there).
    criterion = nn.BCEWithLogitsLoss()
    fixed_noise = torch.randn(64, nz, device=device)
    # The chapter's labels (the notes 001 use the reverse). D's target on real images is
    # --smooth: 0.9 is 004's one-sided label smoothing, against an overconfident D.
    real_label = 1.
    fake_label = 0.
    optimizerD = optim.Adam(netD.parameters(), lr=lr, betas=(beta1, 0.999))
    optimizerG = optim.Adam(netG.parameters(), lr=lr, betas=(beta1, 0.999))
    # What a checkpoint holds; --resume loads it back into these objects here
    run.keep(lambda: sample(netG, fixed_noise), netG=netG, netD=netD, optimizerG=optimizerG,
             optimizerD=optimizerD, fixed_noise=fixed_noise)

    # §12.2.4 Minibatch stochastic gradient descent training of GANs. run.append keeps the
    # losses (losses.csv), the snapshots go to files.
    iters = run.iters  # 0, or where a resumed run stopped

    print("Starting Training Loop...")
    for epoch in range(num_epochs):
        # for number of training iterations do; run.enumerate hands k minibatches an
        # iteration from `minibatches`, and resumes, saves and stops
        for i, minibatches in run.enumerate(dataloader, epoch, k):

            # (part 1: update the discriminator) for k steps do
            for _ in range(k):
                # a minibatch of m examples; non_blocking where it is pinned (CUDA): no wait
                x = next(minibatches)[0].to(device, non_blocking=run.pinned)
                m = x.size(0)
                # a minibatch of m noise samples from the prior p(z)
                z = torch.randn(m, nz, device=device)
                # ascend ∇θd 1/m Σ [log D(x) + log(1 - D(G(z)))], i.e. descend its negative
                netD.zero_grad()
                label = torch.full((m,), args.smooth, dtype=torch.float, device=device)
                output = netD(x)
                errD_real = criterion(output, label)  # -log D(x), or with --smooth its 0.9 version
                errD_real.backward()
                D_x = torch.sigmoid(output).mean().detach()
                label.fill_(fake_label)
                output = netD(netG(z).detach())  # detach: this step moves θd only
                errD_fake = criterion(output, label)  # -log(1 - D(G(z)))
                errD_fake.backward()  # adds to errD_real's gradients: one step for the sum
                D_G_z1 = torch.sigmoid(output).mean().detach()
                errD = errD_real + errD_fake
                optimizerD.step()

            # (part 2: update the generator) with a new minibatch of m noise samples
            z = torch.randn(m, nz, device=device)
            netG.zero_grad()
            output = netD(netG(z))
            label = torch.full((m,), real_label, dtype=torch.float, device=device)
            if args.g_loss == "minimax":
                # Descend ∇θg 1/m Σ log(1 - D(G(z))), Eq. (1) as written: minus BCE with y = 0.
                # Its slope on D's logit a is -σ(a) = -D(G(z)): when D rejects the fakes
                # (D(G(z)) near 0) G gets almost no gradient (§12.7.1).
                errG = -criterion(output, label.fill_(fake_label))
            else:
                # Non-saturating: minimise -log D(G(z)) = BCE with y = 1. Same fixed point, but
                # its slope on the logit is D(G(z)) - 1: strongest when D rejects the fakes (§12.3 D 1).
                errG = criterion(output, label)
            errG.backward()
            D_G_z2 = torch.sigmoid(output).mean().detach()
            optimizerG.step()

            if i % args.log_every == 0:  # .item() below: the loop's one wait for the GPU
                print('[%d/%d][%d/%d]\tLoss_D: %.4f\tLoss_G: %.4f\tD(x): %.4f\tD(G(z)): %.4f / %.4f'
                      % (epoch, num_epochs, i, iterations,
                         errD.item(), errG.item(), D_x, D_G_z1, D_G_z2), run.speed())
            run.append(Loss_D=errD, Loss_G=errG, D_x=D_x, D_G_z1=D_G_z1, D_G_z2=D_G_z2)

            # G's progress on fixed_noise, every sample_every iterations and at the end
            if (iters % args.sample_every == 0) or ((epoch == num_epochs-1) and (i == iterations-1)):
                run.snapshot(sample(netG, fixed_noise), iters)

            iters += 1
        if run.stopped:  # Ctrl-C, SIGTERM or --max-steps: run.enumerate has saved
            break

    # Results: the loss plot, G's progression (progress.gif), real vs. fake, netG.pt
    G_losses, D_losses = run.column("Loss_G"), run.column("Loss_D")
    return run.finish(real_batch[0][:64], {"G": G_losses, "D": D_losses},
                      "Generator and Discriminator Loss During Training")


if __name__ == "__main__":
    common.cli(main)
