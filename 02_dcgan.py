"""DCGAN: the chapter's §12.4 tutorial (CelebA faces, 64x64) and its §12.4.6 MNIST variant.

    pip install -r requirements.txt
    python 02_dcgan.py --dataset celeba --epochs 5                      # §12.4 on CelebA 64x64
    python 02_dcgan.py --dataset mnist --ngf 128 --ndf 128 --epochs 20  # §12.4.6 (downloads MNIST)
    python 02_dcgan.py --dataset fake --max-steps 20 --ngf 16 --ndf 16  # a quick try, no data
    python 02_dcgan.py --resume runs/02_dcgan-celeba/checkpoint.pt      # go on after Ctrl-C
    python sample.py runs/02_dcgan-celeba/checkpoint.pt --n 64          # new faces (sample.py)
    torchrun --nproc_per_node=4 02_dcgan.py --dataset celeba            # 4 GPUs (docs/shared.md)

A run writes into runs/02_dcgan-<dataset>/ (or --out): real_samples.png, fake_samples_XXXXXX.png,
progress.gif, real_vs_fake.png, losses.csv, losses.png, checkpoint.pt and netG.pt.
The lesson notes, results and choices of this script: docs/02_dcgan.md.
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

SCRIPT = "02_dcgan"

# §12.4.1 Basic settings: the chapter's values are the defaults of the flags (--help)
parser = common.make_parser(
    __doc__,
    datasets=["celeba", "mnist", "fashion-mnist", "cifar10", "folder", "fake"],
    dataset="celeba",    # the chapter's faces, in <dataroot>/celeba/img_align_celeba/
    dataroot="data",
    workers=None,        # the chapter has 2; we pick by dataset (docs/speed.md)
    batch_size=128,
    nz=100,
    ngf=64,              # §12.4.6 doubles it for MNIST: 128
    ndf=64,              # §12.4.6: 128
    epochs=5,            # §12.4.6: 20
    lr=0.0002,
    beta1=0.5,
    seed=999,            # the chapter's manualSeed
    log_every=50,
    sample_every=500,
)
# G and D below are built for 64x64 (4x4 doubled four times): the flag refuses other sizes
# rather than pretend the networks could honour them.
parser.add_argument("--image-size", type=int, default=64, choices=[64],
                    help="fixed at 64 by the architecture (default: 64)")


def channels(dataset):
    return 1 if dataset in ("mnist", "fashion-mnist") else 3  # nc: grey digits 1, colour 3


# §12.4.1 Prepare data: the CelebA transform for every dataset. Normalize maps [0, 1] to
# [-1, 1], the range of G's Tanh. (§12.4.6 drops CenterCrop for MNIST: on squares it is a no-op.)
def get_dataset(dataset, dataroot, image_size, nc):
    transform = transforms.Compose([
        transforms.Resize(image_size),
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        transforms.Normalize((0.5,) * nc, (0.5,) * nc),
    ])
    # celeba: dset.ImageFolder(root=<dataroot>/celeba); mnist: dset.MNIST(download=True), as
    # §12.4.6; folder: any ImageFolder; fake: FakeData, to try the script without data
    return common.load_dataset(dataset, dataroot, transform, (nc, image_size, image_size))


# §12.4.6 weights_init, the DCGAN paper's: convolutions N(0, 0.02), BatchNorm scale N(1, 0.02).
# The §12.4.6 listing draws the BatchNorm scale from N(0, 0.02), which silences every BatchNorm
# at the start; its own comment names 1.0 as the original, and we keep the original.
def weights_init(m):
    classname = m.__class__.__name__
    if classname.find('Conv') != -1:
        nn.init.normal_(m.weight.data, 0.0, 0.02)
    elif classname.find('BatchNorm') != -1:
        nn.init.normal_(m.weight.data, 1.0, 0.02)
        nn.init.constant_(m.bias.data, 0)


# §12.4.2 Generator (Fig. 8): z up to an nc x 64 x 64 image, doubling the size at each
# transposed convolution. The sizes are arguments, not globals, so the class stands alone.
class Generator(nn.Module):
    def __init__(self, nz, ngf, nc):
        super(Generator, self).__init__()
        self.main = nn.Sequential(
            # input: z, nz x 1 x 1
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


# §12.4.3 Discriminator (Fig. 9): an image down to the probability that it is real. Why strided
# convolutions, BatchNorm and LeakyReLU: §12.4.3, and the DCGAN paper's guidelines.
class Discriminator(nn.Module):
    def __init__(self, nc, ndf):
        super(Discriminator, self).__init__()
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


# G's images for the snapshots and sample.py, with BatchNorm in eval mode: its running
# statistics, so an image depends on its own z only, not on the rest of its grid (the chapter
# samples in train mode; the comparison is in docs/02_dcgan.md).
def sample(netG, noise):
    netG = common.unwrap(netG)  # torchrun: this process's copy, so no collective call
    training = netG.training
    netG.eval()
    with torch.no_grad():
        fake = netG(noise).detach().cpu()
    netG.train(training)
    return fake


def main(argv=None):
    args, ckpt = common.get_args(parser, argv, SCRIPT)
    dataroot, workers, batch_size, image_size = args.dataroot, args.workers, args.batch_size, args.image_size
    nz, ngf, ndf, num_epochs, lr, beta1 = args.nz, args.ngf, args.ndf, args.epochs, args.lr, args.beta1
    nc = channels(args.dataset)

    # An NVIDIA GPU, else Apple's, else the CPU
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available()
                          else "mps" if torch.backends.mps.is_available() else "cpu")
    # The run's folder, checkpoints, Ctrl-C and torchrun (common.Run; docs/shared.md)
    run = common.Run(SCRIPT, args, ckpt, device)
    device = run.device  # under torchrun: this process's GPU
    cudnn.benchmark = device.type == "cuda"  # one batch shape: cuDNN may time its algorithms once

    # the chapter's seed, so that a run can be repeated
    manualSeed = args.seed
    print("Random Seed: ", manualSeed)
    random.seed(manualSeed)
    torch.manual_seed(manualSeed)

    dataset = get_dataset(args.dataset, dataroot, image_size, nc)
    # drop_last: a last, smaller batch (of one, maybe) would upset BatchNorm. run.dataloader
    # shuffles by (seed, epoch) so that a resumed run can finish its epoch.
    dataloader = run.dataloader(dataset, batch_size=batch_size, num_workers=workers, drop_last=True)

    # the chapter's "Training Images", as a file
    real_batch = next(iter(dataloader))
    common.save_grid(real_batch[0][:64], os.path.join(args.out, "real_samples.png"))

    # §12.4.2-3's networks, with §12.4.6's weights_init
    netG = Generator(nz, ngf, nc).to(device)
    netG.apply(weights_init)
    print(netG)
    netD = Discriminator(nc, ndf).to(device)
    netD.apply(weights_init)
    print(netD)
    # channels_last: the layout in which oneDNN and cuDNN convolve fastest; same numbers
    netG, netD = netG.to(memory_format=torch.channels_last), netD.to(memory_format=torch.channels_last)
    # the chapter's DataParallel for several GPUs: torchrun's DistributedDataParallel instead
    netG, netD = run.parallel(netG), run.parallel(netD)

    # §12.4.4 Loss functions and optimizers. BCELoss's target y picks the term of Eq. (1):
    # y = 1 gives -log D(x), y = 0 gives -log(1 - D(G(z))).
    criterion = nn.BCELoss()

    # 64 latent vectors drawn once, to watch G's progress on the same points
    fixed_noise = torch.randn(64, nz, 1, 1, device=device)

    # the GAN paper's convention: real 1, fake 0
    real_label = 1.
    fake_label = 0.

    optimizerD = optim.Adam(netD.parameters(), lr=lr, betas=(beta1, 0.999))
    optimizerG = optim.Adam(netG.parameters(), lr=lr, betas=(beta1, 0.999))
    # What a checkpoint holds; --resume loads it back into these objects here
    run.keep(lambda: sample(netG, fixed_noise), netG=netG, netD=netD, optimizerG=optimizerG,
             optimizerD=optimizerD, fixed_noise=fixed_noise)

    # §12.4.5 Training Loop. run.append keeps the losses (G_losses, D_losses, losses.csv); the
    # snapshots go to files, not img_list.
    iters = run.iters  # 0, or where a resumed run stopped

    print("Starting Training Loop...")
    for epoch in range(num_epochs):
        # run.enumerate: the chapter's enumerate, which also resumes, saves and stops
        for i, data in run.enumerate(dataloader, epoch):

            ############################
            # (1) Update D network: maximize log(D(x)) + log(1 - D(G(z)))
            ###########################
            netD.zero_grad()
            # channels_last like the models (else the first convolution converts it); non_blocking
            # where it is pinned (CUDA): no wait for the GPU
            real_cpu = data[0].to(device, memory_format=torch.channels_last, non_blocking=run.pinned)
            b_size = real_cpu.size(0)
            label = torch.full((b_size,), real_label, dtype=torch.float, device=device)
            output = netD(real_cpu).view(-1)
            errD_real = criterion(output, label)  # -log D(x): Eq. (1)'s first term, to minimise
            errD_real.backward()
            D_x = output.mean().detach()  # no .item(): it would make the CPU wait for the GPU

            noise = torch.randn(b_size, nz, 1, 1, device=device)
            fake = netG(noise)
            label.fill_(fake_label)
            # detach(): this step trains D, so no gradient flows on into G
            output = netD(fake.detach()).view(-1)
            errD_fake = criterion(output, label)  # -log(1 - D(G(z))): the second term
            errD_fake.backward()  # adds to errD_real's gradients: one step for the sum
            D_G_z1 = output.mean().detach()
            errD = errD_real + errD_fake
            optimizerD.step()

            ############################
            # (2) Update G network: maximize log(D(G(z)))
            ###########################
            netG.zero_grad()
            # target 1 for fakes: the non-saturating loss -log D(G(z)), strong while D wins (§12.3 D)
            label.fill_(real_label)
            # D has just changed, so it judges the same fakes again
            output = netD(fake).view(-1)
            errG = criterion(output, label)
            errG.backward()
            D_G_z2 = output.mean().detach()
            optimizerG.step()

            if i % args.log_every == 0:  # .item() below: the loop's one wait for the GPU
                print('[%d/%d][%d/%d]\tLoss_D: %.4f\tLoss_G: %.4f\tD(x): %.4f\tD(G(z)): %.4f / %.4f'
                      % (epoch, num_epochs, i, len(dataloader),
                         errD.item(), errG.item(), D_x, D_G_z1, D_G_z2), run.speed())
            run.append(Loss_D=errD, Loss_G=errG, D_x=D_x, D_G_z1=D_G_z1, D_G_z2=D_G_z2)

            # G's progress on fixed_noise, every sample_every iterations and at the end
            if (iters % args.sample_every == 0) or ((epoch == num_epochs-1) and (i == len(dataloader)-1)):
                run.snapshot(sample(netG, fixed_noise), iters)

            iters += 1
        if run.stopped:  # Ctrl-C, SIGTERM or --max-steps: run.enumerate has saved
            break

    # §12.4.5 Results: the loss plot, G's progression (progress.gif), real vs. fake, and the
    # trained generator (netG.pt, the chapter's parameters_netG.pt)
    G_losses, D_losses = run.column("Loss_G"), run.column("Loss_D")
    return run.finish(real_batch[0][:64], {"G": G_losses, "D": D_losses},
                      "Generator and Discriminator Loss During Training")


if __name__ == "__main__":
    common.cli(main)
