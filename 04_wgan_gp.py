"""Wasserstein GAN with gradient penalty (WGAN-GP), and the original WGAN's weight clipping.

The chapter's Wasserstein loss and critic (§12.3 D 2) and why they help against vanishing
gradients and mode collapse (§12.7.1, §12.7.2); the networks and the penalty follow the WGAN-GP
code of the tutorial 002 and Gulrajani et al.'s Algorithm 1.

    pip install -r requirements.txt
    python 04_wgan_gp.py                                   # MNIST 28x28 (downloads it), 10 epochs
    python 04_wgan_gp.py --dataset celeba --image-size 64  # the same recipe on faces
    python 04_wgan_gp.py --clip 0.01                       # the original WGAN: weight clipping, no penalty
    python sample.py runs/04_wgan_gp-mnist/checkpoint.pt --n 64       # new digits (sample.py)
    torchrun --nproc_per_node=4 04_wgan_gp.py --dataset celeba --image-size 64  # 4 GPUs (docs/shared.md)

A run writes into runs/04_wgan_gp-<dataset>/ (or --out): real_samples.png, fake_samples_XXXXXX.png,
progress.gif, real_vs_fake.png, losses.csv, losses.png, checkpoint.pt and netG.pt.
The lesson notes, results and choices of this script: docs/04_wgan_gp.md.
"""
import os
import random

import torch
import torch.backends.cudnn as cudnn
import torch.nn as nn
import torch.optim as optim
import torch.utils.data
import torchvision.transforms as transforms

import common

SCRIPT = "04_wgan_gp"

# Settings: 002's WGAN-GP configuration, which is the paper's (Adam 1e-4, betas (0.0, 0.9),
# n_critic 5, lambda 10), with 002's batch of 64 and latent size of 100
parser = common.make_parser(
    __doc__,
    datasets=["mnist", "fashion-mnist", "cifar10", "celeba", "folder", "fake"],
    lr_said="0.0001 with Adam; with --clip, 0.00005 with RMSprop, as the WGAN paper",
    dataset="mnist",
    dataroot="data",
    workers=None,        # the chapter has 2; we pick by dataset (docs/speed.md)
    batch_size=64,
    nz=100,              # latent_dim
    epochs=10,           # 002's DCGAN config has 5; MNIST digits read clearly after 10 (docs)
    lr=None,             # decided in main(): it depends on --clip
    beta1=0.0,           # no momentum in Adam's first moment (the WGAN-GP paper)
    beta2=0.9,
    seed=999,
    log_every=50,
    sample_every=200,
)
parser.add_argument("--image-size", type=int, metavar="N",
                    help="a multiple of 4, at most 256 (default: the dataset's own: 28 for MNIST "
                         "and Fashion-MNIST and fake, 32 for CIFAR-10, 64 for CelebA and folder)")
parser.add_argument("--n-critic", type=int, default=5, choices=range(1, 11), metavar="N",
                    help="critic steps per generator step, each on its own real batch (default: 5)")
parser.add_argument("--lambda-gp", type=common.non_negative, metavar="LAMBDA",
                    help="weight of the gradient penalty (default: 10; none with --clip)")
parser.add_argument("--clip", type=common.unit_value, metavar="C",
                    help="the original WGAN instead: clip every critic weight to [-C, C] after "
                         "each critic step, RMSprop, no gradient penalty (the paper: 0.01)")

NATIVE_SIZE = {"mnist": 28, "fashion-mnist": 28, "fake": 28, "cifar10": 32, "celeba": 64, "folder": 64}


def channels(dataset):
    return 1 if dataset in ("mnist", "fashion-mnist") else 3  # nc: grey digits 1, colour 3


# Data: resize and crop to image_size, scale [0, 1] to [-1, 1], the range of G's Tanh
def get_dataset(dataset, dataroot, image_size, nc):
    transform = transforms.Compose([
        transforms.Resize(image_size),
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        transforms.Normalize((0.5,) * nc, (0.5,) * nc),
    ])
    return common.load_dataset(dataset, dataroot, transform, (nc, image_size, image_size))


# 002's WGANGenerator: a linear layer from z to a 256 x s x s volume, then two transposed
# convolutions, each doubling the size: s = image_size / 4 (7 for MNIST, 16 for 64x64 faces).
class Generator(nn.Module):
    def __init__(self, nz, nc, image_size):
        super().__init__()
        self.s = image_size // 4
        self.net = nn.Sequential(
            nn.Linear(nz, 256 * self.s * self.s),
            nn.BatchNorm1d(256 * self.s * self.s),
            nn.ReLU(True),
            # state size. (256*s*s), viewed below as 256 x s x s
        )
        self.conv = nn.Sequential(
            nn.ConvTranspose2d(256, 128, 4, 2, 1),
            nn.BatchNorm2d(128),
            nn.ReLU(True),
            # state size. 128 x 2s x 2s
            nn.ConvTranspose2d(128, nc, 4, 2, 1),
            nn.Tanh(),
            # state size. nc x 4s x 4s = nc x image_size x image_size
        )

    def forward(self, z):
        return self.conv(self.net(z).view(-1, 256, self.s, self.s))


# The generator's initialization: the DCGAN paper's, which 002 applies to its DCGAN (its WGAN
# generator is "the same as standard"): convolutions from N(0, 0.02), BatchNorm scale N(1, 0.02)
# and shift 0. Not PyTorch's default here: ConvTranspose2d takes its fan-in from the *output*
# channels (pytorch/pytorch#30079): for nc = 1 that is 1 x 4 x 4 = 16 instead of 128 x 4 x 4, so
# the last layer starts 11x wider than it should, half of G's pixels start saturated at ±1 in
# the Tanh, and a saturated pixel passes no gradient back. On MNIST such pixels stayed lit, a
# grid of dots that 2,000 iterations did not remove (docs/04_wgan_gp.md).
def weights_init(m):
    classname = m.__class__.__name__
    if classname.find('Conv') != -1:
        nn.init.normal_(m.weight.data, 0.0, 0.02)
    elif classname.find('BatchNorm') != -1:
        nn.init.normal_(m.weight.data, 1.0, 0.02)
        nn.init.constant_(m.bias.data, 0)


# §12.3 D 2 The critic: an image to one unbounded number, "how real", not a probability, so no
# Sigmoid. And no BatchNorm: the penalty below constrains the gradient of the critic's output
# for each sample on its own, and BatchNorm would make that output depend on the rest of the
# batch.
class Critic(nn.Module):
    def __init__(self, nc, image_size):
        super().__init__()
        s = image_size // 4
        self.net = nn.Sequential(
            # input is (nc) x 4s x 4s
            nn.Conv2d(nc, 64, 4, 2, 1),
            nn.LeakyReLU(0.2, True),
            # state size. 64 x 2s x 2s
            nn.Conv2d(64, 128, 4, 2, 1),
            nn.LeakyReLU(0.2, True),
            # state size. 128 x s x s
            nn.Flatten(),
            nn.Linear(128 * s * s, 1),
            # state size. 1
        )

    def forward(self, img):
        return self.net(img).view(-1)


# The gradient penalty (WGAN-GP, Gulrajani et al., Algorithm 1). A critic is 1-Lipschitz when
# its gradient has norm at most 1 everywhere; the penalty asks for norm 1 at random points on
# the straight lines between real and fake samples:
#   GP = E_x̂ [(||∇x̂ D(x̂)||₂ - 1)²],   x̂ = ε x + (1 - ε) G(z),   ε ~ U[0, 1]
def gradient_penalty(critic, real, fake):
    b_size = real.size(0)
    alpha = torch.rand(b_size, 1, 1, 1, device=real.device)           # ε, one per sample
    interpolates = (alpha * real + (1 - alpha) * fake).requires_grad_(True)  # x̂
    critic_interpolates = critic(interpolates)                          # D(x̂), one per sample
    gradients = torch.autograd.grad(
        outputs=critic_interpolates, inputs=interpolates,               # ∇x̂ D(x̂)
        grad_outputs=torch.ones_like(critic_interpolates),
        create_graph=True,  # the penalty is part of the critic's loss: backward goes through it
    )[0]
    gradient_norm = gradients.reshape(b_size, -1).norm(2, dim=1)       # ||∇x̂ D(x̂)||₂ per sample
    return ((gradient_norm - 1) ** 2).mean()                           # E[(||.|| - 1)²]


# Samples for the snapshots and sample.py: G's BatchNorm in eval mode, so that each image
# depends on its own z only (docs/02_dcgan.md, "Sampling: BatchNorm in eval mode")
def sample(netG, noise):
    netG = common.unwrap(netG)  # torchrun: this process's copy, so no collective call
    training = netG.training
    netG.eval()
    with torch.no_grad():
        fake = netG(noise).detach().cpu()
    netG.train(training)
    return fake


def settle_sizes(args):
    """The image size (the dataset's own unless given), the learning rate and the penalty's
    weight (per --clip), and a batch G's BatchNorm can take."""
    if args.image_size is None:
        args.image_size = NATIVE_SIZE[args.dataset]
    if args.image_size < 4 or args.image_size % 4 or args.image_size > 256:
        raise common.UserError(f"--image-size {args.image_size}: the networks halve the size twice "
                               "and double it twice, so it must be a multiple of 4 (28, 32, 64...), "
                               "and at most 256 (G's first layer grows with its square)")
    if args.lr is None:
        args.lr = 0.00005 if args.clip else 0.0001
    if args.clip and args.lambda_gp is not None and not args.resume:
        raise common.UserError("--clip replaces the gradient penalty, so --lambda-gp would do "
                               "nothing: use one of them")
    if args.lambda_gp is None:
        args.lambda_gp = 10.0
    if args.batch_size < 2:  # (the epoch's last batch is dropped, so every batch is full)
        raise common.UserError("--batch-size 1: G's BatchNorm1d needs at least 2 images a batch")


def main(argv=None):
    args, ckpt = common.get_args(parser, argv, SCRIPT)
    settle_sizes(args)
    dataroot, workers, batch_size, image_size = args.dataroot, args.workers, args.batch_size, args.image_size
    nz, num_epochs, lr, beta1, beta2 = args.nz, args.epochs, args.lr, args.beta1, args.beta2
    n_critic, lambda_gp = args.n_critic, args.lambda_gp
    nc = channels(args.dataset)

    # An NVIDIA GPU, else Apple's, else the CPU
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available()
                          else "mps" if torch.backends.mps.is_available() else "cpu")
    # The run's folder, checkpoints, Ctrl-C and torchrun (common.Run; docs/shared.md)
    run = common.Run(SCRIPT, args, ckpt, device)
    device = run.device  # under torchrun: this process's GPU
    cudnn.benchmark = device.type == "cuda"  # one batch shape: cuDNN may time its algorithms once

    # the documents' seed, so that a run can be repeated
    manualSeed = args.seed
    print("Random Seed: ", manualSeed)
    random.seed(manualSeed)
    torch.manual_seed(manualSeed)

    dataset = get_dataset(args.dataset, dataroot, image_size, nc)
    # drop_last: every batch full, so G's BatchNorm never sees a batch of one
    dataloader = run.dataloader(dataset, batch_size=batch_size, num_workers=workers, drop_last=True)
    iterations = len(dataloader) // n_critic  # per epoch: n_critic batches, then one G step
    print(f"{iterations} iterations of {n_critic} critic steps + 1 G step, images {nc}x{image_size}x{image_size}")

    real_batch = next(iter(dataloader))
    common.save_grid(real_batch[0][:64], os.path.join(args.out, "real_samples.png"))

    netG = Generator(nz, nc, image_size).to(device)
    netG.apply(weights_init)  # the critic keeps PyTorch's default: its Conv2d fan-in is right
    print(netG)
    netD = Critic(nc, image_size).to(device)  # the critic keeps the chapter's name, D
    print(netD)
    # channels_last: the layout in which oneDNN and cuDNN convolve fastest; same numbers
    netG, netD = netG.to(memory_format=torch.channels_last), netD.to(memory_format=torch.channels_last)
    # several GPUs: torchrun's DistributedDataParallel (docs/shared.md)
    netG, netD = run.parallel(netG), run.parallel(netD)

    fixed_noise = torch.randn(64, nz, device=device)
    if args.clip:
        # The original WGAN (Arjovsky et al.): RMSprop, as momentum made their clipped critic unstable
        print(f"WGAN with weight clipping to [-{args.clip}, {args.clip}]: RMSprop, lr {lr}, no penalty")
        optimizerD = optim.RMSprop(netD.parameters(), lr=lr)
        optimizerG = optim.RMSprop(netG.parameters(), lr=lr)
    else:
        print(f"WGAN-GP: Adam, lr {lr}, betas ({beta1}, {beta2}), lambda {lambda_gp}")
        optimizerD = optim.Adam(netD.parameters(), lr=lr, betas=(beta1, beta2))
        optimizerG = optim.Adam(netG.parameters(), lr=lr, betas=(beta1, beta2))
    # What a checkpoint holds; --resume loads it back into these objects here
    run.keep(lambda: sample(netG, fixed_noise), netG=netG, netD=netD, optimizerG=optimizerG,
             optimizerD=optimizerD, fixed_noise=fixed_noise)

    # Training loop: Algorithm 1 of WGAN-GP (of WGAN, with clipping instead of the penalty).
    # run.append keeps the losses (losses.csv), the snapshots go to files.
    iters = run.iters  # 0, or where a resumed run stopped

    print("Starting Training Loop...")
    for epoch in range(num_epochs):
        # run.enumerate: n_critic batches an iteration, from `batches`; it resumes, saves, stops
        for i, batches in run.enumerate(dataloader, epoch, n_critic):

            ############################
            # (1) Update the critic n_critic times: maximize D(x) - D(G(z)) (§12.3 D 2),
            #     i.e. minimize D(G(z)) - D(x) + λ GP
            ###########################
            for _ in range(n_critic):
                # channels_last like the models; non_blocking where pinned (CUDA): no wait
                real = next(batches)[0].to(device, memory_format=torch.channels_last, non_blocking=run.pinned)
                b_size = real.size(0)
                noise = torch.randn(b_size, nz, device=device)
                fake = netG(noise).detach()  # this step trains the critic only
                critic_real = netD(real).mean()  # E[D(x)]
                critic_fake = netD(fake).mean()  # E[D(G(z))]
                gp = gradient_penalty(netD, real, fake) if not args.clip else torch.zeros((), device=device)
                errD = critic_fake - critic_real + lambda_gp * gp
                netD.zero_grad()
                errD.backward()
                optimizerD.step()
                if args.clip:
                    # WGAN's crude Lipschitz constraint: every critic weight into [-c, c]
                    with torch.no_grad():
                        for p in netD.parameters():
                            p.clamp_(-args.clip, args.clip)
            # W: the critic's estimate of the Wasserstein distance, E[D(x)] - E[D(G(z))]
            W = critic_real.detach() - critic_fake.detach()

            ############################
            # (2) Update G once: maximize D(G(z)), i.e. minimize -D(G(z))
            ###########################
            noise = torch.randn(b_size, nz, device=device)
            errG = -netD(netG(noise)).mean()
            netG.zero_grad()
            errG.backward()
            optimizerG.step()

            if i % args.log_every == 0:  # .item() below: the loop's one wait for the GPU
                print('[%d/%d][%d/%d]\tLoss_C: %.4f\tLoss_G: %.4f\tW: %.4f\tGP: %.4f'
                      % (epoch, num_epochs, i, iterations,
                         errD.item(), errG.item(), W, gp.item()), run.speed())
            run.append(Loss_C=errD, Loss_G=errG, W=W, GP=gp)

            # G's progress on fixed_noise, every sample_every iterations and at the end
            if (iters % args.sample_every == 0) or ((epoch == num_epochs-1) and (i == iterations-1)):
                run.snapshot(sample(netG, fixed_noise), iters)

            iters += 1
        if run.stopped:  # Ctrl-C, SIGTERM or --max-steps: run.enumerate has saved
            break

    # Results: W, which should fall as G improves, beside the losses; G's progression
    # (progress.gif), real vs. fake, and the trained generator (netG.pt)
    curves = {"W = D(x) - D(G(z))": run.column("W"), "critic": run.column("Loss_C"), "G": run.column("Loss_G")}
    return run.finish(real_batch[0][:64], curves, "Critic's Wasserstein estimate and the losses during training")


if __name__ == "__main__":
    common.cli(main)
