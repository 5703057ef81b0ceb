"""Shared test helpers: a tiny CIFAR-10 folder in torchvision's layout, written by the tests."""
import os
import pickle
import sys

import numpy as np
import pytest
import torchvision.datasets.cifar as cifar

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # so that the tests import the repository's model.py and step1.py

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


# Run as the body of `python -c`: the same md5 bypass as skip_md5_check, then the given script.
SKIP_MD5_THEN_RUN = (
    "import runpy, sys; import torchvision.datasets.cifar as cifar; "
    "cifar.CIFAR10._check_integrity = lambda self: True; cifar.check_integrity = lambda *a, **k: True; "
    "script = sys.argv[1]; sys.argv = sys.argv[1:]; runpy.run_path(script, run_name='__main__')"
)


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory):
    return str(write_cifar(tmp_path_factory.mktemp("datasets")))


@pytest.fixture
def skip_md5_check(monkeypatch):
    """torchvision checks the md5 of the original CIFAR-10 files; ours are not those."""
    monkeypatch.setattr(cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
