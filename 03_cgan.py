"""Conditional DCGAN: the chapter's §12.5 tutorial, a GAN that draws the digit you ask for.

    pip install -r requirements.txt
    python 03_cgan.py                                   # MNIST 32x32, 20 epochs; row i of the grid = digit i
    python 03_cgan.py --generate 10 --labels 7          # ten 7s from the trained checkpoint
    python 03_cgan.py --generate 100                    # ten of each class, one row per class
    python 03_cgan.py --dataset fashion-mnist           # the same model on clothing classes
    python 03_cgan.py --dataset folder --dataroot my_labelled_images   # classes = sub-folders
    torchrun --nproc_per_node=4 03_cgan.py              # 4 GPUs (README, "More than one GPU")

A run writes into runs/03_cgan-<dataset>/ (or --out): real_samples.png, fake_samples_XXXXXX.png,
progress.gif, real_vs_fake.png, losses.csv, losses.png, checkpoint.pt and netG.pt.
"""
import os
import random

import torch
import torch.backends.cudnn as cudnn
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
import torch.utils.data
import torchvision.transforms as transforms

import common

SCRIPT = "03_cgan"

# §12.5.2 Settings: the chapter's values, each one a flag (python 03_cgan.py --help)
parser = common.make_parser(
    __doc__,
    datasets=["mnist", "fashion-mnist", "cifar10", "folder", "fake"],
    dataset="mnist",
    dataroot="data",     # Root directory for dataset
    workers=None,        # the chapter: 2; 0 for in-memory data, else min(4, CPUs) (README, Speed)
    amp=False,           # --amp: bfloat16 forward passes (not in the chapter; README, Speed)
    batch_size=128,      # Batch size during training
    nz=100,              # Size of z latent vector (i.e. size of generator input)
    ngf=128,             # Size of feature maps in generator
    ndf=128,             # Size of feature maps in discriminator
    epochs=20,           # Number of training epochs
    lr=0.0002,           # Learning rate for optimizers
    beta1=0.5,           # Beta1 hyperparam for Adam optimizers
    seed=999,            # manualSeed
    log_every=50,
    sample_every=500,
)
# Spatial size of training images: G below goes 4 -> 8 -> 16 -> 32 and D back, so only 32
parser.add_argument("--image-size", type=int, default=32, choices=[32],
                    help="fixed at 32 by the architecture (default: 32)")
parser.add_argument("--labels", type=common.label_list, metavar="L[,L...]",
                    help="with --generate N: the classes to draw, one row each, N split "
                         "evenly over them (default: all classes)")


def channels(dataset):
    # Number of channels in the training images: 1 for MNIST and Fashion-MNIST, 3 for colour
    return 1 if dataset in ("mnist", "fashion-mnist") else 3


# Create the dataset: the chapter's transform (resize to 32, scale [0, 1] to [-1, 1], the
# range of G's Tanh), with a centre crop so that non-square folder images come out 32x32 too
def get_dataset(args, nc):
    transform = transforms.Compose([
        transforms.Resize(args.image_size),
        transforms.CenterCrop(args.image_size),
        transforms.ToTensor(),
        transforms.Normalize((0.5,) * nc, (0.5,) * nc),
    ])
    return common.load_dataset(args.dataset, args.dataroot, transform,
                               (nc, args.image_size, args.image_size))


def class_names(dataset):
    """The dataset's classes in label order: MNIST's "0 - zero"..., a folder's sub-folders."""
    return [str(c) for c in dataset.classes]


# Custom weights initialization called on netG and netD: convolutions from N(0, 0.02),
# BatchNorm scale from N(1, 0.02) and shift 0. (The chapter's §12.5 listing draws the BatchNorm
# scale from N(0, 0.02), which starts every BatchNorm near zero output; its own comment calls
# N(1, 0.02) the original, which the DCGAN paper and §12.4 use.)
def weights_init(m):
    classname = m.__class__.__name__
    if classname.find('Conv') != -1:
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif classname.find('BatchNorm') != -1:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.constant_(m.bias, 0)


# Fig. 15 Generator G(z|y): z and the one-hot label y go through two separate first layers,
# whose outputs are concatenated (the "joint hidden representation" of §12.5.1), then the
# DCGAN's strided transposed convolutions up to an nc x 32 x 32 image.
class Generator(nn.Module):
    def __init__(self, nz, ngf, nc, num_classes):
        super().__init__()
        self.deconv1_1 = nn.ConvTranspose2d(nz, ngf * 2, 4, 1, 0)           # z: nz x 1 x 1
        self.deconv1_1_bn = nn.BatchNorm2d(ngf * 2)
        self.deconv1_2 = nn.ConvTranspose2d(num_classes, ngf * 2, 4, 1, 0)  # y: classes x 1 x 1
        self.deconv1_2_bn = nn.BatchNorm2d(ngf * 2)
        self.deconv2 = nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1)
        self.deconv2_bn = nn.BatchNorm2d(ngf * 2)
        self.deconv3 = nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1)
        self.deconv3_bn = nn.BatchNorm2d(ngf)
        self.deconv4 = nn.ConvTranspose2d(ngf, nc, 4, 2, 1)

    def forward(self, input, label):
        x = F.relu(self.deconv1_1_bn(self.deconv1_1(input)))
        # state size. (ngf*2) x 4 x 4
        y = F.relu(self.deconv1_2_bn(self.deconv1_2(label)))
        # state size. (ngf*2) x 4 x 4
        x = torch.cat([x, y], 1)
        # state size. (ngf*4) x 4 x 4
        x = F.relu(self.deconv2_bn(self.deconv2(x)))
        # state size. (ngf*2) x 8 x 8
        x = F.relu(self.deconv3_bn(self.deconv3(x)))
        # state size. (ngf) x 16 x 16
        x = torch.tanh(self.deconv4(x))
        # state size. (nc) x 32 x 32
        return x


# Fig. 15 Discriminator D(x|y): the image and its label, as one-hot label maps (num_classes x
# 32 x 32, all ones in the label's channel), through two separate first convolutions,
# concatenated, then the DCGAN's strided convolutions down to one probability.
class Discriminator(nn.Module):
    def __init__(self, nc, ndf, num_classes):
        super().__init__()
        self.conv1_1 = nn.Conv2d(nc, ndf // 2, 4, 2, 1)           # x: nc x 32 x 32
        self.conv1_2 = nn.Conv2d(num_classes, ndf // 2, 4, 2, 1)  # y: classes x 32 x 32
        self.conv2 = nn.Conv2d(ndf, ndf * 2, 4, 2, 1)
        self.conv2_bn = nn.BatchNorm2d(ndf * 2)
        self.conv3 = nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1)
        self.conv3_bn = nn.BatchNorm2d(ndf * 4)
        self.conv4 = nn.Conv2d(ndf * 4, 1, 4, 1, 0)

    def forward(self, input, label):
        x = F.leaky_relu(self.conv1_1(input), 0.2)
        # state size. (ndf/2) x 16 x 16
        y = F.leaky_relu(self.conv1_2(label), 0.2)
        # state size. (ndf/2) x 16 x 16
        x = torch.cat([x, y], 1)
        # state size. (ndf) x 16 x 16
        x = F.leaky_relu(self.conv2_bn(self.conv2(x)), 0.2)
        # state size. (ndf*2) x 8 x 8
        x = F.leaky_relu(self.conv3_bn(self.conv3(x)), 0.2)
        # state size. (ndf*4) x 4 x 4
        x = torch.sigmoid(self.conv4(x))
        # state size. 1 x 1 x 1
        return x


# Label preprocess, the chapter's two tables, built once and indexed by a batch of labels:
# onehot[y] is G's input (num_classes x 1 x 1), fill[y] is D's (num_classes x 32 x 32, ones in
# channel y, zeros elsewhere).
def label_tables(num_classes, image_size, device):
    onehot = torch.eye(num_classes, device=device).view(num_classes, num_classes, 1, 1)
    fill = onehot.expand(-1, -1, image_size, image_size).contiguous()
    return onehot, fill


# Sampling, for the snapshots and --generate: BatchNorm in eval mode (the running statistics of
# training's mixed-class batches), so that an image depends on its own z and y only. In train
# mode a batch of only 7s would be normalised with its own statistics, unlike any batch G was
# trained on, and --labels 7 would draw worse 7s than the grid does.
def sample(netG, noise, y_label):
    netG = common.unwrap(netG)  # torchrun: this process's copy, so no collective call
    training = netG.training
    netG.eval()
    with torch.no_grad():
        fake = netG(noise, y_label).cpu()
    netG.train(training)
    return fake


def main(argv=None):
    args, ckpt = common.get_args(parser, argv, SCRIPT)
    if args.labels and not args.generate:
        raise common.UserError("--labels picks the classes that --generate draws: "
                               "add --generate N")

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
    # Every batch but an epoch's last has the same shape: let cuDNN time its algorithms once
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
    classes = class_names(dataset)
    num_classes = len(classes)
    # Create the dataloader: the chapter's shuffled batches, the last one smaller (MNIST: 96
    # images), as the chapter has it. The sampler shuffles by (seed, epoch) so that a resumed
    # run can pick up an epoch where it stopped.
    sampler = common.EpochSampler(dataset, args.seed, world)  # this process's shard
    dataloader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, sampler=sampler,
                                             num_workers=args.workers,
                                             **common.loader_options(device, args.workers))
    batches = len(dataloader)  # per epoch
    print(f"Dataset: {args.dataset}, {len(dataset)} images in {num_classes} classes, {batches} "
          f"batches of {args.batch_size} per epoch")
    world.say_batch(args.batch_size)

    # Plot some training images
    real_batch = next(iter(dataloader))
    common.save_grid(real_batch[0][:64], os.path.join(args.out, "real_samples.png"))

    # Create the generator and the discriminator; apply weights_init to every layer
    netG = Generator(args.nz, args.ngf, nc, num_classes).to(device)
    netG.apply(weights_init)
    print(netG)
    netD = Discriminator(nc, args.ndf, num_classes).to(device)
    netD.apply(weights_init)
    print(netD)
    # channels_last: the pixels' channels side by side in memory, the layout in which oneDNN (CPU)
    # and cuDNN (tensor cores) run convolutions fastest. The same numbers, in another order.
    netG = netG.to(memory_format=torch.channels_last)
    netD = netD.to(memory_format=torch.channels_last)
    # torchrun: DistributedDataParallel averages the gradients of all processes in backward
    netG, netD = world.wrap(netG), world.wrap(netD)

    # The fixed noise: a grid with one row per class and ten columns; row i draws class i, and
    # the ten z of a row are the same in every row, so that a column holds one "style" (stroke
    # width, slant) across all the classes
    onehot, fill = label_tables(num_classes, args.image_size, device)
    fixed_noise = torch.randn(10, args.nz, 1, 1, device=device).repeat(num_classes, 1, 1, 1)
    fixed_y = torch.arange(num_classes, device=device).repeat_interleave(10)

    # Initialize BCELoss function: Eq. (4), the GAN's two cross-entropy terms with D and G
    # conditioned on y
    criterion = nn.BCELoss()

    # Establish convention for real and fake labels during training. A tensor of each for a
    # full batch, made once; the epoch's smaller last batch takes its first b_size entries.
    real_label = 1.
    fake_label = 0.
    y_real_ = torch.full((args.batch_size,), real_label, device=device)
    y_fake_ = torch.full((args.batch_size,), fake_label, device=device)

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
                             optimizerG=optimizerG, optimizerD=optimizerD, fixed_noise=fixed_noise,
                             classes=classes)

    # Training Loop: §12.4.5's, with every image of D and G paired with its class
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
                # (1) Update D network: maximize log(D(x|y)) + log(1 - D(G(z|y)|y))
                ###########################
                ## Train with all-real batch, each image with its own label's maps
                netD.zero_grad()
                real_cpu = data[0].to(device, memory_format=torch.channels_last, non_blocking=True)
                b_size = real_cpu.size(0)
                y_fill_ = fill[data[1].to(device, non_blocking=True)]   # b_size x classes x 32 x 32
                with amp:
                    output = netD(real_cpu, y_fill_).view(-1)
                errD_real = criterion(output.float(), y_real_[:b_size])  # -log D(x|y)
                errD_real.backward()
                D_x = output.mean()

                ## Train with all-fake batch: fresh z, and labels drawn uniformly from the classes
                z_ = torch.randn(b_size, args.nz, 1, 1, device=device)
                y_ = torch.randint(num_classes, (b_size,), device=device)
                y_label_ = onehot[y_]                                   # b_size x classes x 1 x 1
                y_fill_ = fill[y_]
                with amp:
                    fake = netG(z_, y_label_)
                    # detach(): this step trains D; the gradient stops at the fake images
                    output = netD(fake.detach(), y_fill_).view(-1)
                errD_fake = criterion(output.float(), y_fake_[:b_size])  # -log(1 - D(G(z|y)|y))
                errD_fake.backward()
                D_G_z1 = output.mean()
                # Add the gradients from the all-real and all-fake batches
                errD = errD_real + errD_fake
                # Update D
                optimizerD.step()

                ############################
                # (2) Update G network: maximize log(D(G(z|y)|y))
                ###########################
                netG.zero_grad()
                # As the chapter: a new batch of z and of labels for G's step
                z_ = torch.randn(b_size, args.nz, 1, 1, device=device)
                y_ = torch.randint(num_classes, (b_size,), device=device)
                y_label_ = onehot[y_]
                y_fill_ = fill[y_]
                with amp:
                    fake = netG(z_, y_label_)
                    output = netD(fake, y_fill_).view(-1)
                # fake labels are real for generator cost: -log D(G(z|y)|y), the non-saturating loss
                errG = criterion(output.float(), y_real_[:b_size])
                errG.backward()
                D_G_z2 = output.mean()
                # Update G
                optimizerG.step()

                # Save Losses for plotting later (kept on the device until the next log line)
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
                    fixed_fake = sample(netG, fixed_noise, onehot[fixed_y])
                    common.save_grid(fixed_fake, os.path.join(args.out, f"fake_samples_{iters:06d}.png"),
                                     nrow=10)

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
                fixed_fake = sample(netG, fixed_noise, onehot[fixed_y])
                common.save_grid(fixed_fake, snapshot, nrow=10)

    # Save the trained model: the generator alone
    common.save_checkpoint(common.unwrap(netG).state_dict(), os.path.join(args.out, "netG.pt"))

    # Results: the loss plot, G's progression, real beside fake
    G_losses, D_losses = history.column("Loss_G"), history.column("Loss_D")
    common.plot_losses({"G": G_losses, "D": D_losses}, "Generator and Discriminator Loss During Training",
                       os.path.join(args.out, "losses.png"))
    common.write_gif(args.out, os.path.join(args.out, "progress.gif"))
    if fixed_fake is None:  # resumed, and no snapshot fell in this part of the run
        fixed_fake = sample(netG, fixed_noise, onehot[fixed_y])
    common.save_real_vs_fake(real_batch[0][:64], fixed_fake, os.path.join(args.out, "real_vs_fake.png"),
                             fake_nrow=10)

    print(f"Wrote {args.out}/: real_samples.png, fake_samples_*.png, progress.gif, "
          "real_vs_fake.png, losses.csv, losses.png, checkpoint.pt, netG.pt")
    if interrupt.requested:
        print(f"Stopped by Ctrl-C after {iters} iterations. Go on with: "
              f"python {SCRIPT}.py --resume {ckpt_path}")
        return 130
    return 0


# --generate N [--labels L,...]: N new samples in all, one row per requested class (default:
# every class), from the generator of a checkpoint (or of a netG.pt, whose sizes come from the
# flags; its number of classes from its weights)
def generate(args, ckpt, device):
    num_classes = ckpt["netG"]["deconv1_2.weight"].shape[0]
    classes = ckpt.get("classes") or [str(c) for c in range(num_classes)]
    labels = args.labels if args.labels else list(range(num_classes))
    bad = [y for y in labels if not 0 <= y < num_classes]
    if bad:
        names = "" if classes == [str(c) for c in range(num_classes)] else \
            " (" + ", ".join(f"{c}: {name}" for c, name in enumerate(classes)) + ")"
        raise common.UserError(f"--labels {','.join(map(str, bad))}: this generator knows "
                               f"{num_classes} classes, numbered 0 to {num_classes - 1}{names}")
    per_class, rest = divmod(args.generate, len(labels))
    if per_class == 0 or rest:
        raise common.UserError(f"--generate {args.generate} does not split into equal rows for "
                               f"{len(labels)} classes: use a multiple of {len(labels)}")
    netG = Generator(args.nz, args.ngf, channels(args.dataset), num_classes).to(device)
    common.load_state(netG, ckpt["netG"], "the generator", args.checkpoint)
    onehot, _ = label_tables(num_classes, args.image_size, device)
    torch.manual_seed(args.seed)
    noise = torch.randn(args.generate, args.nz, 1, 1, device=device)
    y = torch.tensor(labels, device=device).repeat_interleave(per_class)
    # Eval-mode BatchNorm: chunks give exactly the images one big batch would
    fake = torch.cat([sample(netG, z, onehot[c]) for z, c in zip(noise.split(256), y.split(256))])
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "generated.png")
    common.save_grid(fake, path, nrow=per_class)
    print(f"Wrote {args.generate} samples of {args.checkpoint} to {path}: one row each for "
          + ", ".join(classes[c] for c in labels))
    return 0


if __name__ == "__main__":
    common.cli(main)
