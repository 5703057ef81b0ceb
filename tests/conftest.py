"""Shared test helpers: a tiny CIFAR-10 folder in torchvision's layout, the md5 bypass it needs,
ways to run step1.py (in this process, or as `python step1.py` would) and the README's snippets,
an earlier weights file for step1.py to keep or replace, and root's powers set aside."""
import contextlib
import ctypes
import errno
import io
import os
import pickle
import re
import signal
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar as cifar

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # so that the tests import the repository's model.py and step1.py

import failures  # noqa: E402
import step1  # noqa: E402
import stop_signals  # noqa: E402
from model import MyNet  # noqa: E402

# For the tests that need an NVIDIA GPU: skipped without one (CI has none); gpu_check.sh runs them.
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (CUDA); gpu_check.sh runs it")

# The label names of the real CIFAR-10, in the order of its batches.meta, which torchvision reads.
CIFAR10_LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TRAIN_PER_BATCH = 24  # 5 batches: 120 training images
TRAIN_IMAGES = 5 * TRAIN_PER_BATCH
TEST_IMAGES = 64  # the README's picture of predictions shows the first 64


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
        pickle.dump({"label_names": CIFAR10_LABEL_NAMES, "num_cases_per_batch": TRAIN_PER_BATCH, "num_vis": 3072}, file)
    return root


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory):
    return str(write_cifar(tmp_path_factory.mktemp("datasets")))


def skip_md5(setattr=setattr):
    """torchvision checks the md5 of the original CIFAR-10 files; ours are not those.

    Give monkeypatch.setattr in a test; a child process (see run_python) calls it as it is."""
    setattr(cifar.CIFAR10, "_check_integrity", lambda self: True)
    setattr(cifar, "check_integrity", lambda *args, **kwargs: True)


@pytest.fixture
def skip_md5_check(monkeypatch):
    skip_md5(monkeypatch.setattr)


def pytest_configure(config):
    # A file left open is an error here, not a warning that scrolls by.
    config.addinivalue_line("filterwarnings", "error::ResourceWarning")
    config.addinivalue_line("filterwarnings", "error::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(autouse=True)
def keep_signal_handlers():
    """step1.py ignores Ctrl-C and kill while it saves (its run then ends); not for the tests that follow."""
    handlers = {number: signal.getsignal(number) for number in stop_signals.STOP_SIGNALS}
    yield
    for number, handler in handlers.items():
        signal.signal(number, handler)


def run_step1(args, as_a_script=True, out=None):
    """Run step1.py's main(args) here, as `python step1.py` runs it (its stop signals, and one line for a failure)
    unless as_a_script is false, its standard output going to out if given; return its exit code, printed lines and
    error output."""
    out = out or io.StringIO()
    err = io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            if as_a_script:
                with stop_signals.StopSignals(), failures.one_line_for_failures():
                    step1.main(args)
            else:
                step1.main(args)
        except SystemExit as exit:
            code = exit.code
            if isinstance(code, str):  # sys.exit("message") prints the message and exits with 1
                print(code, file=sys.stderr)
                code = 1
    return code, out.getvalue().splitlines(), err.getvalue()


def earlier_weights(path):
    """Write MyNet's weights to path, as a run before this one did; return the file's bytes."""
    torch.save(MyNet().state_dict(), path)
    return path.read_bytes()


def train(cifar_dir, output, *extra):
    """A run of step1.py on the tiny data set that must succeed; returns its printed lines."""
    with pytest.MonkeyPatch.context() as patch:
        skip_md5(patch.setattr)
        code, lines, err = run_step1(["--data-dir", cifar_dir, "--output", str(output), "--device", "cpu", *extra])
    assert code == 0, err
    return lines


@pytest.fixture(scope="session")
def guide_run(cifar_dir, tmp_path_factory):
    """Two epochs on the tiny data set: 12 mini-batches of 10 per epoch, the loss every 4."""
    output = tmp_path_factory.mktemp("run") / "my_network.pth"
    lines = train(cifar_dir, output, "--epochs", "2", "--log-interval", "4", "--lr", "0.02")
    return lines, output


def python_command(script, *args, md5=False):
    """The command that runs script as `python script args` would, here with the md5 check skipped
    unless md5 is true. The child imports this file, so it finds model.py as a user's script would."""
    code = ("import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); import conftest; "
            + ("" if md5 else "conftest.skip_md5(); ")
            + "sys.argv.pop(0); runpy.run_path(sys.argv[0], run_name='__main__')")
    return [sys.executable, "-c", code, os.path.dirname(__file__), script, *map(str, args)]


def run_python(script, *args, cwd, md5=False, env=None, timeout=120):
    return subprocess.run(python_command(script, *args, md5=md5), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, PYTHONPATH=ROOT, **(env or {})))


def readme_snippet(containing):
    """The one ```python block of the README that contains the given text."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as file:
        readme = file.read()
    [snippet] = [block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if containing in block]
    return snippet


# With no way out: a download fails at once, wherever the tests run.
OFFLINE = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "no_proxy": ""}


AS_ROOT = os.geteuid() == 0


class CapabilityHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapabilitySets(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


@contextlib.contextmanager
def without_capabilities(capabilities):
    """Within, where the tests run as root: this thread without the given capabilities (a bit mask), so that the
    system refuses it, for real, what it refuses a user's process, which never has them. Elsewhere: a user's already."""
    if not AS_ROOT:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    header = CapabilityHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    sets = (CapabilitySets * 2)()

    def call(function):
        if function(ctypes.byref(header), sets) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))

    call(libc.capget)
    powers = sets[0].effective
    sets[0].effective &= ~capabilities
    call(libc.capset)
    try:
        yield
    finally:
        sets[0].effective = powers
        call(libc.capset)


def as_a_user():
    """Within: without the powers that let root ignore permission bits, ownership and sticky folders (CAP_CHOWN,
    CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER: capabilities 0 to 3)."""
    return without_capabilities(0b1111)


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


def simulate_a_full_disk(monkeypatch, disk, size):
    """Writing a file in disk fails with ENOSPC once the files there would hold more than size bytes."""
    real_open = open

    class Limited:
        def __init__(self, file):
            self.file = file

        def write(self, data):
            self.file.flush()
            used = sum(path.stat().st_size for path in disk.rglob("*") if path.is_file())
            if used + len(data) > size:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.file.write(data)

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exception):
            self.file.close()

    def limited_open(name, mode="r", *args, **kwargs):
        file = real_open(name, mode, *args, **kwargs)
        return Limited(file) if str(name).startswith(str(disk)) and mode in ("wb", "xb") else file

    monkeypatch.setattr("builtins.open", limited_open)
    monkeypatch.setattr(tarfile, "bltn_open", limited_open)


@pytest.fixture
def temporary_folder(tmp_path, monkeypatch):
    """The system's temporary folder, as step1.py finds it: a folder of this test's."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture(scope="session")
def one_epoch_weights(cifar_dir, tmp_path_factory):
    """The weights of a one-epoch run with the default seed: what a run that could not save them must keep."""
    output = tmp_path_factory.mktemp("reference") / "my_network.pth"
    train(cifar_dir, output, "--epochs", "1")
    return torch.load(output, weights_only=True)


@pytest.fixture
def offline(monkeypatch):
    """Any download fails as it does without a network (faster than a new Python with OFFLINE)."""
    def refuse(*args, **kwargs):
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
