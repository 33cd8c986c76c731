"""Wasserstein GAN with gradient penalty (WGAN-GP), and the original WGAN's weight clipping.

The chapter's Wasserstein loss and critic (§12.3 D 2) and why they help against vanishing
gradients and mode collapse (§12.7.1, §12.7.2); the networks and the penalty follow the WGAN-GP
code of the tutorial 002 and Gulrajani et al.'s Algorithm 1.

    pip install -r requirements.txt
    python 04_wgan_gp.py                                   # MNIST 28x28 (downloads it), 10 epochs
    python 04_wgan_gp.py --dataset celeba --image-size 64  # the same recipe on faces
    python 04_wgan_gp.py --clip 0.01                       # the original WGAN: weight clipping, no penalty
    python 04_wgan_gp.py --generate 64 --checkpoint runs/04_wgan_gp-mnist/checkpoint.pt
    torchrun --nproc_per_node=4 04_wgan_gp.py --dataset celeba --image-size 64  # 4 GPUs (README)

A run writes into runs/04_wgan_gp-<dataset>/ (or --out): real_samples.png, fake_samples_XXXXXX.png,
progress.gif, real_vs_fake.png, losses.csv, losses.png, checkpoint.pt and netG.pt.
"""
import math
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
    defaults_said={"lr": "0.0001 with Adam; with --clip, 0.00005 with RMSprop, as the WGAN paper"},
    dataset="mnist",
    dataroot="data",
    workers=None,        # the chapter: 2; 0 for in-memory data, else min(4, CPUs) (README, Speed)
    amp=False,           # --amp: bfloat16 forward passes (README, Speed)
    batch_size=64,
    nz=100,              # latent_dim
    epochs=10,           # 002's DCGAN config has 5; MNIST digits read clearly after 10 (README)
    lr=None,             # decided in main(): it depends on --clip
    beta1=0.0,           # no momentum in Adam's first moment (the WGAN-GP paper)
    beta2=0.9,
    seed=999,
    log_every=50,
    sample_every=200,
)
parser.add_argument("--image-size", type=int, metavar="N",
                    help="a multiple of 4 (default: the dataset's own: 28 for MNIST and "
                         "Fashion-MNIST and fake, 32 for CIFAR-10, 64 for CelebA and folder)")
parser.add_argument("--n-critic", type=int, default=5, choices=range(1, 11), metavar="N",
                    help="critic steps per generator step, each on its own real batch (default: 5)")
parser.add_argument("--lambda-gp", type=float, default=10.0, metavar="LAMBDA",
                    help="weight of the gradient penalty (default: 10)")
parser.add_argument("--clip", type=common.unit_value, metavar="C",
                    help="the original WGAN instead: clip every critic weight to [-C, C] after "
                         "each critic step, RMSprop, no gradient penalty (the paper: 0.01)")

NATIVE_SIZE = {"mnist": 28, "fashion-mnist": 28, "fake": 28, "cifar10": 32, "celeba": 64, "folder": 64}


def channels(dataset):
    # Number of channels in the training images: 1 for MNIST and Fashion-MNIST, 3 for colour
    return 1 if dataset in ("mnist", "fashion-mnist") else 3


# Data: resize and crop to image_size, scale [0, 1] to [-1, 1], the range of G's Tanh
def get_dataset(args, nc):
    transform = transforms.Compose([
        transforms.Resize(args.image_size),
        transforms.CenterCrop(args.image_size),
        transforms.ToTensor(),
        transforms.Normalize((0.5,) * nc, (0.5,) * nc),
    ])
    return common.load_dataset(args.dataset, args.dataroot, transform,
                               (nc, args.image_size, args.image_size))


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
# grid of dots that 2,000 iterations did not remove (README).
def weights_init(m):
    classname = m.__class__.__name__
    if classname.find('Conv') != -1:
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif classname.find('BatchNorm') != -1:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.constant_(m.bias, 0)


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


# Samples for the snapshots and --generate: G's BatchNorm in eval mode, so that each image
# depends on its own z only (README, "Sampling: BatchNorm in eval mode")
def sample(netG, noise):
    netG = common.unwrap(netG)  # torchrun: this process's copy, so no collective call
    training = netG.training
    netG.eval()
    with torch.no_grad():
        fake = netG(noise).cpu()
    netG.train(training)
    return fake


def settle_sizes(args):
    """The image size (the dataset's own unless given), the learning rate (per --clip), and a
    check of --lambda-gp."""
    if args.image_size is None:
        args.image_size = NATIVE_SIZE[args.dataset]
    if args.image_size < 4 or args.image_size % 4:
        raise common.UserError(f"--image-size {args.image_size}: the networks halve the size twice "
                               "and double it twice, so it must be a multiple of 4 (28, 32, 64...)")
    if args.lambda_gp < 0:
        raise common.UserError(f"--lambda-gp {args.lambda_gp}: a penalty weight is 0 or more")
    if args.lr is None:
        args.lr = 0.00005 if args.clip else 0.0001


def main(argv=None):
    args, ckpt = common.get_args(parser, argv, SCRIPT)
    settle_sizes(args)

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
    cudnn.benchmark = device.type == "cuda"  # one batch shape: cuDNN may pick its algorithms once
    print(f"Device: {device}" + (" (cudnn.benchmark on)" if cudnn.benchmark else ""))

    if args.generate:
        return generate(args, ckpt, device)

    print("Random Seed: ", args.seed)
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    common.prepare_out(args.out, resume_iters=ckpt["iters"] if ckpt else None)
    nc = channels(args.dataset)
    dataset = get_dataset(args, nc)
    # drop_last: every batch full, so that G's BatchNorm never sees a batch of one
    sampler = common.EpochSampler(dataset, args.seed, world)  # this process's shard
    dataloader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, sampler=sampler,
                                             num_workers=args.workers, drop_last=True,
                                             **common.loader_options(device, args.workers))
    # One iteration takes n_critic real batches (one per critic step) and makes one G step
    iterations = len(dataloader) // args.n_critic  # per epoch
    if iterations == 0:
        raise common.UserError(f"the dataset has {len(dataset)} images, fewer than --n-critic "
                               f"{args.n_critic} batches of --batch-size {args.batch_size}: "
                               "use a smaller --batch-size")
    print(f"Dataset: {args.dataset}, {len(dataset)} images of {nc}x{args.image_size}x{args.image_size}, "
          f"{len(dataloader)} batches of {args.batch_size} per epoch: {iterations} iterations of "
          f"{args.n_critic} critic steps + 1 G step")
    world.say_batch(args.batch_size)

    real_batch = next(iter(dataloader))
    common.save_grid(real_batch[0][:64], os.path.join(args.out, "real_samples.png"))

    netG = Generator(args.nz, nc, args.image_size).to(device)
    netG.apply(weights_init)  # the critic keeps PyTorch's default: its Conv2d fan-in is right
    print(netG)
    netD = Critic(nc, args.image_size).to(device)  # the critic keeps the chapter's name, D
    print(netD)
    # channels_last: the pixels' channels side by side in memory, the layout in which oneDNN (CPU)
    # and cuDNN (tensor cores) run convolutions fastest. The same numbers, in another order.
    netG = netG.to(memory_format=torch.channels_last)
    netD = netD.to(memory_format=torch.channels_last)
    # torchrun: DistributedDataParallel averages the gradients of all processes in backward
    netG, netD = world.wrap(netG), world.wrap(netD)

    fixed_noise = torch.randn(64, args.nz, device=device)
    if args.clip:
        # The original WGAN (Arjovsky et al.): RMSprop, since momentum made the clipped critic
        # unstable in their experiments
        print(f"WGAN with weight clipping to [-{args.clip}, {args.clip}]: RMSprop, lr {args.lr}, no penalty")
        optimizerD = optim.RMSprop(netD.parameters(), lr=args.lr)
        optimizerG = optim.RMSprop(netG.parameters(), lr=args.lr)
    else:
        print(f"WGAN-GP: Adam, lr {args.lr}, betas ({args.beta1}, {args.beta2}), lambda {args.lambda_gp}")
        optimizerD = optim.Adam(netD.parameters(), lr=args.lr, betas=(args.beta1, args.beta2))
        optimizerG = optim.Adam(netG.parameters(), lr=args.lr, betas=(args.beta1, args.beta2))

    # --amp: the networks' forward passes in bfloat16; the losses and the whole gradient penalty
    # in float32 (its double backward is the delicate part). Without --amp, `with amp:` does nothing.
    amp = common.autocast(device, args.amp)

    iters = 0
    if ckpt:  # --resume: the models, optimizers, fixed noise and random state where they were
        iters = common.restore(ckpt, args.resume, device, netG=netG, netD=netD,
                               optimizerG=optimizerG, optimizerD=optimizerD)
        fixed_noise = ckpt["fixed_noise"].to(device)
    world.seed_noise(args.seed, iters)  # torchrun: from here each process draws its own noise
    start_epoch, start_i = common.start_point(args, iters, iterations)

    history = common.History(os.path.join(args.out, "losses.csv"), ["Loss_C", "Loss_G", "W", "GP"],
                              rows=ckpt["history"] if ckpt else ())
    ckpt_path = os.path.join(args.out, "checkpoint.pt")

    def save_checkpoint():
        common.save_training(ckpt_path, SCRIPT, args, iters, history, device, netG=netG, netD=netD,
                             optimizerG=optimizerG, optimizerD=optimizerD, fixed_noise=fixed_noise)

    # Training loop: Algorithm 1 of WGAN-GP (and of WGAN, with clipping instead of the penalty)
    print("Starting Training Loop...")
    speed = common.IterRate(iters)
    fixed_fake = None
    stop = False
    no_penalty = torch.zeros((), device=device)
    with common.Interrupt(world) as interrupt:
        for epoch in range(start_epoch, args.epochs):
            sampler.set_epoch(epoch, start=start_i * args.n_critic * args.batch_size)
            batches = iter(dataloader)
            for i in range(start_i, iterations):

                ############################
                # (1) Update the critic n_critic times: maximize D(x) - D(G(z)) (§12.3 D 2),
                #     i.e. minimize D(G(z)) - D(x) + λ GP
                ###########################
                for _ in range(args.n_critic):
                    real = next(batches)[0].to(device, memory_format=torch.channels_last,
                                                 non_blocking=True)
                    b_size = real.size(0)
                    noise = torch.randn(b_size, args.nz, device=device)
                    with amp:
                        fake = netG(noise).detach()  # this step trains the critic only
                        critic_real = netD(real).float().mean()    # E[D(x)]
                        critic_fake = netD(fake).float().mean()    # E[D(G(z))]
                    gp = gradient_penalty(netD, real, fake.float()) if not args.clip else no_penalty
                    errD = critic_fake - critic_real + args.lambda_gp * gp
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
                noise = torch.randn(b_size, args.nz, device=device)
                with amp:
                    errG = -netD(netG(noise)).float().mean()
                netG.zero_grad()
                errG.backward()
                optimizerG.step()

                # Losses wait on the device until the next log line (no per-iteration sync)
                history.append(epoch, i, iters, errD, errG, W, gp)
                if i % args.log_every == 0:
                    row = history.flush()
                    print('[%d/%d][%d/%d]\tLoss_C: %.4f\tLoss_G: %.4f\tW: %.4f\tGP: %.4f\t%.2f it/s'
                          % (epoch, args.epochs, i, iterations, *row[3:], speed(iters + 1)), flush=True)

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

    # Results: W, the number that tracks quality (it should fall as G improves), beside the losses
    common.plot_losses({"W = D(x) - D(G(z))": history.column("W"), "critic": history.column("Loss_C"),
                        "G": history.column("Loss_G")},
                       "Critic's Wasserstein estimate and the losses during training",
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
    netG = Generator(args.nz, channels(args.dataset), args.image_size).to(device)
    common.load_state(netG, ckpt["netG"], "the generator", args.checkpoint)
    torch.manual_seed(args.seed)
    noise = torch.randn(args.generate, args.nz, device=device)
    fake = torch.cat([sample(netG, z) for z in noise.split(256)])
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "generated.png")
    common.save_grid(fake, path, nrow=math.ceil(math.sqrt(args.generate)))
    print(f"Wrote {args.generate} samples of {args.checkpoint} to {path}")
    return 0


if __name__ == "__main__":
    common.cli(main)
