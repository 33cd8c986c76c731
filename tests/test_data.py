"""The data path (docs/speed.md, Data): in-memory datasets kept as uint8 and batched by one
indexing, the decoded cache of image folders, and what the models see from both: the very
tensors of the chapter's transform, in the same order."""
import os
import pickle
import subprocess
import types

import pytest
import torch
import torchvision.datasets as dset
import torchvision.transforms as transforms

from conftest import load_script, make_images, tmpfs, usage_error

import common


def chapter_transform(size=64, nc=3):
    return transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size),
                               transforms.ToTensor(), transforms.Normalize((0.5,) * nc, (0.5,) * nc)])


@pytest.fixture
def run(tmp_path):
    """A Run whose dataloader() the tests call, as a script's main() does."""
    runs = []

    def make(dataset="folder", no_cache=False):
        args = types.SimpleNamespace(out=str(tmp_path / f"run{len(runs)}"), resume=None, seed=3,
                                     dataset=dataset, no_cache=no_cache)
        runs.append(common.Run("test", args, None, torch.device("cpu")))
        return runs[-1]
    yield make
    for r in runs:
        r.release()


def batches(loader, epoch=0, start=0):
    loader.sampler.set_epoch(epoch, start)
    return list(loader)


def assert_same_batches(ours, chapter):
    assert len(ours) == len(chapter) > 0
    for (x, y), (cx, cy) in zip(ours, chapter):
        assert x.dtype == torch.float32 and torch.equal(x, cx) and torch.equal(y, cy)


def the_chapters(dataset, loader, drop_last=True):
    """The batches of a plain DataLoader over dataset (the transform per image, then collate),
    in the order of loader's sampler."""
    return list(torch.utils.data.DataLoader(dataset, batch_size=loader.batch_size,
                                            sampler=list(loader.sampler), drop_last=drop_last))


def test_in_memory_images_are_uint8_and_a_batch_is_the_transforms_tensors(run, monkeypatch, device):
    transform = chapter_transform(32, 1)
    data = common.load_dataset("fake", "unused", transform, (1, 28, 28))
    assert data.images.dtype == torch.uint8 and data.images.shape == (common.FAKE_SIZE, 1, 32, 32)
    assert data.classes == [str(c) for c in range(10)]
    source = dset.FakeData(size=common.FAKE_SIZE, image_size=(1, 28, 28), transform=transform)
    for drop_last in (True, False):  # 32 images, batches of 5: a last one of 2, or none
        loader = run("fake").dataloader(data, batch_size=5, num_workers=0, drop_last=drop_last)
        assert isinstance(loader, common.Batches) and len(loader) == 6 + (not drop_last)
        for epoch, start in ((0, 0), (1, 10)):  # a new epoch's order; a resume mid-epoch
            ours = batches(loader, epoch, start)
            assert_same_batches(ours, the_chapters(source, loader, drop_last))
            assert len(ours) == len(loader) - start // 5
        # one indexing a batch: never a per-sample __getitem__, never the default collate
        monkeypatch.setattr(common.Images, "__getitem__", lambda self, i: pytest.fail("per sample"),
                            raising=False)
        # the GPU's way (the whole array on the device, loader None), on pytest's --device
        alone = common.Batches(data, None, loader.sampler, 5, drop_last, torch.device(device))
        assert len(alone) == len(loader)
        on_cpu = [[t.cpu() for t in batch] for batch in batches(alone, 1, 10)]
        assert_same_batches(on_cpu, batches(loader, 1, 10))
        monkeypatch.undo()
    # and every tensor of that way on the one device (meta stands in for the GPU)
    meta = common.Batches(data, None, loader.sampler, 5, True, torch.device("meta"))
    x, y = next(iter(meta))
    assert (x.device.type, x.dtype, x.shape, y.device.type) == ("meta", torch.float32, (5, 1, 32, 32), "meta")


def jpegs(root, n=24):
    """n JPEGs of two sizes in root/a and root/b (a class each), colours varying within each."""
    make_images(root / "a", n // 2, size=(72, 88))
    make_images(root / "b", n - n // 2, size=(90, 70))
    return root


def caches(*folders):
    return sorted(f for d in folders if os.path.isdir(d) for f in os.listdir(d) if f.startswith("gan-cache"))


def test_the_decoded_cache_gives_the_transforms_tensors_and_is_built_once(run, tmp_path, capsys, monkeypatch):
    root = jpegs(tmp_path / "data")
    data = common.load_dataset("folder", str(root), chapter_transform(), (3, 64, 64))
    loader = run().dataloader(data, batch_size=4, num_workers=0, drop_last=True)
    out = capsys.readouterr().out
    assert f"Decoded cache: built {root}{os.sep}gan-cache-3x64x64-" in out and "24 images, 0.00 GB" in out
    [name] = caches(root)
    assert name.endswith(".npy") and isinstance(loader, common.Batches)
    assert loader.dataset.images.shape == (24, 3, 64, 64)
    # a worker started by spawn (macOS, Windows) gets the path and maps the file itself
    sent = pickle.dumps(loader.dataset)
    assert len(sent) < loader.dataset.images.nbytes / 10
    assert torch.equal(pickle.loads(sent).images, loader.dataset.images)
    assert_same_batches(batches(loader, 2, 8), the_chapters(data, loader))
    built = []
    monkeypatch.setattr(common, "_build_cache", lambda *a: built.append(a))
    again = run().dataloader(data, batch_size=4, num_workers=2, drop_last=True)  # workers too
    assert built == [] and f"Decoded cache: {root}{os.sep}{name} (0.00 GB)" in capsys.readouterr().out
    assert_same_batches(batches(again, 2, 8), the_chapters(data, loader))
    assert caches(root) == [name]


def test_the_cache_key_follows_the_folder_and_the_size(run, tmp_path):
    root = jpegs(tmp_path / "data")
    made = lambda size=64: run().dataloader(common.load_dataset(
        "folder", str(root), chapter_transform(size), (3, size, size)), 4, 0).dataset.path
    first = made()
    os.utime(root / "a" / "0001.jpg", ns=(1, 1))  # the same file, changed since
    second = made()
    make_images(root / "b", 3)  # and a new file (0000-0002 are rewritten too)
    third = made()
    small = made(32)
    assert len({first, second, third, small}) == 4 and os.path.basename(small).startswith("gan-cache-3x32x32-")
    assert made() == third  # nothing changed: the same cache


def test_a_stopped_build_leaves_no_cache_and_a_dead_builds_file_goes(run, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home"))
    root = jpegs(tmp_path / "data")
    (root / "b" / "0003.jpg").write_bytes(b"not a jpeg")
    data = common.load_dataset("folder", str(root), chapter_transform(), (3, 64, 64))
    with pytest.raises(common.UserError, match="cannot read image .*0003.jpg"):
        run().dataloader(data, 4, 0)
    assert sorted(os.listdir(root)) == ["a", "b"] and not (tmp_path / "home").exists()
    make_images(root / "b", 4)  # repaired
    decoded = common._decoded

    def ctrl_c(*args):  # Ctrl-C after the first of the build's batches
        yield next(iter(decoded(*args)))
        raise KeyboardInterrupt
    with monkeypatch.context() as mp:
        mp.setattr(common, "_decoded", lambda dataset, pre, workers, indices=None: (
            decoded(dataset, pre, workers, indices) if indices else ctrl_c(dataset, pre, workers)))
        with pytest.raises(KeyboardInterrupt):
            run().dataloader(data, 4, 0)
    assert sorted(os.listdir(root)) == ["a", "b"]
    path = run().dataloader(data, 4, 0).dataset.path
    os.remove(path)
    dead, alive = f"{path}.tmp{2**22 + 7}", f"{path}.tmp{os.getppid()}"
    for tmp in (dead, alive):
        open(tmp, "w").close()
    run().dataloader(data, 4, 0)
    assert os.path.exists(path) and not os.path.exists(dead) and os.path.exists(alive)


@pytest.fixture
def read_only(tmp_path):
    """A folder of JPEGs on a read-only file system (a tmpfs, filled, then made read-only)."""
    with tmpfs(tmp_path / "disk", "4m") as disk:
        jpegs(disk / "data")
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        yield disk / "data"


def test_a_read_only_folder_has_its_cache_in_the_users_cache_else_none(run, read_only, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home"))
    data = common.load_dataset("folder", str(read_only), chapter_transform(), (3, 64, 64))
    loader = run().dataloader(data, 4, 0)
    assert loader.dataset.path.startswith(str(tmp_path / "home" / "gan-scripts") + os.sep)
    assert len(caches(os.path.dirname(loader.dataset.path))) == 1 and caches(read_only) == []
    monkeypatch.setenv("XDG_CACHE_HOME", str(read_only / "a"))  # read-only too
    capsys.readouterr()
    loader = run().dataloader(data, 4, 0, drop_last=True)
    assert (f"No decoded cache ({read_only}: Read-only file system; {read_only}{os.sep}a{os.sep}"
            "gan-scripts" in capsys.readouterr().out)
    assert isinstance(loader, torch.utils.data.DataLoader)  # the JPEGs, every epoch
    ours = batches(loader, 1)
    assert_same_batches(ours, the_chapters(data, loader))


def test_no_cache_and_random_steps_read_the_images_every_epoch(run, tmp_path, capsys):
    root = jpegs(tmp_path / "data")
    data = common.load_dataset("folder", str(root), chapter_transform(), (3, 64, 64))
    assert isinstance(run(no_cache=True).dataloader(data, 4, 0), torch.utils.data.DataLoader)
    data.transform = transforms.Compose([transforms.RandomHorizontalFlip(), *chapter_transform().transforms])
    assert isinstance(run().dataloader(data, 4, 0), torch.utils.data.DataLoader)
    assert "No decoded cache: the transform has a random step" in capsys.readouterr().out
    assert caches(root) == []


def test_no_cache_is_refused_where_there_are_no_files_to_decode(capsys):
    err = usage_error(load_script("02_dcgan").main, ["--dataset", "mnist", "--no-cache"], capsys)
    assert "--no-cache is for celeba and folder" in err
