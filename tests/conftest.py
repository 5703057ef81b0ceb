"""The tests' fixtures, the gpu marker and pytest's hooks. What the tests call: helpers.py."""
import os
import signal
import subprocess
import tempfile
import urllib.error
import urllib.request

import pytest
import torch

import stop_signals
from helpers import AS_ROOT, MODULES, ImportsInANewPython, simulate_a_full_disk, skip_md5, train, write_cifar


def pytest_configure(config):
    # A file left open is an error here, not a warning that scrolls by.
    config.addinivalue_line("filterwarnings", "error::ResourceWarning")
    config.addinivalue_line("filterwarnings", "error::pytest.PytestUnraisableExceptionWarning")
    config.addinivalue_line("markers", "gpu: needs an NVIDIA GPU (CUDA); skipped without one")
    # One thread for torch, here and in the new Pythons that some tests start: the tests' mini-batches are too small
    # to gain from more, and on a machine whose cores are busy (with those Pythons, or other programs), torch's
    # threads spend their time waiting for each other.
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


def pytest_collection_modifyitems(config, items):
    """The tests marked gpu are skipped without an NVIDIA GPU (CI has none): `python -m pytest` runs them on a machine
    with one."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (CUDA): run python -m pytest on a machine with one")
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


@pytest.fixture(scope="session", autouse=True)
def new_python_importing_the_modules(request, tmp_path_factory):
    """helpers.ImportsInANewPython, started with the session when a selected test needs it: it takes seconds to
    import torch and the modules, which it does on a core that the tests in this process leave free meanwhile."""
    if not any("imports_in_a_new_python" in item.fixturenames for item in request.session.items):
        yield None
        return
    new_python = ImportsInANewPython(MODULES, tmp_path_factory.mktemp("imports") / "found.json")
    yield new_python
    with new_python.process as process:
        process.kill()  # if no test waited for it


@pytest.fixture(scope="session")
def imports_in_a_new_python(new_python_importing_the_modules):
    """What one new Python found as it imported each of the repository's modules in turn, and what it printed: for
    the tests of what importing model.py and the others does."""
    return new_python_importing_the_modules.result()


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
    """Any download fails as it does without a network: the connection is refused."""
    def refuse(*args, **kwargs):
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
