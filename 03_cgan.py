"""Conditional DCGAN: the chapter's §12.5 tutorial, a GAN that draws the digit you ask for.

    pip install -r requirements.txt
    python 03_cgan.py                                   # MNIST 32x32, 20 epochs; row i of the grid = digit i
    python sample.py runs/03_cgan-mnist/checkpoint.pt --n 10 --labels 7   # ten 7s (sample.py)
    python sample.py runs/03_cgan-mnist/checkpoint.pt --n 100             # a row per class
    python sample.py runs/03_cgan-mnist/checkpoint.pt --n 100 --walk 10   # class morphs
    python 03_cgan.py --dataset folder --dataroot my_labelled_images   # classes = sub-folders
    torchrun --nproc_per_node=4 03_cgan.py              # 4 GPUs (docs/shared.md)

A run writes into runs/03_cgan-<dataset>/ (or --out): real_samples.png, fake_samples_XXXXXX.png,
progress.gif, real_vs_fake.png, losses.csv, losses.png, checkpoint.pt and netG.pt.
The lesson notes, results and choices of this script: docs/03_cgan.md.
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

# §12.5.2 Settings: the chapter's values are the defaults of the flags (--help)
parser = common.make_parser(
    __doc__,
    datasets=["mnist", "fashion-mnist", "cifar10", "folder", "fake"],
    dataset="mnist", dataroot="data", batch_size=128, nz=100, ngf=128, ndf=128, epochs=20,
    lr=0.0002, beta1=0.5, seed=999, log_every=50, sample_every=500,
    workers=None,  # the chapter has 2; we pick by dataset (docs/speed.md)
)
# G below goes 4 -> 8 -> 16 -> 32 and D back: the flag refuses other sizes
parser.add_argument("--image-size", type=int, default=32, choices=[32],
                    help="fixed at 32 by the architecture (default: 32)")


def channels(dataset):
    return 1 if dataset in ("mnist", "fashion-mnist") else 3  # nc: grey digits 1, colour 3


# §12.5.2 Create the dataset: Normalize maps [0, 1] to [-1, 1], the range of G's Tanh. The
# centre crop (not in the chapter) makes non-square folder images 32x32 too.
def get_dataset(dataset, dataroot, image_size, nc):
    transform = transforms.Compose([
        transforms.Resize(image_size),
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        transforms.Normalize((0.5,) * nc, (0.5,) * nc),
    ])
    return common.load_dataset(dataset, dataroot, transform, (nc, image_size, image_size))


# §12.5.2 weights_init, with the DCGAN paper's BatchNorm scale N(1, 0.02): the listing's
# N(0, 0.02) silences every BatchNorm at the start, and its own comment calls 1.0 the original.
def weights_init(m):
    classname = m.__class__.__name__
    if classname.find('Conv') != -1:
        nn.init.normal_(m.weight.data, 0.0, 0.02)
    elif classname.find('BatchNorm') != -1:
        nn.init.normal_(m.weight.data, 1.0, 0.02)
        nn.init.constant_(m.bias.data, 0)


# Fig. 15 Generator G(z|y): z and the one-hot y through separate first layers, concatenated
# (§12.5.1's joint hidden representation), then DCGAN layers up to an nc x 32 x 32 image
class Generator(nn.Module):
    def __init__(self, nz, ngf, nc, num_classes):
        super(Generator, self).__init__()
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
        x = F.relu(self.deconv1_1_bn(self.deconv1_1(input)))  # (ngf*2) x 4 x 4
        y = F.relu(self.deconv1_2_bn(self.deconv1_2(label)))  # (ngf*2) x 4 x 4
        x = torch.cat([x, y], 1)  # (ngf*4) x 4 x 4
        x = F.relu(self.deconv2_bn(self.deconv2(x)))  # (ngf*2) x 8 x 8
        x = F.relu(self.deconv3_bn(self.deconv3(x)))  # (ngf) x 16 x 16
        x = torch.tanh(self.deconv4(x))  # (nc) x 32 x 32
        return x


# Fig. 15 Discriminator D(x|y): the image and its label's maps through separate first
# convolutions, concatenated, then DCGAN layers down to one probability
class Discriminator(nn.Module):
    def __init__(self, nc, ndf, num_classes):
        super(Discriminator, self).__init__()
        self.conv1_1 = nn.Conv2d(nc, ndf // 2, 4, 2, 1)           # x: nc x 32 x 32
        self.conv1_2 = nn.Conv2d(num_classes, ndf // 2, 4, 2, 1)  # y: classes x 32 x 32
        self.conv2 = nn.Conv2d(ndf, ndf * 2, 4, 2, 1)
        self.conv2_bn = nn.BatchNorm2d(ndf * 2)
        self.conv3 = nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1)
        self.conv3_bn = nn.BatchNorm2d(ndf * 4)
        self.conv4 = nn.Conv2d(ndf * 4, 1, 4, 1, 0)

    def forward(self, input, label):
        x = F.leaky_relu(self.conv1_1(input), 0.2)  # (ndf/2) x 16 x 16
        y = F.leaky_relu(self.conv1_2(label), 0.2)  # (ndf/2) x 16 x 16
        x = torch.cat([x, y], 1)  # (ndf) x 16 x 16
        x = F.leaky_relu(self.conv2_bn(self.conv2(x)), 0.2)  # (ndf*2) x 8 x 8
        x = F.leaky_relu(self.conv3_bn(self.conv3(x)), 0.2)  # (ndf*4) x 4 x 4
        x = torch.sigmoid(self.conv4(x))  # 1 x 1 x 1
        return x


# §12.5.2 label preprocess, for any number of classes (the chapter's has 10): onehot[y] is G's
# label input (classes x 1 x 1), fill[y] D's (classes x 32 x 32, ones in channel y)
def label_tables(n, image_size, device):  # n classes
    onehot = torch.zeros(n, n)
    onehot = onehot.scatter_(1, torch.arange(n).view(n, 1), 1).view(n, n, 1, 1)
    fill = torch.zeros([n, n, image_size, image_size])
    for i in range(n):
        fill[i, i, :, :] = 1
    return onehot.to(device), fill.to(device)


# §12.5.2 The fixed inputs of the snapshots: row i of the grid draws class i, and the ten z of
# a row are the same in every row, so a column shows one style across all the classes
def fixed_inputs(nz, num_classes, device):
    temp_z_ = torch.randn(10, nz)
    fixed_z_ = temp_z_
    fixed_y_ = torch.zeros(10, 1)
    for i in range(num_classes - 1):
        fixed_z_ = torch.cat([fixed_z_, temp_z_], 0)
        temp = torch.ones(10, 1) + i
        fixed_y_ = torch.cat([fixed_y_, temp], 0)
    fixed_z_ = fixed_z_.view(-1, nz, 1, 1)
    fixed_y_label_ = torch.zeros(10 * num_classes, num_classes)
    fixed_y_label_.scatter_(1, fixed_y_.type(torch.LongTensor), 1)
    fixed_y_label_ = fixed_y_label_.view(-1, num_classes, 1, 1)
    return fixed_z_.to(device), fixed_y_label_.to(device)


# G's images for the snapshots and sample.py, BatchNorm in eval mode: in train mode a batch of
# only 7s would be normalised by its own statistics, unlike G's training batches (docs/03_cgan.md)
def sample(netG, noise, y_label):
    netG = common.unwrap(netG)  # torchrun: this process's copy, so no collective call
    training = netG.training
    netG.eval()
    with torch.no_grad():
        fake = netG(noise, y_label).detach().cpu()
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
    cudnn.benchmark = device.type == "cuda"  # (nearly) one batch shape: time the algorithms once

    # the chapter's seed, so that a run can be repeated
    manualSeed = args.seed
    print("Random Seed: ", manualSeed)
    random.seed(manualSeed)
    torch.manual_seed(manualSeed)

    dataset = get_dataset(args.dataset, dataroot, image_size, nc)
    classes = [str(c) for c in dataset.classes]
    num_classes = len(classes)
    # no drop_last: the last batch is smaller, as in the chapter
    dataloader = run.dataloader(dataset, batch_size=batch_size, num_workers=workers)

    # the chapter's "Training Images", as a file
    real_batch = next(iter(dataloader))
    common.save_grid(real_batch[0][:64], os.path.join(args.out, "real_samples.png"))

    netG = Generator(nz, ngf, nc, num_classes).to(device)
    netG.apply(weights_init)
    print(netG)
    netD = Discriminator(nc, ndf, num_classes).to(device)
    netD.apply(weights_init)
    print(netD)
    # channels_last: the layout in which oneDNN and cuDNN convolve fastest; same numbers
    netG, netD = netG.to(memory_format=torch.channels_last), netD.to(memory_format=torch.channels_last)
    # the chapter's DataParallel for several GPUs: torchrun's DistributedDataParallel instead
    netG, netD = run.parallel(netG), run.parallel(netD)

    fixed_z_, fixed_y_label_ = fixed_inputs(nz, num_classes, device)
    # Eq. (4): the GAN's two cross-entropy terms, with D and G both conditioned on y
    criterion = nn.BCELoss()
    optimizerD = optim.Adam(netD.parameters(), lr=lr, betas=(beta1, 0.999))
    optimizerG = optim.Adam(netG.parameters(), lr=lr, betas=(beta1, 0.999))
    onehot, fill = label_tables(num_classes, image_size, device)
    # What a checkpoint holds; --resume loads it back into these objects here
    run.keep(lambda: sample(netG, fixed_z_, fixed_y_label_), nrow=10, netG=netG, netD=netD,
             optimizerG=optimizerG, optimizerD=optimizerD, fixed_noise=fixed_z_, classes=classes)

    # §12.5.2 Training Loop: §12.4.5's, each image paired with its label. run.append keeps the
    # losses (G_losses, D_losses, losses.csv); the snapshots go to files, not img_list.
    iters = run.iters  # 0, or where a resumed run stopped

    print("Starting Training Loop...")
    for epoch in range(num_epochs):
        # the targets, made on the CPU and copied as the chapter does (.to for its .cuda()): the
        # copy waits for the GPU, here and at the epoch's last batch, where the checkpoint waits
        y_real_ = torch.ones(batch_size)
        y_fake_ = torch.zeros(batch_size)
        y_real_, y_fake_ = y_real_.to(device), y_fake_.to(device)
        # run.enumerate: the chapter's enumerate, which also resumes, saves and stops
        for i, data in run.enumerate(dataloader, epoch):
            ############################
            # (1) Update D network: maximize log(D(x|y)) + log(1 - D(G(z|y)|y))
            ###########################
            netD.zero_grad()
            # channels_last like the models; non_blocking where pinned (CUDA): no wait for the GPU
            real_cpu = data[0].to(device, memory_format=torch.channels_last, non_blocking=run.pinned)
            b_size = real_cpu.size(0)  # (the chapter's next line, label = ..., is never used)
            if b_size != batch_size:  # the epoch's last batch
                y_real_ = torch.ones(b_size)
                y_fake_ = torch.zeros(b_size)
                y_real_, y_fake_ = y_real_.to(device), y_fake_.to(device)
            y_fill_ = fill[data[1].to(device, non_blocking=run.pinned)]  # fill is on the device
            output = netD(real_cpu, y_fill_).view(-1)
            errD_real = criterion(output, y_real_)  # -log D(x|y)
            errD_real.backward()
            D_x = output.mean().detach()  # no .item(): it would make the CPU wait for the GPU

            # fakes of labels drawn uniformly; .long() keeps y_ on the device, where
            # .type(torch.LongTensor) would move it to the CPU; squeeze(1) keeps a batch of one
            z_ = torch.randn((b_size, nz), device=device).view(-1, nz, 1, 1)
            y_ = (torch.rand(b_size, 1, device=device) * num_classes).long().squeeze(1)
            y_label_ = onehot[y_]
            y_fill_ = fill[y_]
            fake = netG(z_, y_label_)
            # detach(): this step trains D, so no gradient flows on into G
            output = netD(fake.detach(), y_fill_).view(-1)
            errD_fake = criterion(output, y_fake_)  # -log(1 - D(G(z|y)|y))
            errD_fake.backward()  # adds to errD_real's gradients: one step for the sum
            D_G_z1 = output.mean().detach()
            errD = errD_real + errD_fake
            optimizerD.step()

            ############################
            # (2) Update G network: maximize log(D(G(z|y)|y))
            ###########################
            netG.zero_grad()
            z_ = torch.randn((b_size, nz), device=device).view(-1, nz, 1, 1)
            y_ = (torch.rand(b_size, 1, device=device) * num_classes).long().squeeze(1)
            y_label_ = onehot[y_]
            y_fill_ = fill[y_]
            fake = netG(z_, y_label_)
            output = netD(fake, y_fill_).view(-1)
            # target 1 for fakes: the non-saturating loss -log D(G(z|y)|y) (§12.3 D)
            errG = criterion(output, y_real_)
            errG.backward()
            D_G_z2 = output.mean().detach()
            optimizerG.step()

            if i % args.log_every == 0:  # .item() below: the loop's one wait for the GPU
                print('[%d/%d][%d/%d]\tLoss_D: %.4f\tLoss_G: %.4f\tD(x): '
                      '%.4f\tD(G(z)): %.4f / %.4f'
                      % (epoch, num_epochs, i, len(dataloader),
                         errD.item(), errG.item(), D_x, D_G_z1, D_G_z2), run.speed())
            run.append(Loss_D=errD, Loss_G=errG, D_x=D_x, D_G_z1=D_G_z1, D_G_z2=D_G_z2)

            # G's progress on the fixed inputs, every sample_every iterations and at the end
            if (iters % args.sample_every == 0) or ((epoch == num_epochs-1) and (i ==
                    len(dataloader)-1)):
                run.snapshot(sample(netG, fixed_z_, fixed_y_label_), iters)

            iters += 1
        if run.stopped:  # Ctrl-C, SIGTERM or --max-steps: run.enumerate has saved
            break

    # §12.5.2 Results: the loss plot, G's progression (progress.gif), real vs. fake, netG.pt
    G_losses, D_losses = run.column("Loss_G"), run.column("Loss_D")
    return run.finish(real_batch[0][:64], {"G": G_losses, "D": D_losses},
                      "Generator and Discriminator Loss During Training")


if __name__ == "__main__":
    common.cli(main)
