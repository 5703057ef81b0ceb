"""The tests' fixtures, the gpu marker and pytest's hooks. What the tests call: helpers.py."""
import signal
import subprocess
import tempfile
import urllib.error
import urllib.request

import pytest
import torch

import stop_signals
from helpers import AS_ROOT, simulate_a_full_disk, skip_md5, train, write_cifar


def pytest_configure(config):
    # A file left open is an error here, not a warning that scrolls by.
    config.addinivalue_line("filterwarnings", "error::ResourceWarning")
    config.addinivalue_line("filterwarnings", "error::pytest.PytestUnraisableExceptionWarning")
    config.addinivalue_line("markers", "gpu: needs an NVIDIA GPU (CUDA); skipped without one")


def pytest_collection_modifyitems(config, items):
    """The tests marked gpu are skipped without an NVIDIA GPU (CI has none); gpu_check.sh runs them."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (CUDA); gpu_check.sh runs it")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def keep_signal_handlers():
    """step1.py ignores Ctrl-C and kill while it saves (its run then ends); not for the tests that follow."""
    handlers = {number: signal.getsignal(number) for number in stop_signals.STOP_SIGNALS}
    yield
    for number, handler in handlers.items():
        signal.signal(number, handler)


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory):
    return str(write_cifar(tmp_path_factory.mktemp("datasets")))


@pytest.fixture
def skip_md5_check(monkeypatch):
    skip_md5(monkeypatch.setattr)


@pytest.fixture(scope="session")
def guide_run(cifar_dir, tmp_path_factory):
    """Two epochs on the tiny data set: 12 mini-batches of 10 per epoch, the loss every 4."""
    output = tmp_path_factory.mktemp("run") / "my_network.pth"
    lines = train(cifar_dir, output, "--epochs", "2", "--log-interval", "4", "--lr", "0.02")
    return lines, output


@pytest.fixture(scope="session")
def one_epoch_weights(cifar_dir, tmp_path_factory):
    """The weights of a one-epoch run with the default seed: what a run that could not save them must keep."""
    output = tmp_path_factory.mktemp("reference") / "my_network.pth"
    train(cifar_dir, output, "--epochs", "1")
    return torch.load(output, weights_only=True)


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """small_disk(kib): a folder on a disk of that many KiB. A real tmpfs where the tests run as root; elsewhere,
    writing more than that in the folder fails as it does on a full disk."""
    mounted = []

    def make(kib):
        disk = tmp_path / "disk"
        disk.mkdir()
        if AS_ROOT:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(disk)], check=True)
            mounted.append(disk)
        else:
            simulate_a_full_disk(monkeypatch, disk, kib * 1024)
        return disk

    yield make
    for disk in mounted:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.fixture
def temporary_folder(tmp_path, monkeypatch):
    """The system's temporary folders, as step1.py finds them: a folder of this test's."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setattr(tempfile, "_candidate_tempdir_list", lambda: [str(folder)])  # not /tmp: the tests' own only
    return folder


@pytest.fixture
def offline(monkeypatch):
    """Any download fails as it does without a network (faster than a new Python with helpers.OFFLINE)."""
    def refuse(*args, **kwargs):
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
