"""Shared test helpers: a tiny CIFAR-10 folder in torchvision's layout, and step1.py run in this process."""
import contextlib
import io
import os
import pickle
import sys

import numpy as np
import pytest
import torchvision.datasets.cifar as cifar

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # so that the tests import the repository's model.py and step1.py

import step1  # noqa: E402

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TRAIN_PER_BATCH = 24  # 5 batches: 120 training images
TEST_IMAGES = 40


def write_cifar(root, seed=0):
    """Write a small CIFAR-10 look-alike under root/cifar-10-batches-py, as torchvision expects it.

    Each class has its own mean colour, so a network can learn something from it.
    """
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    colours = rng.integers(40, 216, size=(10, 3))

    def batch(count, name):
        labels = rng.integers(0, 10, size=count)
        noise = rng.integers(-40, 40, size=(count, 3, 32 * 32))
        pixels = (colours[labels][:, :, None] + noise).clip(0, 255).astype(np.uint8)
        # CIFAR-10 stores each image as 1024 red, then 1024 green, then 1024 blue bytes.
        return {"data": pixels.reshape(count, 3072), "labels": labels.tolist(), "batch_label": name}

    for number in range(1, 6):
        with open(os.path.join(folder, f"data_batch_{number}"), "wb") as file:
            pickle.dump(batch(TRAIN_PER_BATCH, f"training batch {number} of 5"), file)
    with open(os.path.join(folder, "test_batch"), "wb") as file:
        pickle.dump(batch(TEST_IMAGES, "testing batch 1 of 1"), file)
    with open(os.path.join(folder, "batches.meta"), "wb") as file:
        pickle.dump({"label_names": CLASSES, "num_cases_per_batch": TRAIN_PER_BATCH, "num_vis": 3072}, file)
    return root


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory):
    return str(write_cifar(tmp_path_factory.mktemp("datasets")))


def skip_md5(patch):
    """torchvision checks the md5 of the original CIFAR-10 files; ours are not those."""
    patch.setattr(cifar.CIFAR10, "_check_integrity", lambda self: True)
    patch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)


@pytest.fixture
def skip_md5_check(monkeypatch):
    skip_md5(monkeypatch)


def run_step1(args):
    """Run step1.py's main(args) here; return its exit code, printed lines and error output."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            step1.main(args)
        except SystemExit as exit:
            code = exit.code
    return code, out.getvalue().splitlines(), err.getvalue()


def train(cifar_dir, output, *extra):
    with pytest.MonkeyPatch.context() as patch:
        skip_md5(patch)
        code, lines, err = run_step1(["--data-dir", cifar_dir, "--output", str(output), "--device", "cpu", *extra])
    assert code == 0, err
    return lines


@pytest.fixture(scope="session")
def guide_run(cifar_dir, tmp_path_factory):
    """Two epochs on the tiny data set: 12 mini-batches of 10 per epoch, the loss every 4."""
    output = tmp_path_factory.mktemp("run") / "my_network.pth"
    lines = train(cifar_dir, output, "--epochs", "2", "--log-interval", "4", "--lr", "0.02")
    return lines, output
