"""What step1.py trains: each option honoured, and the weights and losses that the guide's own loop gives.

A run with every training option away from its default is compared with the guide's loop, written out here: the
same seed draws the same initial weights, orders and dropout, so the two give the same weights up to float rounding
(step1.py's fused SGD and channels-last images round a little differently). An option ignored, a step skipped or a
mode not set shows as other weights or other losses."""
import re

import pytest
import torch
import torch.nn as nn
import torchvision
import torchvision.transforms as transforms

import cuda_graph
import step1
from helpers import LOSS_PATTERN, guide_training, parse, skip_md5, train
from model import MyNet

# Every training option away from its default: 40 images, 5 mini-batches of 8 an epoch, the loss after 2, 4 and 5.
EPOCHS = 2
BATCH_SIZE = 8
LR = 0.03
LOG_INTERVAL = 2
LIMIT = 40
SEED = 5
OPTIONS = ["--epochs", str(EPOCHS), "--batch-size", str(BATCH_SIZE), "--lr", str(LR), "--log-interval",
           str(LOG_INTERVAL), "--limit", str(LIMIT), "--seed", str(SEED)]


def guide_training_with_the_options(cifar_dir, momentum):
    """The guide's loop on the first LIMIT training images (ToTensor() images, as the guide reads them), with OPTIONS
    and that momentum. Returns the weights and the mean losses it would print, by (epoch, mini-batch)."""
    with pytest.MonkeyPatch.context() as patch:
        skip_md5(patch.setattr)
        dataset = torchvision.datasets.CIFAR10(cifar_dir, train=True, transform=transforms.ToTensor())
    images = torch.stack([dataset[index][0] for index in range(LIMIT)])
    labels = torch.tensor(dataset.targets[:LIMIT])
    torch.manual_seed(SEED)
    model = MyNet()
    losses = guide_training(model, images, labels, EPOCHS, BATCH_SIZE, LR, momentum, LOG_INTERVAL)
    return model.state_dict(), losses


MOMENTA = [0.0, 0.5]  # not the default 0.9: a run that ignores --momentum matches neither


@pytest.fixture(scope="module")
def runs(cifar_dir, tmp_path_factory):
    """{momentum: (printed lines, saved weights)} of runs of step1.py with OPTIONS and that --momentum."""
    folder = tmp_path_factory.mktemp("options")
    runs = {}
    for momentum in MOMENTA:
        output = folder / f"{momentum}.pth"
        lines = train(cifar_dir, output, *OPTIONS, "--momentum", str(momentum))
        runs[momentum] = lines, torch.load(output, weights_only=True)
    return runs


@pytest.fixture(scope="module")
def guide(cifar_dir):
    """{momentum: (weights, mean losses)} of the guide's loop with OPTIONS and that momentum."""
    return {momentum: guide_training_with_the_options(cifar_dir, momentum) for momentum in MOMENTA}


@pytest.mark.parametrize("momentum", MOMENTA)
def test_a_run_gives_the_weights_of_the_guides_loop_with_its_options(runs, guide, momentum):
    _, weights = runs[momentum]
    expected, _ = guide[momentum]
    assert list(weights) == list(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(weights[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("momentum", MOMENTA)
def test_a_run_prints_the_mean_losses_of_the_guides_loop_with_its_options(runs, guide, momentum):
    lines, _ = runs[momentum]
    _, expected = guide[momentum]
    printed = {}
    for line in lines:
        if "mini-batch" in line:
            epoch, batch, loss = parse(line, LOSS_PATTERN)
            printed[epoch, batch] = loss
    assert list(printed) == [(0, 2), (0, 4), (0, 5), (1, 2), (1, 4), (1, 5)]
    assert list(printed) == list(expected)
    for key, loss in expected.items():
        assert abs(printed[key] - loss) < 0.0015, key  # printed with 3 decimals


def test_runs_with_another_momentum_give_other_weights(runs):
    assert not torch.equal(runs[0.0][1]["fc_layers.5.weight"], runs[0.5][1]["fc_layers.5.weight"])


def test_every_training_step_runs_in_training_mode(cifar_dir, tmp_path, monkeypatch):
    """A new MyNet starts in training mode, and accuracy() leaves it in eval mode: each epoch must set it again."""
    modes = []

    class ModeRecordingNet(MyNet):
        def forward(self, x):
            if torch.is_grad_enabled():  # a training step, not an accuracy pass
                modes.append(self.training)
            return super().forward(x)

    monkeypatch.setattr(step1, "MyNet", ModeRecordingNet)
    train(cifar_dir, tmp_path / "w.pth", "--epochs", "3", "--limit", "20")
    assert modes == [True] * 6  # 2 mini-batches an epoch


def test_the_accuracy_is_measured_in_eval_mode_and_leaves_the_weights_alone():
    """In training mode, batch normalization would use each batch's statistics and update its running ones."""
    torch.manual_seed(0)
    model = MyNet()
    model.train()
    images = torch.randint(0, 256, (30, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (30,))
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    measured, _ = step1.accuracy(model, images, labels)
    assert not model.training
    assert all(torch.equal(tensor, before[name]) for name, tensor in model.state_dict().items())
    with torch.no_grad():
        right = (model(step1.to_float(images)).argmax(dim=1) == labels).sum().item()
    assert measured == 100.0 * right / 30


def test_per_class_accuracies_count_each_classs_images_and_those_classified_right():
    """Class i: of the images labelled i, the share predicted i. Nan for a class without images."""
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3, 3, 3])
    predictions = torch.tensor([0, 0, 1, 2, 1, 0, 0, 3, 3, 3])
    scores = nn.functional.one_hot(predictions, 10).float()

    class Fixed(nn.Module):
        def forward(self, images):
            return scores[(images[:, 0, 0, 0] * 255).round().long()]  # each image's pixels: its position

    images = torch.arange(10, dtype=torch.uint8)[:, None, None, None].expand(10, 3, 32, 32)
    overall, per_class = step1.accuracy(Fixed(), images, labels)
    assert overall == 60.0
    assert per_class[:4] == [50.0, 50.0, 0.0, 100.0]
    assert all(value != value for value in per_class[4:])  # nan: no images of those classes


@pytest.mark.parametrize("flag, graphed", [([], True), (["--cuda-graph"], True), (["--no-cuda-graph"], False)],
                         ids=["by default", "--cuda-graph", "--no-cuda-graph"])
def test_on_cuda_the_step_is_graphed_unless_no_cuda_graph(cifar_dir, tmp_path, monkeypatch, flag, graphed):
    """Runs anywhere: a device that says it is CUDA (its tensors stay on the CPU), and the graph left out."""
    class CudaForTheTest(str):
        type = "cuda"

    wrapped = []

    def recording(training_step, device):
        wrapped.append(device.type)
        return training_step

    monkeypatch.setattr(step1, "device_option", lambda name: CudaForTheTest("cpu"))
    monkeypatch.setattr(cuda_graph, "replayed_as_cuda_graph", recording)
    lines = train(cifar_dir, tmp_path / "w.pth", "--epochs", "1", "--limit", "10", *flag)
    assert wrapped == (["cuda"] if graphed else [])
    assert lines[-1].startswith("Saved the weights")


def test_each_of_the_epochs_trains_and_the_file_holds_the_last_ones_weights(cifar_dir, tmp_path, monkeypatch):
    """--epochs 3: three passes, each changing the weights; the file holds the model as the last one left it."""
    held = []
    real_accuracy = step1.accuracy

    def accuracy(model, images, labels):
        held.append({name: tensor.clone() for name, tensor in model.state_dict().items()})
        return real_accuracy(model, images, labels)

    monkeypatch.setattr(step1, "accuracy", accuracy)
    output = tmp_path / "w.pth"
    lines = train(cifar_dir, output, "--epochs", "3", "--limit", "20")
    saved = torch.load(output, weights_only=True)
    assert len(held) == 6  # training and test accuracy, each epoch
    assert all(torch.equal(saved[name], tensor) for name, tensor in held[-1].items())
    assert not torch.equal(held[1]["fc_layers.5.weight"], held[3]["fc_layers.5.weight"])
    assert sum(bool(re.match(r"Epoch :  \d, training accuracy", line)) for line in lines) == 3


def test_device_cpu_is_honoured_where_a_gpu_is_there(cifar_dir, tmp_path, monkeypatch):
    """auto would take the GPU; this machine's tensors could not go there, so a run that did would fail."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    lines = train(cifar_dir, tmp_path / "w.pth", "--epochs", "1", "--limit", "10")  # train() gives --device cpu
    assert lines[0] == "Device            : cpu"
    assert lines[-1].startswith("Saved the weights")


def test_training_runs_with_deterministic_cudnn_and_puts_the_setting_back(cifar_dir, tmp_path, monkeypatch):
    """On a GPU, the same seed gives the same weights only with cuDNN's deterministic convolutions."""
    seen = []
    real_to_float = step1.to_float

    def recording_to_float(images):
        if torch.is_grad_enabled():  # a training step
            seen.append(torch.backends.cudnn.deterministic)
        return real_to_float(images)

    monkeypatch.setattr(step1, "to_float", recording_to_float)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    train(cifar_dir, tmp_path / "w.pth", "--epochs", "1", "--limit", "20")
    assert seen == [True, True]
    assert torch.backends.cudnn.deterministic is False
