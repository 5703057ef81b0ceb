"""The tests' fixtures, the gpu marker and pytest's hooks. What the tests call: helpers.py."""
import contextlib
import inspect
import os
import signal
import subprocess
import tempfile
import urllib.error
import urllib.request

import pytest
import torch

import stop_signals
from helpers import AS_ROOT, ONE_EPOCH, simulate_a_full_disk, skip_md5, train, write_cifar


def pytest_configure(config):
    # A file left open is an error here, not a warning that scrolls by.
    config.addinivalue_line("filterwarnings", "error::ResourceWarning")
    config.addinivalue_line("filterwarnings", "error::pytest.PytestUnraisableExceptionWarning")
    config.addinivalue_line("markers", "gpu: needs an NVIDIA GPU (CUDA); skipped without one")
    config.addinivalue_line("markers", "new_python(start=...): the test reads what start began in new Pythons as "
                                       "the session started (the fixtures new_pythons and started)")
    # One thread for torch, here and in the new Pythons that some tests start: the tests' mini-batches are too small
    # to gain from more, and on a machine whose cores are busy (with those Pythons, or other programs), torch's
    # threads spend their time waiting for each other.
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


def pytest_collection_modifyitems(config, items):
    """The tests marked gpu are skipped without an NVIDIA GPU (CI has none): `python -m pytest` runs them on a machine
    with one. The tests marked new_python run last, when the new Pythons that started with the session have most
    likely done their work."""
    items.sort(key=lambda item: item.get_closest_marker("new_python") is not None)  # stable: in order otherwise
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
    """The weights of a quick run (ONE_EPOCH) with the default seed: what a run that could not save them must keep."""
    output = tmp_path_factory.mktemp("reference") / "my_network.pth"
    train(cifar_dir, output, *ONE_EPOCH)
    return torch.load(output, weights_only=True)


@pytest.fixture(scope="session", autouse=True)
def new_pythons(request, tmp_path_factory):
    """The new Pythons of the selected tests marked new_python(start=...), all started as the session starts: each
    takes seconds to import torch, which it does on a core that the tests in this process leave free meanwhile.

    start is a generator, as a fixture is: its parameters are fixtures, or folder, a new folder of its own; what it
    yields goes to the tests marked with it (the fixture started); after the session, it ends what it began."""
    starts = {marker.kwargs["start"] for item in request.session.items for marker in item.iter_markers("new_python")}
    begun = {}
    with contextlib.ExitStack() as stack:
        for start in sorted(starts, key=lambda start: start.__name__):
            values = {name: tmp_path_factory.mktemp(start.__name__) if name == "folder"
                      else request.getfixturevalue(name) for name in inspect.signature(start).parameters}
            try:
                begun[start] = stack.enter_context(contextlib.contextmanager(start)(**values))
            except Exception as error:  # a failure for the tests marked with it, not for every test
                begun[start] = error
        yield begun


@pytest.fixture
def started(request, new_pythons):
    """What the start of this test's new_python(start=...) marker began as the session started."""
    begun = new_pythons[request.node.get_closest_marker("new_python").kwargs["start"]]
    if isinstance(begun, Exception):
        raise begun
    return begun


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
