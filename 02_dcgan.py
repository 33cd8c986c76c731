"""DCGAN: the chapter's §12.4 tutorial (CelebA faces, 64x64) and its §12.4.6 MNIST variant.

    pip install -r requirements.txt
    python 02_dcgan.py --dataset celeba --epochs 5                      # §12.4 on CelebA 64x64
    python 02_dcgan.py --dataset mnist --ngf 128 --ndf 128 --epochs 20  # §12.4.6 (downloads MNIST)
    python 02_dcgan.py --dataset fake --max-steps 20                    # a quick try, no data
    python 02_dcgan.py --resume runs/02_dcgan-celeba/checkpoint.pt      # go on after Ctrl-C
    python 02_dcgan.py --generate 64 --checkpoint runs/02_dcgan-celeba/checkpoint.pt
    torchrun --nproc_per_node=4 02_dcgan.py --dataset celeba  # 4 GPUs (README, "More than one GPU")

A run writes into runs/02_dcgan-<dataset>/ (or --out): real_samples.png, fake_samples_XXXXXX.png,
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

SCRIPT = "02_dcgan"

# §12.4.1 Basic settings: the chapter's values, each one a flag (python 02_dcgan.py --help)
parser = common.make_parser(
    __doc__,
    datasets=["celeba", "mnist", "fashion-mnist", "cifar10", "folder", "fake"],
    dataset="celeba",    # the chapter's faces, in <dataroot>/celeba/img_align_celeba/
    dataroot="data",     # Root directory for dataset
    workers=None,        # the chapter: 2; 0 for in-memory data, else min(4, CPUs) (README, Speed)
    amp=False,           # --amp: bfloat16 forward passes (not in the chapter; README, Speed)
    batch_size=128,      # Batch size during training
    nz=100,              # Size of z latent vector (i.e. size of generator input)
    ngf=64,              # Size of feature maps in generator (§12.4.6 doubles it: 128)
    ndf=64,              # Size of feature maps in discriminator (§12.4.6: 128)
    epochs=5,            # Number of training epochs (§12.4.6: 20)
    lr=0.0002,           # Learning rate for optimizers
    beta1=0.5,           # Beta1 hyperparam for Adam optimizers
    seed=999,            # manualSeed
    log_every=50,        # print the training stats every 50 iterations
    sample_every=500,    # keep G's output on fixed_noise every 500 iterations
)
# Spatial size of training images. G and D below are built for 64x64 (4x4 doubled four times),
# so the flag only accepts 64 rather than pretend the networks could honour another size.
parser.add_argument("--image-size", type=int, default=64, choices=[64],
                    help="fixed at 64 by the architecture (default: 64)")


def channels(dataset):
    # Number of channels in the training images: 3 for colour, 1 for MNIST (§12.4.6, change 2)
    return 1 if dataset in ("mnist", "fashion-mnist") else 3


# §12.4.1 Prepare data. Every dataset goes through the chapter's CelebA transform: resize the
# short side to 64, crop the centre square, and scale [0, 1] to [-1, 1], the range of G's Tanh.
# (§12.4.6 leaves CenterCrop out for MNIST; on square digits it changes nothing.)
def get_dataset(args, nc):
    transform = transforms.Compose([
        transforms.Resize(args.image_size),
        transforms.CenterCrop(args.image_size),
        transforms.ToTensor(),
        transforms.Normalize((0.5,) * nc, (0.5,) * nc),
    ])
    # celeba: dset.ImageFolder(root=<dataroot>/celeba), which needs the images one sub-folder
    # down, as §12.4.1 explains; mnist: dset.MNIST(download=True) as §12.4.6; folder: any
    # ImageFolder; fake: torchvision's FakeData, for trying the script without data.
    return common.load_dataset(args.dataset, args.dataroot, transform,
                               (nc, args.image_size, args.image_size))


# Custom weights initialization called on netG and netD, as in the DCGAN paper: every
# convolution from N(0, 0.02); BatchNorm scale from N(1, 0.02) and shift 0. (The §12.4.6 listing
# draws the BatchNorm scale from N(0, 0.02), which starts each BatchNorm near zero output; its
# own comment names 1.0 as the original.)
def weights_init(m):
    classname = m.__class__.__name__
    if classname.find('Conv') != -1:
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif classname.find('BatchNorm') != -1:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.constant_(m.bias, 0)


# §12.4.2 Generator: z, a point of the latent space, up to an nc x 64 x 64 image. Strided
# transposed convolutions double the size at each step; each but the last is followed by
# BatchNorm and ReLU; Tanh returns the image to the data's range [-1, 1].
class Generator(nn.Module):
    def __init__(self, nz, ngf, nc):
        super().__init__()
        self.main = nn.Sequential(
            # input is Z, going into a convolution
            nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ngf * 8),
            nn.ReLU(True),
            # state size. (ngf*8) x 4 x 4
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf * 4),
            nn.ReLU(True),
            # state size. (ngf*4) x 8 x 8
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf * 2),
            nn.ReLU(True),
            # state size. (ngf*2) x 16 x 16
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf),
            nn.ReLU(True),
            # state size. (ngf) x 32 x 32
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False),
            nn.Tanh()
            # state size. (nc) x 64 x 64
        )

    def forward(self, input):
        return self.main(input)


# §12.4.3 Discriminator: an nc x 64 x 64 image down to one probability that it is real. Strided
# convolutions instead of pooling (the network learns its own downsampling), BatchNorm on all
# but the input and output layers, LeakyReLU(0.2) for healthy gradients, Sigmoid at the end.
class Discriminator(nn.Module):
    def __init__(self, nc, ndf):
        super().__init__()
        self.main = nn.Sequential(
            # input is (nc) x 64 x 64
            nn.Conv2d(nc, ndf, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
            # state size. (ndf) x 32 x 32
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 2),
            nn.LeakyReLU(0.2, inplace=True),
            # state size. (ndf*2) x 16 x 16
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 4),
            nn.LeakyReLU(0.2, inplace=True),
            # state size. (ndf*4) x 8 x 8
            nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 8),
            nn.LeakyReLU(0.2, inplace=True),
            # state size. (ndf*8) x 4 x 4
            nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False),
            nn.Sigmoid()
            # state size. 1 x 1 x 1
        )

    def forward(self, input):
        return self.main(input)


# Sampling, for the fixed-noise snapshots and for --generate alike. BatchNorm in eval mode uses
# the running statistics gathered in training, so each image depends on its own z only: the
# same z gives the same face in a grid of 64 or alone, and sampling changes no buffer of netG.
# (In train mode each image would be normalised with its grid's statistics. The comparison on
# a real run is in README.md.)
def sample(netG, noise):
    netG = common.unwrap(netG)  # torchrun: this process's copy, so no collective call
    training = netG.training
    netG.eval()
    with torch.no_grad():
        fake = netG(noise).cpu()
    netG.train(training)
    return fake


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
    # Every batch has the same shape, so cuDNN may time its algorithms once and keep the fastest
    cudnn.benchmark = device.type == "cuda"
    print(f"Device: {device}" + (" (cudnn.benchmark on)" if cudnn.benchmark else ""))

    if args.generate:
        return generate(args, ckpt, device)

    # Set random seed for reproducibility
    print("Random Seed: ", args.seed)
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    common.prepare_out(args.out, resume_iters=ckpt["iters"] if ckpt else None)
    nc = channels(args.dataset)
    dataset = get_dataset(args, nc)
    # Create the dataloader: the chapter's shuffled batches, and drop_last=True so that a last,
    # smaller batch never reaches BatchNorm (a batch of one has no statistics). The sampler
    # shuffles like shuffle=True but by (seed, epoch), so that a resumed run can pick up an
    # epoch where it stopped.
    sampler = common.EpochSampler(dataset, args.seed, world)  # this process's shard
    dataloader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, sampler=sampler,
                                             num_workers=args.workers, drop_last=True,
                                             **common.loader_options(device, args.workers))
    batches = len(dataloader)  # per epoch
    if batches == 0:
        raise common.UserError(f"the dataset has {len(dataset)} images, fewer than one batch "
                               f"(--batch-size {args.batch_size}): use a smaller --batch-size")
    print(f"Dataset: {args.dataset}, {len(dataset)} images, {batches} batches of "
          f"{args.batch_size} per epoch")
    world.say_batch(args.batch_size)

    # Plot some training images: the chapter's "Training Images", as a file
    real_batch = next(iter(dataloader))
    common.save_grid(real_batch[0][:64], os.path.join(args.out, "real_samples.png"))

    # Create the generator and the discriminator; apply weights_init to every layer
    netG = Generator(args.nz, args.ngf, nc).to(device)
    netG.apply(weights_init)
    print(netG)
    netD = Discriminator(nc, args.ndf).to(device)
    netD.apply(weights_init)
    print(netD)
    # channels_last: the pixels' channels side by side in memory, the layout in which oneDNN (CPU)
    # and cuDNN (tensor cores) run convolutions fastest. The same numbers, in another order.
    netG = netG.to(memory_format=torch.channels_last)
    netD = netD.to(memory_format=torch.channels_last)
    # torchrun: DistributedDataParallel averages the gradients of all processes in backward
    netG, netD = world.wrap(netG), world.wrap(netD)

    # §12.4.4 Loss functions and optimizers
    # BCELoss: l_n = -(y_n log x_n + (1 - y_n) log(1 - x_n)). The label y picks the term:
    # y = 1 gives -log D(x), y = 0 gives -log(1 - D(G(z))), the two terms of Eq. (1).
    criterion = nn.BCELoss()

    # Create batch of latent vectors that we will use to visualize the progression of the generator
    fixed_noise = torch.randn(64, args.nz, 1, 1, device=device)

    # Establish convention for real and fake labels during training (that of the GAN paper).
    # A tensor of each for a whole batch, made once: with drop_last every batch is full.
    real_label = 1.
    fake_label = 0.
    real_labels = torch.full((args.batch_size,), real_label, device=device)
    fake_labels = torch.full((args.batch_size,), fake_label, device=device)

    # Setup Adam optimizers for both G and D
    optimizerD = optim.Adam(netD.parameters(), lr=args.lr, betas=(args.beta1, 0.999))
    optimizerG = optim.Adam(netG.parameters(), lr=args.lr, betas=(args.beta1, 0.999))
    # --amp: the forward passes below in bfloat16; the losses in float32 (BCELoss on bfloat16
    # probabilities is not autocast-safe). Without --amp, `with amp:` does nothing.
    amp = common.autocast(device, args.amp)

    iters = 0
    if ckpt:  # --resume: the models, optimizers, fixed noise and random state where they were
        iters = common.restore(ckpt, args.resume, device, netG=netG, netD=netD,
                               optimizerG=optimizerG, optimizerD=optimizerD)
        fixed_noise = ckpt["fixed_noise"].to(device)
    world.seed_noise(args.seed, iters)  # torchrun: from here each process draws its own noise
    start_epoch, start_i = common.start_point(args, iters, batches)

    # Lists to keep track of progress: every iteration's losses and D outputs (losses.csv)
    history = common.History(os.path.join(args.out, "losses.csv"),
                             ["Loss_D", "Loss_G", "D_x", "D_G_z1", "D_G_z2"],
                             rows=ckpt["history"] if ckpt else ())
    ckpt_path = os.path.join(args.out, "checkpoint.pt")

    def save_checkpoint():
        common.save_training(ckpt_path, SCRIPT, args, iters, history, device, netG=netG, netD=netD,
                             optimizerG=optimizerG, optimizerD=optimizerD, fixed_noise=fixed_noise)

    # §12.4.5 Training Loop
    print("Starting Training Loop...")
    speed = common.IterRate(iters)
    fixed_fake = None  # G's latest output on fixed_noise
    stop = False
    with common.Interrupt(world) as interrupt, common.nan_guard(args.out):
        for epoch in range(start_epoch, args.epochs):
            sampler.set_epoch(epoch, start=start_i * args.batch_size)
            # For each batch in the dataloader
            for i, data in enumerate(dataloader, start_i):

                ############################
                # (1) Update D network: maximize log(D(x)) + log(1 - D(G(z)))
                ###########################
                ## Train with all-real batch
                netD.zero_grad()
                # Format batch
                real_cpu = data[0].to(device, memory_format=torch.channels_last, non_blocking=True)
                b_size = real_cpu.size(0)
                # Forward pass real batch through D
                with amp:
                    output = netD(real_cpu).view(-1)
                # Calculate loss on all-real batch: -log(D(x)), Eq. (3) with y = 1
                errD_real = criterion(output.float(), real_labels)
                # Calculate gradients for D in backward pass
                errD_real.backward()
                D_x = output.mean()

                ## Train with all-fake batch
                # Generate batch of latent vectors
                noise = torch.randn(b_size, args.nz, 1, 1, device=device)
                with amp:
                    # Generate fake image batch with G
                    fake = netG(noise)
                    # Classify all fake batch with D. detach(): this step trains D, so the
                    # gradient stops at the fake images instead of flowing on into G
                    output = netD(fake.detach()).view(-1)
                # Calculate D's loss on the all-fake batch: -log(1 - D(G(z))), Eq. (3) with y = 0
                errD_fake = criterion(output.float(), fake_labels)
                # Calculate the gradients for this batch, accumulated (summed) with the previous
                errD_fake.backward()
                D_G_z1 = output.mean()
                # Add the gradients from the all-real and all-fake batches
                errD = errD_real + errD_fake
                # Update D
                optimizerD.step()

                ############################
                # (2) Update G network: maximize log(D(G(z)))
                ###########################
                netG.zero_grad()
                # Since we just updated D, perform another forward pass of all-fake batch through D
                with amp:
                    output = netD(fake).view(-1)
                # fake labels are real for generator cost: BCE with y = 1 is -log(D(G(z))), the
                # non-saturating loss. Minimising log(1 - D(G(z))) as Eq. (1) has it gives G
                # almost no gradient while D still wins easily (§12.3 D).
                errG = criterion(output.float(), real_labels)
                # Calculate gradients for G
                errG.backward()
                D_G_z2 = output.mean()
                # Update G
                optimizerG.step()

                # Save Losses for plotting later. They wait on the device until the next log
                # line: an .item() here would make the CPU wait for the GPU every iteration.
                history.append(epoch, i, iters, errD, errG, D_x, D_G_z1, D_G_z2)

                # Output training stats
                if i % args.log_every == 0:
                    row = history.flush()
                    print('[%d/%d][%d/%d]\tLoss_D: %.4f\tLoss_G: %.4f\tD(x): %.4f\tD(G(z)): %.4f / %.4f'
                          '\t%.2f it/s' % (epoch, args.epochs, i, batches, *row[3:], speed(iters + 1)),
                          flush=True)

                # Check how the generator is doing by saving G's output on fixed_noise
                last = (epoch == args.epochs - 1 and i == batches - 1) or iters + 1 == args.max_steps
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
            # The end of an epoch: the checkpoint that a resumed run continues from exactly
            save_checkpoint()

        # Stopped early (--max-steps or Ctrl-C): keep the state and the last picture of it
        if stop:
            save_checkpoint()
            snapshot = os.path.join(args.out, f"fake_samples_{iters - 1:06d}.png")
            if not os.path.exists(snapshot):
                fixed_fake = sample(netG, fixed_noise)
                common.save_grid(fixed_fake, snapshot)

    # Save the trained model: the generator alone (the chapter's parameters_netG.pt)
    common.save_checkpoint(common.unwrap(netG).state_dict(), os.path.join(args.out, "netG.pt"))

    # §12.4.5 Results
    # Loss versus training iteration
    G_losses, D_losses = history.column("Loss_G"), history.column("Loss_D")
    common.plot_losses({"G": G_losses, "D": D_losses}, "Generator and Discriminator Loss During Training",
                       os.path.join(args.out, "losses.png"))
    # Visualization of G's progression: every fixed-noise snapshot, one frame per second
    common.write_gif(args.out, os.path.join(args.out, "progress.gif"))
    # Real Images vs. Fake Images: a real batch beside G's last output on fixed_noise
    if fixed_fake is None:  # resumed, and no snapshot fell in this part of the run
        fixed_fake = sample(netG, fixed_noise)
    common.save_real_vs_fake(real_batch[0][:64], fixed_fake, os.path.join(args.out, "real_vs_fake.png"))

    print(f"Wrote {args.out}/: real_samples.png, fake_samples_*.png, progress.gif, "
          "real_vs_fake.png, losses.csv, losses.png, checkpoint.pt, netG.pt")
    if interrupt.requested:
        print(f"Stopped by Ctrl-C after {iters} iterations. Go on with: "
              f"python {SCRIPT}.py --resume {ckpt_path}")
        return 130
    return 0


# --generate N: no training and no data, only the generator of a checkpoint (or of a netG.pt,
# whose sizes come from the flags) and N new samples
def generate(args, ckpt, device):
    netG = Generator(args.nz, args.ngf, channels(args.dataset)).to(device)
    common.load_state(netG, ckpt["netG"], "the generator", args.checkpoint)
    torch.manual_seed(args.seed)
    noise = torch.randn(args.generate, args.nz, 1, 1, device=device)
    # Eval-mode BatchNorm makes each image independent of the others, so chunks of 256 give
    # exactly the images one big batch would, in bounded memory
    fake = torch.cat([sample(netG, z) for z in noise.split(256)])
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "generated.png")
    common.save_grid(fake, path, nrow=math.ceil(math.sqrt(args.generate)))
    print(f"Wrote {args.generate} samples of {args.checkpoint} to {path}")
    return 0


if __name__ == "__main__":
    common.cli(main)
