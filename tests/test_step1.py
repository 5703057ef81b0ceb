import os
import pickle
import re
import subprocess
import sys

import pytest
import torch
import torchvision
import torchvision.transforms as transforms

import step1
from conftest import ROOT, TEST_IMAGES, TRAIN_PER_BATCH, run_step1, train
from model import MyNet

TRAIN_IMAGES = 5 * TRAIN_PER_BATCH
LOSS_LINE = "Epoch : %2d, mini-batch : %4d, loss : %.3f"
ACCURACY_LINE = "Epoch : %2d, training accuracy = %6.2f %%, test accuracy = %6.2f %%"
LOSS_PATTERN = r"mini-batch : +(\d+), loss : (\d+\.\d+)"
ACCURACY_PATTERN = r"training accuracy = +(\d+\.\d+) %, test accuracy = +(\d+\.\d+) %"


def parse(line, pattern):
    """The numbers of a printed line, checked against the guide's format by printing them again."""
    match = re.fullmatch(r"Epoch : +(\d+), " + pattern, line)
    assert match, line
    numbers = [int(match.group(1))] + [float(value) if "." in value else int(value) for value in match.groups()[1:]]
    return numbers


def test_prints_the_guides_lines_in_the_guides_formats(guide_run):
    lines, output = guide_run
    assert lines[:6] == [
        "Device            : cpu",
        "Training set size : %d" % TRAIN_IMAGES,
        "Test set size     : %d" % TEST_IMAGES,
        "Image size        : 32 x 32",
        "",
        "Training",
    ]
    order, losses = [], []
    for line in lines[6:-1]:
        if "mini-batch" in line:
            epoch, batch, loss = parse(line, LOSS_PATTERN)
            assert line == LOSS_LINE % (epoch, batch, loss)
            order.append((epoch, batch))
            losses.append(loss)
        else:
            epoch, training, test = parse(line, ACCURACY_PATTERN)
            assert line == ACCURACY_LINE % (epoch, training, test)
            order.append((epoch, "accuracy"))
    assert order == [(0, 4), (0, 8), (0, 12), (0, "accuracy"), (1, 4), (1, 8), (1, 12), (1, "accuracy")]
    # A mean over mini-batches: close to ln(10) = 2.30 for an untrained network, not a sum.
    assert 1.5 < losses[0] < 3.5
    assert re.fullmatch(r"Saved the weights to .*my_network\.pth \(training took \d+ s\)", lines[-1])


def test_saved_file_is_a_plain_state_dict_of_cpu_tensors(guide_run):
    _, output = guide_run
    state_dict = torch.load(output, weights_only=True)
    assert list(state_dict) == list(MyNet().state_dict())
    assert all(tensor.device.type == "cpu" for tensor in state_dict.values())
    assert os.listdir(output.parent) == ["my_network.pth"]  # no temporary file left behind


def guide_accuracy(model, dataset):
    """Accuracy computed the guide's way: ToTensor() images, batches of 10."""
    correct = 0
    with torch.no_grad():
        for images, labels in torch.utils.data.DataLoader(dataset, batch_size=10):
            correct += (model(images).argmax(dim=1) == labels).sum().item()
    return 100.0 * correct / len(dataset)


def test_saved_weights_reproduce_the_printed_accuracies(guide_run, cifar_dir, skip_md5_check):
    lines, output = guide_run
    _, printed_training, printed_test = parse(lines[-2], ACCURACY_PATTERN)
    model = MyNet()
    model.load_state_dict(torch.load(output, weights_only=True))
    model.eval()
    for training_split, printed in [(True, printed_training), (False, printed_test)]:
        dataset = torchvision.datasets.CIFAR10(cifar_dir, train=training_split, transform=transforms.ToTensor())
        assert "%.2f" % guide_accuracy(model, dataset) == "%.2f" % printed
    assert printed_training > 20  # it learned something: chance is 10 %


def test_images_are_exactly_what_totensor_gives(cifar_dir, skip_md5_check):
    dataset = torchvision.datasets.CIFAR10(cifar_dir, train=True, transform=transforms.ToTensor())
    expected = torch.stack([image for image, _ in dataset])
    ours = step1.to_float(torch.from_numpy(dataset.data).permute(0, 3, 1, 2), torch.device("cpu"))
    assert ours.dtype == torch.float32
    assert torch.equal(ours, expected)


def test_training_batches_cover_every_image_in_a_new_order_each_epoch():
    images = torch.arange(45, dtype=torch.uint8)[:, None, None, None].expand(45, 3, 32, 32)
    labels = torch.arange(45)
    loader = step1.make_loader(images, labels, 10, True, 0, torch.device("cpu"))
    orders = []
    for _ in range(2):  # two epochs
        batches = list(loader)
        assert [len(batch_labels) for _, batch_labels in batches] == [10, 10, 10, 10, 5]
        for batch_images, batch_labels in batches:
            assert torch.equal(batch_images[:, 0, 0, 0].long(), batch_labels)  # each image keeps its label
        orders.append(torch.cat([batch_labels for _, batch_labels in batches]))
    assert all(sorted(order.tolist()) == list(range(45)) for order in orders)
    assert not torch.equal(orders[0], orders[1])
    in_order = step1.make_loader(images, labels, 10, False, 0, torch.device("cpu"))  # for the accuracy passes
    assert torch.equal(torch.cat([batch_labels for _, batch_labels in in_order]), labels)


def test_same_seed_same_run_other_seed_other_weights(cifar_dir, tmp_path):
    runs = {}
    for name, seed in [("first", "7"), ("again", "7"), ("other", "8")]:
        lines = train(cifar_dir, tmp_path / f"{name}.pth", "--epochs", "1", "--log-interval", "3", "--seed", seed)
        runs[name] = lines[:-1], torch.load(tmp_path / f"{name}.pth", weights_only=True)  # the last line has a time
    (first_lines, first), (again_lines, again), (_, other) = runs["first"], runs["again"], runs["other"]
    assert first_lines == again_lines
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["fc_layers.5.weight"], other["fc_layers.5.weight"])


def test_worker_processes_give_the_same_run(cifar_dir, tmp_path):
    runs = [train(cifar_dir, tmp_path / f"{workers}.pth", "--epochs", "1", "--log-interval", "3", "--workers", workers)
            for workers in ("0", "2")]
    assert runs[0][:-1] == runs[1][:-1]  # all but the last line, which has a time
    assert len(runs[0]) == 6 + 4 + 1 + 1


def test_the_loss_of_an_uneven_epoch_ends_with_its_last_mini_batches(cifar_dir, tmp_path):
    lines = train(cifar_dir, tmp_path / "w.pth", "--epochs", "1", "--log-interval", "5")
    losses = [parse(line, LOSS_PATTERN) for line in lines if "mini-batch" in line]
    assert [batch for _, batch, _ in losses] == [5, 10, 12]  # 12 mini-batches of 10
    assert all(1.5 < loss < 3.5 for _, _, loss in losses)  # means, not sums


@pytest.mark.parametrize("limit, sizes", [("30", (30, 30)), ("1000", (TRAIN_IMAGES, TEST_IMAGES))])
def test_limit_uses_only_the_first_images(cifar_dir, tmp_path, limit, sizes):
    lines = train(cifar_dir, tmp_path / "w.pth", "--epochs", "1", "--log-interval", "1", "--limit", limit)
    assert lines[1:3] == ["Training set size : %d" % sizes[0], "Test set size     : %d" % sizes[1]]
    assert sum("mini-batch" in line for line in lines) == -(-sizes[0] // 10)


@pytest.mark.parametrize("bad", [
    ["--epochs", "0"], ["--epochs", "ten"], ["--batch-size", "0"], ["--limit", "-1"], ["--limit", "0"],
    ["--lr", "0"], ["--lr", "-0.1"], ["--momentum", "1.5"], ["--log-interval", "0"], ["--workers", "-1"],
    ["--device", "tpu"],
])
def test_nonsense_values_are_refused_like_argparse_does(bad, tmp_path):
    code, lines, err = run_step1([*bad, "--output", str(tmp_path / "w.pth")])
    assert code == 2
    assert lines == []
    assert ": error: argument %s: " % bad[0] in err.splitlines()[-1]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_asking_for_a_missing_gpu_is_refused(device, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    code, lines, err = run_step1(["--device", device, "--output", str(tmp_path / "w.pth")])
    assert code == 2
    assert lines == []
    assert "error: --device %s:" % device in err and "not available" in err


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_device_prefers_cuda_then_mps_then_cpu(cuda, mps, expected, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert step1.pick_device("auto", parser=None) == torch.device(expected)


def refused_output(cifar_dir, output):
    """Run with a bad --output; return the error line, after checking nothing was read or trained."""
    code, lines, err = run_step1(["--data-dir", cifar_dir, "--output", str(output), "--device", "cpu"])
    assert code == 2
    assert lines == []  # not even the data set sizes: refused before reading anything
    return err.splitlines()[-1]


def test_output_in_a_missing_folder_is_refused_before_training(cifar_dir, tmp_path):
    error = refused_output(cifar_dir, tmp_path / "missing" / "w.pth")
    assert "does not exist" in error and str(tmp_path / "missing") in error
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["sub", "sub/", "new/", None])
def test_output_that_is_a_folder_is_refused_before_training(cifar_dir, tmp_path, name):
    (tmp_path / "sub").mkdir()
    output = "" if name is None else os.path.join(str(tmp_path), name)
    error = refused_output(cifar_dir, output)
    assert "is a folder, not a file name" in error
    assert os.listdir(tmp_path) == ["sub"]
    assert os.listdir(tmp_path / "sub") == []


def test_output_in_an_unwritable_folder_is_refused_before_training(cifar_dir, tmp_path, monkeypatch):
    # Permission bits do not stop root, so the refusal of the operating system is played here.
    real_open = open

    def refusing_open(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path)):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refusing_open)
    error = refused_output(cifar_dir, tmp_path / "w.pth")
    assert "cannot write" in error and "Permission denied" in error
    assert os.listdir(tmp_path) == []


def test_a_failed_save_keeps_the_earlier_file(tmp_path):
    output = tmp_path / "my_network.pth"
    output.write_bytes(b"earlier weights")
    with pytest.raises((pickle.PicklingError, AttributeError)):  # which one depends on the Python version
        step1.save_atomically({"not a tensor": lambda: None}, str(output))  # cannot be pickled
    assert output.read_bytes() == b"earlier weights"
    assert os.listdir(tmp_path) == ["my_network.pth"]


def test_missing_data_offline_is_one_clear_line(tmp_path):
    output = tmp_path / "my_network.pth"
    output.write_bytes(b"earlier weights")
    data_dir = tmp_path / "datasets"
    # Send any download to a closed local port, so the test is offline wherever it runs.
    env = dict(os.environ, http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9", no_proxy="")
    result = subprocess.run(
        [sys.executable, "step1.py", "--data-dir", str(data_dir), "--output", str(output)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stdout.splitlines()[:1] == [line for line in result.stdout.splitlines() if line.startswith("Device")]
    assert "Training" not in result.stdout
    [error] = result.stderr.splitlines()
    assert error.startswith("error: CIFAR-10 is not in %s and could not be downloaded" % data_dir)
    assert "cifar-10-python.tar.gz" in error and "cifar-10-batches-py/" in error and "--data-dir" in error
    assert not data_dir.exists()  # no empty folder left behind
    assert output.read_bytes() == b"earlier weights"
