"""What step1.py prints, trains and saves, and the options it takes. Its safeguards: test_safeguards.py."""
import inspect
import os
import re

import pytest
import torch
import torchvision
import torchvision.transforms as transforms

import step1
from helpers import (
    ACCURACY_PATTERN,
    CIFAR10_LABEL_NAMES,
    LOSS_PATTERN,
    TEST_IMAGES,
    TRAIN_IMAGES,
    parse,
    run_step1,
    train,
)
from model import MyNet

LOSS_LINE = "Epoch : %2d, mini-batch : %4d, loss : %.3f"
ACCURACY_LINE = "Epoch : %2d, training accuracy = %6.2f %%, test accuracy = %6.2f %%"
CLASS_LINE = re.compile(r"  (\w+) +: (?: *(\d+\.\d\d) %|no test images)")


def class_table(lines):
    """{class name: accuracy or None} from the per-class lines, checked for their format."""
    start = lines.index("Test accuracy per class")
    table = {}
    for line in lines[start + 1:start + 11]:
        match = CLASS_LINE.fullmatch(line)
        assert match, line
        name, value = match.groups()
        assert line.startswith("  %-10s : " % name)  # the values line up
        table[name] = None if value is None else float(value)
    return table


def test_prints_the_guides_lines_then_the_classes_then_where_the_weights_went(guide_run):
    lines, output = guide_run
    assert lines[:6] == [
        "Device            : cpu",
        "Training set size : %d" % TRAIN_IMAGES,
        "Test set size     : %d" % TEST_IMAGES,
        "Image size        : 32 x 32",
        "",
        "Training",
    ]
    order = []
    losses = []
    for line in lines[6:14]:
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
    assert lines[14:16] == ["", "Test accuracy per class"]
    assert list(class_table(lines)) == CIFAR10_LABEL_NAMES
    assert lines[26] == ""
    assert re.fullmatch(r"Saved the weights to .*my_network\.pth \(training and testing took \d+ s\)", lines[27])
    assert len(lines) == 28


def test_saved_file_is_a_plain_state_dict_of_cpu_tensors(guide_run):
    _, output = guide_run
    state_dict = torch.load(output, weights_only=True)
    assert list(state_dict) == list(MyNet().state_dict())
    assert all(tensor.device.type == "cpu" for tensor in state_dict.values())
    assert os.listdir(output.parent) == ["my_network.pth"]  # no temporary file left behind


def test_saved_weights_reproduce_the_printed_accuracies_computed_the_guides_way(guide_run, cifar_dir, skip_md5_check):
    lines, output = guide_run
    _, printed_training, printed_test = parse(lines[13], ACCURACY_PATTERN)
    model = MyNet()
    model.load_state_dict(torch.load(output, weights_only=True))
    model.eval()
    predictions = {}
    for training_split in (True, False):
        dataset = torchvision.datasets.CIFAR10(cifar_dir, train=training_split, transform=transforms.ToTensor())
        with torch.no_grad():  # ToTensor() images in batches of 10, as the guide does
            predictions[training_split] = [(model(images).argmax(dim=1), labels)
                                           for images, labels in torch.utils.data.DataLoader(dataset, batch_size=10)]
    guessed, truth = (torch.cat(column) for column in zip(*predictions[False]))
    training_right = sum((guessed_ == truth_).sum().item() for guessed_, truth_ in predictions[True])
    assert "%.2f" % (100.0 * training_right / TRAIN_IMAGES) == "%.2f" % printed_training
    assert "%.2f" % (100.0 * (guessed == truth).sum().item() / TEST_IMAGES) == "%.2f" % printed_test
    assert printed_training > 20  # it learned something: chance is 10 %
    for number, (name, printed) in enumerate(class_table(lines).items()):
        of_class = truth == number
        expected = None if not of_class.any() else "%.2f" % (100.0 * (guessed[of_class] == number).float().mean())
        assert expected == (None if printed is None else "%.2f" % printed), name


def test_class_accuracies_weighted_by_class_size_give_the_test_accuracy(guide_run, cifar_dir, skip_md5_check):
    lines, _ = guide_run
    _, _, printed_test = parse(lines[13], ACCURACY_PATTERN)
    counts = torch.bincount(torch.tensor(torchvision.datasets.CIFAR10(cifar_dir, train=False).targets), minlength=10)
    table = class_table(lines)
    assert all(value is not None for value in table.values())  # 64 test images: every class has some
    weighted = sum(value * count for value, count in zip(table.values(), counts.tolist())) / TEST_IMAGES
    assert abs(weighted - printed_test) < 0.01  # the printed figures are rounded to 2 decimals
    assert len(set(table.values())) > 1  # not one figure copied ten times


def test_a_class_missing_from_a_limited_test_set_says_so(cifar_dir, tmp_path, skip_md5_check):
    first_labels = torchvision.datasets.CIFAR10(cifar_dir, train=False).targets[:6]
    lines = train(cifar_dir, tmp_path / "w.pth", "--epochs", "1", "--limit", "6")
    table = class_table(lines)
    missing = {name for number, name in enumerate(CIFAR10_LABEL_NAMES) if number not in first_labels}
    assert missing  # 6 images cannot hold all 10 classes
    assert {name for name, value in table.items() if value is None} == missing
    assert "  %-10s : no test images" % sorted(missing)[0] in lines


def test_images_are_exactly_what_totensor_gives(cifar_dir, skip_md5_check):
    dataset = torchvision.datasets.CIFAR10(cifar_dir, train=True, transform=transforms.ToTensor())
    expected = torch.stack([image for image, _ in dataset])
    ours = step1.to_float(torch.from_numpy(dataset.data).permute(0, 3, 1, 2))
    assert ours.dtype == torch.float32
    assert torch.equal(ours, expected)


def test_same_seed_same_run_other_seed_other_weights(cifar_dir, tmp_path):
    runs = {}
    for name, seed in [("first", "7"), ("again", "7"), ("other", "8")]:
        lines = train(cifar_dir, tmp_path / f"{name}.pth", "--epochs", "1", "--log-interval", "3", "--seed", seed)
        runs[name] = lines[:-1], torch.load(tmp_path / f"{name}.pth", weights_only=True)  # the last line has a time
    (first_lines, first), (again_lines, again), (other_lines, other) = runs["first"], runs["again"], runs["other"]
    assert first_lines == again_lines
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["fc_layers.5.weight"], other["fc_layers.5.weight"])
    assert first_lines != other_lines


def test_each_epoch_sees_every_training_image_once_in_a_new_order(cifar_dir, tmp_path, monkeypatch):
    seen = []
    real_to_float = step1.to_float

    def recording_to_float(images):
        if torch.is_grad_enabled():  # training, not the accuracy passes
            seen.append(images.clone())
        return real_to_float(images)

    monkeypatch.setattr(step1, "to_float", recording_to_float)
    train(cifar_dir, tmp_path / "w.pth", "--epochs", "2", "--batch-size", "25")
    assert [len(batch) for batch in seen] == [25, 25, 25, 25, 20] * 2
    epochs = [torch.cat(seen[:5]), torch.cat(seen[5:])]
    flat = [epoch.flatten(start_dim=1) for epoch in epochs]
    for epoch in flat:  # every image once: 120 different images
        assert len(torch.unique(epoch, dim=0)) == TRAIN_IMAGES
    assert torch.equal(torch.unique(flat[0], dim=0), torch.unique(flat[1], dim=0))  # the same images
    assert not torch.equal(flat[0], flat[1])  # in another order


def test_the_loss_of_an_uneven_epoch_ends_with_its_last_mini_batches(cifar_dir, tmp_path):
    lines = train(cifar_dir, tmp_path / "w.pth", "--epochs", "1", "--log-interval", "5")
    losses = [parse(line, LOSS_PATTERN) for line in lines if "mini-batch" in line]
    assert [batch for _, batch, _ in losses] == [5, 10, 12]  # 12 mini-batches of 10
    assert all(1.5 < loss < 3.5 for _, _, loss in losses)  # means, not sums


@pytest.mark.parametrize("limit, sizes", [("30", (30, 30)), ("1000", (TRAIN_IMAGES, TEST_IMAGES)),
                                          ("0", (TRAIN_IMAGES, TEST_IMAGES))])
def test_limit_uses_only_the_first_images(cifar_dir, tmp_path, limit, sizes):
    lines = train(cifar_dir, tmp_path / "w.pth", "--epochs", "1", "--log-interval", "1", "--limit", limit)
    assert lines[1:3] == ["Training set size : %d" % sizes[0], "Test set size     : %d" % sizes[1]]
    assert sum("mini-batch" in line for line in lines) == -(-sizes[0] // 10)


def test_the_defaults_are_the_guides_values():
    code, lines, _ = run_step1(["--help"])
    assert code == 0
    text = " ".join(" ".join(lines).split())  # argparse wraps the lines
    for option, default in [("--epochs", "10"), ("--batch-size", "10"), ("--lr", "0.001"), ("--momentum", "0.9"),
                            ("--log-interval", "1000"), ("--output", "my_network.pth"), ("--data-dir", "~/datasets"),
                            ("--limit", "0")]:
        assert re.search(re.escape(option) + r" \S+ .*?\(default: " + re.escape(default) + r"\)", text), option
    assert "0: all" in text  # what the --limit default means
    assert re.search(r"--cuda-graph, --no-cuda-graph .*CUDA graph.*\(default: True\)", text)
    assert "None" not in text


@pytest.mark.parametrize("bad", [
    ["--epochs", "0"], ["--epochs", "ten"], ["--batch-size", "0"], ["--batch-size", "99999999999999999999999"],
    ["--limit", "-1"], ["--limit", "1000000001"], ["--log-interval", "0"],
    ["--lr", "0"], ["--lr", "-0.1"], ["--lr", "inf"], ["--lr", "nan"], ["--lr", "-inf"],
    ["--momentum", "1"], ["--momentum", "-0.5"],
    ["--momentum", "nan"], ["--seed", "-1"], ["--seed", "18446744073709551616"], ["--device", "tpu"],
])
def test_values_that_cannot_work_are_refused_before_anything_else(bad, tmp_path):
    code, lines, err = run_step1([*bad, "--output", str(tmp_path / "w.pth")])
    assert code == 2
    assert lines == []
    usage, error = err.splitlines()  # argparse's usage line, then the error
    assert re.fullmatch(r"usage: \S+ \[options\]  \(--help lists them\)", usage)  # prog: pytest's here
    assert ": error: argument %s: " % bad[0] in error
    assert os.listdir(tmp_path) == []


def test_the_lr_must_be_more_than_0_and_finite_and_nothing_more(cifar_dir, tmp_path):
    code, _, err = run_step1(["--lr", "0", "--output", str(tmp_path / "w.pth")])
    assert err.splitlines()[-1].endswith("error: argument --lr: must be more than 0 and finite, got 0.0")
    # A tiny one is a number like any other: it trains (next to nothing), as the README says.
    lines = train(cifar_dir, tmp_path / "w.pth", "--epochs", "1", "--lr", "1e-30", "--limit", "10")
    assert lines[-1].startswith("Saved the weights")


def test_workers_is_gone(tmp_path):
    code, _, err = run_step1(["--workers", "2", "--output", str(tmp_path / "w.pth")])
    assert code == 2
    assert "unrecognized arguments: --workers 2" in err


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_asking_for_a_missing_gpu_is_refused(device, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    code, lines, err = run_step1(["--device", device, "--output", str(tmp_path / "w.pth")])
    assert code == 2
    assert lines == []
    assert "error: argument --device: %s is not available" % device in err


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_device_prefers_cuda_then_mps_then_cpu(cuda, mps, expected, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert step1.device_option("auto") == torch.device(expected)


def test_main_shows_the_guides_blocks_in_the_guides_order():
    """A reader with the guide open beside step1.py finds each of its blocks in main(), in its order, and main() is
    most of the file: the rest lives in modules named by what they do."""
    source = inspect.getsource(step1.main)
    blocks = ["# Parameters", "torchvision.datasets.CIFAR10(root=args.data_dir, train=True, download=True)",
              "torchvision.datasets.CIFAR10(root=args.data_dir, train=False, download=True)", "model = MyNet()",
              "criterion = nn.CrossEntropyLoss()", "optimizer = optim.SGD(model.parameters(), lr=args.lr",
              'print("Training")', "optimizer.zero_grad(", "outputs = model(images)",
              "loss = criterion(outputs, labels)", "loss.backward()", "optimizer.step()",
              "accuracy(model, train_images, train_labels)", "accuracy(model, test_images, test_labels)",
              "# Saving", ".save(model.state_dict())"]
    places = [source.find(block) for block in blocks]
    assert -1 not in places, [block for block, place in zip(blocks, places) if place == -1]
    assert places == sorted(places), "out of the guide's order"
    # The step is written once, before the loop that calls it after model.train() each epoch.
    assert source.find("model.train()") < source.find("training_step(batch)\n")
    with open(step1.__file__, encoding="utf-8") as file:
        length = len(file.readlines())
    assert length <= 200
    assert len(source.splitlines()) >= length / 2
