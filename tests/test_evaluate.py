"""evaluate.py: the numbers themselves, the classifier's file, every kind of input, and the
messages for bad ones. No real data: the classifier is trained a few steps on FakeData."""
import json
import os

import pytest
import torch
import torch.nn as nn
import torchvision.transforms.functional as TF
from PIL import Image

import common
from conftest import load, load_script, make_images, usage_error, user_error

import evaluate
import sample

mlp, cgan = load_script("01_mlp_gan"), load_script("03_cgan")


def scores(argv, capsys):
    """evaluate.py's JSON line, and the lines before it."""
    capsys.readouterr()
    assert evaluate.main(argv + ["--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    return json.loads(lines[-1]), "\n".join(lines[:-1])


def tiny_run(main, out, dataroot, *extra):
    argv = ["--dataset", "fake", "--batch-size", "8", "--workers", "0", "--max-steps", "1",
            "--dataroot", str(dataroot), "--out", str(out), *extra]
    assert main(argv) == 0
    return str(out / "checkpoint.pt")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, device):
    """A dataroot with the classifier of --dataset fake in it, trained once for the module, and
    a tiny run of 01 on that data (on --device: a module's fixture comes before
    scripts_on_the_device)."""
    root = tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(common, "FAKE_SIZE", 32)  # (small_fake_data's, for this module-wide fixture)
        assert evaluate.main(["--train", "--dataset", "fake", "--dataroot", str(root), "--device", device]) == 0
        ckpt = tiny_run(mlp.main, root / "r", root, "--device", device)
    return root, ckpt


@pytest.fixture(scope="module")
def ckpt03(trained, tmp_path_factory, device):
    """A tiny run of 03 on that data, for the module (on --device: a module's fixture comes
    before scripts_on_the_device)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(common, "FAKE_SIZE", 32)
        return tiny_run(cgan.main, tmp_path_factory.mktemp("r03"), trained[0], "--ngf", "8", "--ndf", "8",
                        "--device", device)


@pytest.fixture
def data(trained):
    return trained[0]


@pytest.fixture
def ckpt01(trained):
    return trained[1]


# --- The numbers ------------------------------------------------------------------------------
def test_frechet_distance_of_a_set_with_itself_is_zero_and_of_gaussians_the_closed_form():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(500, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    mu, sigma = evaluate.statistics(feats)
    assert evaluate.frechet(mu, sigma, mu, sigma) == pytest.approx(0, abs=1e-8)
    # N(mu, S) against N(mu + d, c^2 S): |d|^2 + Tr(S + c^2 S - 2 c S) = |d|^2 + (1 - c)^2 Tr S
    d, c = torch.tensor([1.0, -2, 0, 0, 3, 0], dtype=torch.float64), 3.0
    assert evaluate.frechet(mu, sigma, mu + d, c * c * sigma) == pytest.approx(
        14 + (1 - c) ** 2 * sigma.trace().item(), rel=1e-6)
    # diagonal: sum (sqrt(a) - sqrt(b))^2
    a, b = torch.tensor([1.0, 4, 9], dtype=torch.float64), torch.tensor([4.0, 1, 1], dtype=torch.float64)
    zero = torch.zeros(3, dtype=torch.float64)
    assert evaluate.frechet(zero, torch.diag(a), zero, torch.diag(b)) == pytest.approx(1 + 1 + 4)


def test_score_is_ten_for_sure_and_even_predictions_and_one_for_a_single_class():
    sure_and_even = torch.eye(10).repeat(30, 1)
    assert evaluate.inception_score(sure_and_even) == pytest.approx(10)
    assert evaluate.inception_score(torch.eye(10)[[3] * 300]) == pytest.approx(1)
    assert evaluate.inception_score(torch.full((300, 10), 0.1)) == pytest.approx(1)  # unsure
    half = torch.eye(10)[[0, 1] * 50]  # two classes, sure: 2
    assert evaluate.inception_score(half) == pytest.approx(2)


def test_histogram_coverage_and_conditional_accuracy_of_made_up_predictions():
    classes = [str(c) for c in range(4)]
    probs = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.1, 0.8, 0.1, 0.0], [0.6, 0.2, 0.1, 0.1],
                          [0.0, 0.1, 0.1, 0.8], [0.2, 0.1, 0.1, 0.6], [0.9, 0.0, 0.1, 0.0]])
    assert evaluate.class_histogram(probs, classes) == [3, 1, 0, 2]  # class 2 never drawn
    # a class counts as covered from half its even share on: here 12.5 of 100
    assert evaluate.coverage([50, 30, 15, 5]) == 0.75 and evaluate.coverage([25, 25, 13, 37]) == 1
    assert evaluate.coverage([100, 0, 0, 0]) == 0.25
    asked = torch.tensor([0, 0, 1, 1, 3, 3])  # read as 0, 1 | 0, 3 | 3, 0
    mean, per_class = evaluate.conditional_accuracy(probs, asked, classes)
    assert per_class == {"0": 0.5, "1": 0.0, "3": 0.5} and mean == pytest.approx(1 / 3)
    asked = torch.tensor([0, 1, 0, 3, 3, 0])
    mean, per_class = evaluate.conditional_accuracy(probs, asked, classes)
    assert per_class == {"0": 1.0, "1": 1.0, "3": 1.0} and mean == 1.0


# --- End to end ---------------------------------------------------------------------------------
def test_a_checkpoint_end_to_end(data, ckpt01, capsys):
    ckpt = ckpt01
    result, text = scores([ckpt, "--n", "50"], capsys)
    assert set(result) == {"fid", "fid_floor", "score", "coverage", "class_hist", "n"}
    assert result["n"] == 50 and sum(result["class_hist"].values()) == 50
    assert result["fid"] > 0 and result["fid_floor"] >= 0 and 1 <= result["score"] <= 10
    assert result["coverage"] == evaluate.coverage(list(result["class_hist"].values()))
    assert "Training" not in text  # the classifier is kept beside the data, and loaded again
    assert f"Classifier: {data / 'FakeData' / 'classifier.pt'}" in text
    assert "50 samples of" in text and "resized" not in text  # 01's images are 28x28 already
    # the same samples again: the same numbers; another seed: other samples
    again, _ = scores([ckpt, "--n", "50"], capsys)
    assert again == result
    other, _ = scores([ckpt, "--n", "50", "--seed", "5"], capsys)
    assert other["fid"] != result["fid"]


def test_the_first_score_is_the_same_as_later_ones_and_of_sample_pys_images(ckpt01, tmp_path, capsys,
                                                                            monkeypatch, device):
    """The first evaluate.py trains the classifier, which draws from the random generator: the
    samples must be drawn after it, so that they are sample.py's and the numbers repeat."""
    first, text = scores([ckpt01, "--n", "30", "--dataroot", str(tmp_path)], capsys)
    assert "Training the classifier" in text
    again, text = scores([ckpt01, "--n", "30", "--dataroot", str(tmp_path)], capsys)
    assert "Training the classifier" not in text and again == first
    seen = []

    class Seen(Exception):
        pass

    def keep_samples(net, batches, device):  # and stop there
        seen.append(torch.cat(list(batches)))
        raise Seen
    monkeypatch.setattr(evaluate, "embed", keep_samples)
    with pytest.raises(Seen):
        evaluate.main([ckpt01, "--n", "30", "--dataroot", str(tmp_path)])
    # drawn on the device evaluate.py ran on: CUDA's random stream is not the CPU's
    batches, asked, _, _ = sample.samples(ckpt01, 30, None, torch.device(device))
    assert asked is None and torch.equal(seen[0], torch.cat(list(batches)))


def test_the_conditional_gan_is_asked_for_each_class_in_turn(ckpt03, capsys):
    ckpt = ckpt03
    result, text = scores([ckpt, "--n", "40"], capsys)
    assert set(result["cond_accuracy_per_class"]) == {str(c) for c in range(10)}
    assert result["cond_accuracy"] == pytest.approx(sum(result["cond_accuracy_per_class"].values()) / 10)
    assert "resized from 32x32 to 28x28" in text and "Conditional accuracy" in text
    # evaluate.py's classes are those of sample.py's rows: 4 of class 0, then 4 of class 1 ...
    _, asked, classes, _ = sample.samples(ckpt, 40, None, torch.device("cpu"))
    assert asked.tolist() == [c for c in range(10) for _ in range(4)] and len(classes) == 10


def test_a_grid_and_a_folder_of_pngs_give_back_their_images(tmp_path):
    images = torch.rand(20, 1, 28, 28) * 2 - 1
    common.save_grid(images, str(tmp_path / "grid.png"))  # 8 a row: 4 empty cells at the end
    back = evaluate.from_pngs(str(tmp_path / "grid.png"), 1, None)
    assert back.shape == (20, 1, 28, 28) and (back - images).abs().max() <= 1 / 127.5 + 1e-6
    os.makedirs(tmp_path / "each")
    for k in range(5):
        common.save_grid(images[k], str(tmp_path / "each" / f"{k:07d}.png"))
    back = evaluate.from_pngs(str(tmp_path / "each"), 1, None)
    assert back.shape == (5, 1, 28, 28) and (back - images[:5]).abs().max() <= 1 / 127.5 + 1e-6


def test_pngs_are_scored_like_a_checkpoint(data, tmp_path, capsys):
    common.save_grid(torch.rand(30, 1, 32, 32) * 2 - 1, str(tmp_path / "g.png"))
    result, text = scores([str(tmp_path / "g.png"), "--dataset", "fake", "--dataroot", str(data)], capsys)
    assert result["n"] == 30 and "resized from 32x32 to 28x28" in text


def test_other_datasets_use_inception_and_say_what_to_download(tmp_path, monkeypatch, capsys):
    make_images(str(tmp_path / "faces" / "a"), 12, size=(40, 40), ext="png")
    common.save_grid(torch.rand(9, 3, 32, 32) * 2 - 1, str(tmp_path / "g.png"))
    argv = [str(tmp_path / "g.png"), "--dataset", "folder", "--dataroot", str(tmp_path / "faces")]
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # no weights there
    msg = user_error(evaluate.main, argv)
    assert "Inception-v3" in msg and "download https://" in msg and str(tmp_path / "hub") in msg

    class StandIn(nn.Module):  # Inception's interface, small: features, head, input size, channels
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3, 2), nn.Flatten(), nn.LazyLinear(16))
            self.head, self.size, self.nc = nn.Linear(16, 5), 30, 3
    monkeypatch.setattr(evaluate, "inception_net", lambda device: StandIn().to(device))
    result, text = scores(argv, capsys)
    assert result["n"] == 9 and result["fid"] > 0
    assert result["fid_floor"] is None and result["coverage"] is None
    assert "against 9 real training images" in text


@pytest.fixture
def one_thread():
    """Inception's hundreds of small ops take 1 s on one thread, and up to 13 s on two when a
    busy CPU keeps one waiting for the other (frechet's eigh runs on one thread for this too)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_inception_sees_images_as_torchvision_feeds_its_imagenet_weights(tmp_path, monkeypatch, one_thread):
    """The ported Google weights take [-1, 1]: torchvision builds the net for them with
    transform_input=True, which turns the weights' documented ImageNet normalisation into
    that. evaluate.py's features of [-1, 1] images must be that net's of the normalised ones.
    Random weights stand in for the real ones, under the file name evaluate.py looks for."""
    from torchvision.models import Inception_V3_Weights, inception_v3
    import torchvision.transforms.functional as TF
    weights = Inception_V3_Weights.IMAGENET1K_V1
    torch.manual_seed(0)
    ref = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=True).eval()
    for m in ref.modules():  # torch's default init shrinks the features to 1e-8, which any input would match
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
    os.makedirs(tmp_path / "checkpoints")
    torch.save(ref.state_dict(), tmp_path / "checkpoints" / os.path.basename(weights.url))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    ref.fc = nn.Identity()  # the 2048 pooled features, as evaluate.py's
    x = torch.rand(2, 3, *weights.meta["min_size"]) * 2 - 1  # 75x75: 1/16 of 299x299's work
    preprocess = weights.transforms()
    with torch.no_grad():
        ours = evaluate.inception_net(torch.device("cpu")).eval().features(x)
        theirs = ref(TF.normalize((x + 1) / 2, preprocess.mean, preprocess.std))
    torch.testing.assert_close(ours, theirs)


# --- The classifier's file and bad inputs -------------------------------------------------------
def test_on_a_gpu_the_resize_runs_there_and_float64_and_the_saved_classifier_stay_on_the_cpu(
        tmp_path, monkeypatch):
    """MPS has no float64, and a file of CUDA tensors needs a GPU to load. The meta device
    stands in for the GPU: .double() refuses a tensor off the CPU, as MPS does, and .cpu() of a
    meta tensor (which holds no data) gives zeros."""
    cpu, double, fit, fitted = torch.Tensor.cpu, torch.Tensor.double, evaluate.fit, []

    def cpu_double(t):
        if t.device.type != "cpu":
            raise TypeError(f"no float64 on {t.device.type}")
        return double(t)
    monkeypatch.setattr(torch.Tensor, "double", cpu_double)
    monkeypatch.setattr(torch.Tensor, "cpu", lambda t: torch.zeros(t.shape, dtype=t.dtype) if t.is_meta else cpu(t))
    monkeypatch.setattr(evaluate, "fit", lambda x, net: fitted.append(x.device.type) or fit(x, net))
    path = tmp_path / "classifier.pt"
    evaluate.train_classifier("fake", str(tmp_path), str(path), torch.device("meta"))
    assert set(fitted) == {"meta"}  # the resize runs on the device, not on the CPU before it
    assert {v.device.type for v in torch.load(path, weights_only=True)["net"].values()} == {"cpu"}


def test_bad_inputs_get_one_clear_line(data, ckpt01, tmp_path, monkeypatch, capsys):
    assert user_error(evaluate.main, [str(tmp_path / "none.pt")]).startswith(
        f"error: no checkpoint at {tmp_path / 'none.pt'}")
    ckpt = ckpt01
    torch.save({**torch.load(ckpt, weights_only=True), "script": "05_mine"}, tmp_path / "other.pt")
    msg = user_error(evaluate.main, [str(tmp_path / "other.pt")])
    assert "was written by 05_mine.py, which" in msg and msg.endswith("do not know")
    msg = user_error(evaluate.main, [os.path.join(os.path.dirname(ckpt), "netG.pt")])
    assert "a generator's weights alone" in msg and "checkpoint.pt" in msg
    for key in ("dataset", "dataroot", "seed"):  # the run's settings that evaluate.py reads
        good = load(ckpt)
        del good["args"][key]
        torch.save(good, tmp_path / "edited.pt")
        msg = user_error(evaluate.main, [str(tmp_path / "edited.pt"), "--n", "10"])
        assert msg == f"error: {tmp_path / 'edited.pt'} is not a complete checkpoint of 01_mlp_gan.py (its args)"
    # no classifier, and no data to train one (offline)
    from urllib.error import URLError
    import torchvision.datasets.mnist as mnist

    def offline(*args, **kwargs):
        raise URLError("no network")
    monkeypatch.setattr(mnist, "download_and_extract_archive", offline)
    msg = user_error(evaluate.main, [ckpt, "--dataset", "mnist", "--dataroot", str(tmp_path / "empty")])
    assert msg.startswith(f"error: no classifier at {tmp_path / 'empty' / 'MNIST' / 'classifier.pt'}, "
                          "and no data to train one: could not download")
    # a file that is not a classifier is refused, and left as it was
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    msg = user_error(evaluate.main, [ckpt, "--dataroot", str(data), "--classifier", str(tmp_path / "foreign.pt")])
    assert "is not a classifier of evaluate.py" in msg
    assert set(torch.load(tmp_path / "foreign.pt", weights_only=True)) == {"weights"}
    # the classifier of another dataset
    other = torch.load(data / "FakeData" / "classifier.pt", weights_only=True)
    torch.save({**other, "dataset": "mnist"}, tmp_path / "mnist.pt")
    msg = user_error(evaluate.main, [ckpt, "--dataroot", str(data), "--classifier", str(tmp_path / "mnist.pt")])
    assert "is the classifier of mnist, and these images are fake" in msg
    assert "give a checkpoint, a PNG grid or a folder of PNGs" in usage_error(evaluate.main, [], capsys)
    assert user_error(evaluate.main, [str(tmp_path / "nothing.png")]).endswith("nothing.png: no such file or folder")
    (tmp_path / "text.png").write_text("not an image")
    assert "cannot read " + str(tmp_path / "text.png") + " as an image" in user_error(
        evaluate.main, [str(tmp_path / "text.png"), "--dataroot", str(data), "--dataset", "fake"])
    make_images(str(tmp_path / "odd"), 1, size=(100, 50), ext="png")  # not a grid of 28, 32 or 64
    assert "cannot tell the images apart in the 100x50 grid" in user_error(
        evaluate.main, [str(tmp_path / "odd" / "0000.png"), "--dataroot", str(data), "--dataset", "fake"])
    if not torch.cuda.is_available():
        msg = user_error(evaluate.main, [ckpt, "--device", "cuda"])
        assert msg.startswith("error: --device cuda: this torch (") and "cannot use a GPU here" in msg


def test_a_stale_classifier_is_trained_again(data, ckpt01, tmp_path, capsys):
    path = tmp_path / "FakeData" / "classifier.pt"
    os.makedirs(path.parent)
    torch.save({**torch.load(data / "FakeData" / "classifier.pt", weights_only=True), "evaluate": 0}, path)
    _, text = scores([ckpt01, "--n", "20", "--dataroot", str(tmp_path)], capsys)
    assert "from another version of evaluate.py: training it again" in text
    assert torch.load(path, weights_only=True)["evaluate"] == evaluate.VERSION


def test_an_incomplete_or_mistyped_classifier_file_is_refused_in_one_line(data, ckpt01, tmp_path):
    """Each of these loads (weights_only) but is no classifier of this version: a traceback
    today (KeyError, TypeError, RuntimeError...) or, for dataset 5, "the classifier of 5"."""
    good = torch.load(data / "FakeData" / "classifier.pt", weights_only=True)
    bad = [{"evaluate": evaluate.VERSION}, {**good, "evaluate": torch.zeros(3)}]
    bad += [{k: v for k, v in good.items() if k != key} for key in
            ("dataset", "net", "mu", "sigma", "classes", "test_accuracy", "test_n")]
    bad += [{**good, key: value} for key, value in [
        ("dataset", 5), ("net", [1, 2]), ("net", evaluate.Classifier(3).state_dict()),  # 3 classes, not 10
        ("classes", 10), ("classes", [[c] for c in range(10)]), ("mu", good["mu"].tolist()),
        ("mu", good["mu"][:5]), ("sigma", good["sigma"][0]), ("test_accuracy", "99%")]]
    path = tmp_path / "hand-made.pt"
    said = "classifier of evaluate.py: move it away (it is then trained again), or pass --classifier PATH"
    for ckpt in bad:
        torch.save(ckpt, path)
        msg = user_error(evaluate.main, [ckpt01, "--dataroot", str(data), "--classifier", str(path)])
        assert msg.startswith(f"error: {path} is not a") and msg.endswith(said), ckpt.keys()
        assert torch.load(path, weights_only=True).keys() == ckpt.keys()


def test_a_classifier_with_nan_or_inf_in_it_is_refused_in_one_line(data, ckpt01, tmp_path):
    """Flipped bytes can leave a file that loads: a NaN or inf in the network or the statistics
    would give a LinAlgError from frechet's eigh (or an absurd FID), not a message."""
    good = torch.load(data / "FakeData" / "classifier.pt", weights_only=True)
    path = tmp_path / "damaged.pt"
    said = "classifier of evaluate.py: move it away (it is then trained again), or pass --classifier PATH"
    nan, inf = float("nan"), float("inf")
    for part, key, value in [("net", "head.weight", nan), ("net", "features.0.bias", inf),
                             ("net", "features.1.running_var", nan),  # a BatchNorm buffer
                             ("mu", None, nan), ("sigma", None, inf), ("sigma", None, -inf)]:
        damaged = {**good, "net": dict(good["net"])}
        if key:
            damaged["net"][key] = damaged["net"][key].clone()
            damaged["net"][key].view(-1)[3] = value
        else:
            damaged[part] = damaged[part].clone()
            damaged[part].view(-1)[3] = value
        torch.save(damaged, path)
        msg = user_error(evaluate.main, [ckpt01, "--n", "10", "--dataroot", str(data), "--classifier", str(path)])
        assert msg == f"error: {path} is not a complete {said}", (part, key, value)


@pytest.mark.parametrize("where", ["grid", "folder"])
def test_a_decompression_bomb_png_is_an_unreadable_image(data, tmp_path, monkeypatch, where):
    """PIL refuses an image of over 2 * MAX_IMAGE_PIXELS pixels with DecompressionBombError,
    which is no OSError: a 28x28 PNG with the limit at 100 pixels is one."""
    from PIL import Image
    os.makedirs(tmp_path / "pngs")
    bomb = tmp_path / "pngs" / "1.png"  # after a good one (8x8: 64 pixels) in the folder
    common.save_grid(torch.zeros(1, 8, 8), str(tmp_path / "pngs" / "0.png"))
    common.save_grid(torch.zeros(1, 28, 28), str(bomb))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(Image.DecompressionBombError):  # the error, not only the warning
        Image.open(bomb)
    argv = [str(bomb if where == "grid" else tmp_path / "pngs"), "--dataroot", str(data), "--dataset", "fake"]
    assert user_error(evaluate.main, argv).startswith(
        f"error: cannot read {bomb} as an image: Image size (784 pixels) exceeds limit")


def test_n_that_03_cannot_split_among_its_classes_is_refused_in_evaluates_terms(ckpt03):
    for n in ("25", "5"):  # 5: fewer than one of each class
        msg = user_error(evaluate.main, [ckpt03, "--n", n])
        assert msg.startswith(f"error: --n {n} ") and "multiple of 10" in msg and "--generate" not in msg


def test_n_is_at_least_two_and_at_most_the_documented_maximum(tmp_path, capsys):
    """Every sample's features are kept: an unbounded --n grows memory until the machine gives
    out; and FID's covariance needs two samples (of one: NaN, and a LinAlgError). The flag is
    refused before any file is read."""
    none = str(tmp_path / "none.pt")
    for n in ("1000000000000", "50001", "1", "0", "-5"):
        assert "argument --n" in usage_error(evaluate.main, [none, "--n", n], capsys)
    said = "argument --n: from 2 (FID's covariance needs two samples) to 50000, got "
    assert said + "50001" in usage_error(evaluate.main, [none, "--n", "50001"], capsys)
    assert said + "1" in usage_error(evaluate.main, [none, "--n", "1"], capsys)
    assert evaluate.parser.parse_args([none, "--n", "50000"]).n == 50000  # the maximum itself is fine
    assert evaluate.parser.parse_args([none, "--n", "2"]).n == 2  # and the minimum


@pytest.mark.parametrize("flags, says", [
    (["--seed", str(2**32)], "argument --seed: must be a whole number from 0 to 2**32 - 1"),
    (["--n", "1"], "argument --n: from 2"),
    (["--generate", "4"], "unrecognized arguments: --generate 4"),
])
def test_a_flag_error_prints_evaluates_own_usage(ckpt01, flags, says, capsys):
    """Not the usage of the script that wrote the checkpoint (once, its settings were parsed with
    that script's parser, which refused a --seed evaluate.py had let through)."""
    err = usage_error(evaluate.main, [ckpt01, *flags], capsys)
    assert err.startswith("usage: evaluate.py ") and f"evaluate.py: error: {says}" in err
    assert "01_mlp_gan" not in err and "--epochs" not in err


# --- --neighbours: did it just memorise? --------------------------------------------------------
def test_nearest_finds_a_training_row_itself_at_distance_zero_whatever_the_chunks():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(300, 40, generator=g)
    queries = torch.cat([train[[5, 123, 299]], torch.randn(20, 40, generator=g)])
    dist, idx = evaluate.nearest(queries, train, chunk=7)  # 4 chunks, the last one short
    assert idx[:3, 0].tolist() == [5, 123, 299] and dist[:3, 0].max() < 1e-3
    naive = (queries[:, None] - train[None]).norm(dim=2).sort(dim=1)  # every distance, no cdist
    assert torch.equal(idx, naive.indices[:, :3])
    torch.testing.assert_close(dist, naive.values[:, :3], atol=1e-3, rtol=1e-5)


def test_a_generator_that_copies_training_images_is_far_below_one_and_held_out_ones_are_one(
        data, tmp_path, capsys):
    """PNG grids stand in for the two generators: 24 training images, and the 24 test images
    that evaluate.py draws as its held-out ones (FakeData's pixels are 8-bit: read back exactly)."""
    train, _, _ = evaluate.load_images("fake", str(data))
    held_out, _, _ = evaluate.load_images("fake", str(data), train=False, n=24)
    figure = {}
    for name, images in [("copier", train[:24]), ("held_out", held_out)]:
        os.makedirs(tmp_path / name)
        common.save_grid(images, str(tmp_path / name / "g.png"))
        result, _ = scores([str(tmp_path / name / "g.png"), "--dataset", "fake", "--dataroot", str(data),
                            "--neighbours"], capsys)
        figure[name] = result["memorisation"]
    for space in ("features", "pixels"):
        assert figure["copier"][space]["ratio"] < 0.01 and figure["held_out"][space]["ratio"] == pytest.approx(1)
    # each copy's nearest training image, in both spaces, is the image it copies; the next is another
    png = TF.pil_to_tensor(Image.open(tmp_path / "copier" / "neighbours.png"))
    assert png.shape == (3, 32 + 8 + 92 + 8 + 92, 24 * 30 + 2)  # rows of 28 + 2 of border, gaps of 8
    top, by_features, by_pixels, second = png[:, 2:30], png[:, 42:70], png[:, 142:170], png[:, 72:100]
    assert torch.equal(by_features, top) and torch.equal(by_pixels, top) and not torch.equal(second, top)


def test_neighbours_png_is_the_samples_then_by_features_then_by_pixels_nearest_first(tmp_path):
    """Each rank of each space in a grey of its own: the rows must come in the documented order."""
    grey = lambda v, k=1: torch.full((5, k, 1, 28, 28), v)  # 5 samples; k neighbours of each
    by_features = torch.cat([grey(-0.5), grey(0.0), grey(0.5)], dim=1)
    by_pixels = torch.cat([grey(0.6), grey(0.8), grey(1.0)], dim=1)
    evaluate.save_neighbours(grey(-1.0)[:, 0], [by_features, by_pixels], str(tmp_path / "n.png"))
    png = TF.pil_to_tensor(Image.open(tmp_path / "n.png"))
    rows = [png[0, y + 14, 16].item() for y in (0, 40, 70, 100, 140, 170, 200)]  # a cell's middle
    assert rows == [round((v + 1) / 2 * 255) for v in (-1, -0.5, 0, 0.5, 0.6, 0.8, 1.0)]


def test_neighbours_of_a_checkpoint_go_beside_it_and_into_the_json(ckpt01, capsys):
    result, text = scores([ckpt01, "--n", "10", "--neighbours"], capsys)
    figure = result.pop("memorisation")
    assert set(figure) == {"features", "pixels", "held_out_n"} and figure["held_out_n"] == 10
    for space in ("features", "pixels"):
        f = figure[space]
        assert f["generated"] > 0 and f["held_out"] > 0 and f["ratio"] == pytest.approx(f["generated"] / f["held_out"])
    path = os.path.join(os.path.dirname(ckpt01), "neighbours.png")
    assert f"Neighbours: {path}" in text and Image.open(path).size == (10 * 30 + 2, 232)  # 10 samples, not 24
    assert scores([ckpt01, "--n", "10"], capsys)[0] == result  # and the other numbers are as without it


def test_neighbours_needs_samples_and_a_dataset_of_evaluates_own_classifier(tmp_path, capsys):
    argv = ["--train", "--neighbours", "--dataset", "fake", "--dataroot", str(tmp_path)]
    assert "--neighbours looks for the nearest training images of samples" in usage_error(evaluate.main, argv, capsys)
    common.save_grid(torch.rand(4, 3, 32, 32) * 2 - 1, str(tmp_path / "g.png"))
    msg = user_error(evaluate.main, [str(tmp_path / "g.png"), "--dataset", "cifar10", "--neighbours"])
    assert msg.startswith("error: --neighbours is for MNIST and Fashion-MNIST") and msg.endswith("cifar10 has neither")
