"""What several test files use: a tiny CIFAR-10 folder in torchvision's layout and the md5 check it needs skipped;
ways to run step1.py (in this process, or as `python step1.py` would) and to send it a signal at a given moment; a new
Python that imports each module in turn; earlier weights for step1.py to keep or replace, and checks of saved weights
and folders; a full disk where root's tmpfs cannot be had, and root's powers set aside; the guide's network and
training loop."""
import contextlib
import ctypes
import errno
import hashlib
import io
import json
import os
import pathlib
import pickle
import re
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.optim as optim
import torchvision.datasets.cifar as cifar
from torch.utils.data import DataLoader, TensorDataset

import failures
import step1
import stop_signals
from model import MyNet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The label names of the real CIFAR-10, in the order of its batches.meta, which torchvision reads.
CIFAR10_LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TRAIN_PER_BATCH = 24  # 5 batches: 120 training images
TRAIN_IMAGES = 5 * TRAIN_PER_BATCH
TEST_IMAGES = 64  # the README's picture of predictions shows the first 64


def write_cifar(root, seed=0, per_batch=TRAIN_PER_BATCH):
    """Write a small CIFAR-10 look-alike under root/cifar-10-batches-py, as torchvision expects it, with per_batch
    images in each training batch.

    Each class has its own mean colour, so a network can learn something from it.
    """
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    colours = rng.integers(40, 216, size=(10, 3))

    def batch(count, name):
        labels = rng.integers(0, 10, size=count)
        noise = rng.integers(-40, 40, size=(count, 3, 32 * 32)).astype(np.int16)  # int16: quicker for large sets
        pixels = (colours[labels].astype(np.int16)[:, :, None] + noise).clip(0, 255).astype(np.uint8)
        # CIFAR-10 stores each image as 1024 red, then 1024 green, then 1024 blue bytes.
        return {"data": pixels.reshape(count, 3072), "labels": labels.tolist(), "batch_label": name}

    for number in range(1, 6):
        with open(os.path.join(folder, f"data_batch_{number}"), "wb") as file:
            pickle.dump(batch(per_batch, f"training batch {number} of 5"), file)
    with open(os.path.join(folder, "test_batch"), "wb") as file:
        pickle.dump(batch(TEST_IMAGES, "testing batch 1 of 1"), file)
    with open(os.path.join(folder, "batches.meta"), "wb") as file:
        pickle.dump({"label_names": CIFAR10_LABEL_NAMES, "num_cases_per_batch": per_batch, "num_vis": 3072}, file)
    return root


def own_checksums(setattr, root, archive=None):
    """torchvision's checksums of CIFAR-10's files made those of the tiny data set under root (and of its archive, if
    given): torchvision's own checks then run, and a file changed since fails them. Give monkeypatch.setattr."""
    def md5(*path):
        return hashlib.md5(pathlib.Path(*path).read_bytes()).hexdigest()

    folder = os.path.join(root, "cifar-10-batches-py")
    for files in ("train_list", "test_list"):
        setattr(cifar.CIFAR10, files, [[name, md5(folder, name)] for name, _ in getattr(cifar.CIFAR10, files)])
    setattr(cifar.CIFAR10, "meta", {**cifar.CIFAR10.meta, "md5": md5(folder, "batches.meta")})
    if archive:
        setattr(cifar.CIFAR10, "tgz_md5", md5(archive))


def tiny_archive(path, root):
    """Pack the tiny data set under root as cifar-10-python.tar.gz is packed, at path; return its bytes."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(os.path.join(root, "cifar-10-batches-py"), arcname="cifar-10-batches-py")
    return pathlib.Path(path).read_bytes()


def skip_md5(setattr=setattr):
    """torchvision checks the md5 of the original CIFAR-10 files; ours are not those.

    Give monkeypatch.setattr in a test; a child process (see python_command) calls it as it is."""
    setattr(cifar.CIFAR10, "_check_integrity", lambda self: True)
    setattr(cifar, "check_integrity", lambda *args, **kwargs: True)


# Running step1.py


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
        except KeyboardInterrupt as stop:  # python step1.py would end by its signal: as subprocess says it, negative
            code = -stop_signals.signal_number_of(stop)
    return code, out.getvalue().splitlines(), err.getvalue()


def run_on_the_tiny_data(cifar_dir, output, *extra, device="cpu", as_a_script=True, out=None):
    """run_step1 on the tiny data set (its md5 check skipped) on device, saving to output, with the extra options;
    returns its exit code, printed lines and error output."""
    with pytest.MonkeyPatch.context() as patch:
        skip_md5(patch.setattr)
        return run_step1(["--data-dir", cifar_dir, "--output", str(output), "--device", device, *extra],
                         as_a_script=as_a_script, out=out)


def train(cifar_dir, output, *extra):
    """A run of step1.py on the tiny data set that must succeed; returns its printed lines."""
    code, lines, err = run_on_the_tiny_data(cifar_dir, output, *extra)
    assert code == 0, err
    return lines


# A quick run: one epoch of 2 mini-batches, on 20 training and 20 test images (conftest.one_epoch_weights holds its
# weights)
ONE_EPOCH = ["--epochs", "1", "--limit", "20"]


def run_until_the_save(cifar_dir, output, before_the_save, *extra):
    """A quick run (ONE_EPOCH) that calls before_the_save() as training ends; return its exit code, lines and
    error."""
    real_accuracy = step1.accuracy
    second = the_nth_call(2)

    def accuracy(*args):
        if second():  # the test accuracy of the last epoch: training is over
            before_the_save()
        return real_accuracy(*args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(step1, "accuracy", accuracy)
        return run_on_the_tiny_data(cifar_dir, output, *ONE_EPOCH, *extra)


def an_error_in_a_run(cifar_dir, output, *extra):
    """A run of main() on the tiny data set that must end in an error that is no Failure (a bug, memory run out);
    returns that error and the lines shown with it: its notes (failures.add_line, Python 3.11 and later), or the lines
    printed before its traceback."""
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(err), pytest.raises(Exception) as raised:
        skip_md5(patch.setattr)
        step1.main(["--data-dir", cifar_dir, "--output", str(output), "--device", "cpu", *extra])
    assert not isinstance(raised.value, failures.Failure)
    return raised.value, getattr(raised.value, "__notes__", []) + err.getvalue().splitlines()


def refused_output(cifar_dir, output):
    """Run with a bad --output; return the error line, after checking nothing was read or trained."""
    code, lines, err = run_step1(["--data-dir", cifar_dir, "--output", str(output), "--device", "cpu"])
    assert code == 2
    assert lines == []  # not even the device: refused before reading anything
    return err.splitlines()[-1]


def send_here(number):
    """Send this process the signal as a Ctrl-C or a kill would, but to the main thread, where it arrives before the
    next line runs. (A signal sent with os.kill goes to any thread that does not block it, such as one of torch's,
    which may take it later, when the code it was meant for is done.)"""
    signal.pthread_kill(threading.main_thread().ident, number)


def the_nth_call(n):
    """For signalled's only_if: true at the nth call only."""
    calls = []

    def nth(*args, **kwargs):
        calls.append(1)
        return len(calls) == n
    return nth


def signalled(monkeypatch, call, number, before=False, only_if=None):
    """Send this process the signal right after each call of call (a dotted name), or right before it, as a Ctrl-C
    or a kill could come at that very moment; only for the calls whose arguments only_if takes, if given. Returns the
    list of what call returned."""
    module, name = call.rsplit(".", 1)
    real = getattr(sys.modules[module], name)
    returned = []

    def signal_and_call(*args, **kwargs):
        now = only_if is None or only_if(*args, **kwargs)
        if before and now:
            send_here(number)
        returned.append(real(*args, **kwargs))
        if not before and now:
            send_here(number)
        return returned[-1]

    monkeypatch.setattr(sys.modules[module], name, signal_and_call)
    return returned


def at_low_priority(command):
    """command, run as `nice` runs it: the new Pythons that start with the session take what the tests in this
    process leave of the cores, rather than slowing those tests."""
    return ["nice", "-n", "10", *command]


def python_command(script, *args):
    """The command that runs script as `python script args` would, here with the md5 check skipped: the child
    imports this file to skip it."""
    code = ("import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); import helpers; helpers.skip_md5(); "
            "sys.argv.pop(0); runpy.run_path(sys.argv[0], run_name='__main__')")
    return [sys.executable, "-c", code, os.path.dirname(__file__), script, *map(str, args)]


# The repository's modules, in an order where each comes after those it imports
MODULES = ["model", "failures", "stop_signals", "cuda_graph", "data_folder", "safe_saving", "step1"]


def a_new_python(cifar_dir, folder):
    """For the new_python marker (conftest.new_pythons): the one new Python that the tests of imports, of killed runs
    and of a full disk at standard output share (NewPython), writing in folder. Yields it; ends it if no test waited
    for it."""
    new_python = NewPython(cifar_dir, folder)
    with new_python.process as process:
        yield new_python
        process.kill()


class NewPython:
    """A new Python, started at once, for what needs one: each takes seconds to import torch.

    First it imports torch, then each of MODULES in turn (each with what it imports), and writes to folder/imports.json
    {module: [whether nothing changed, whether torchvision is imported by then]}: no signal handler, no torch setting,
    no random number drawn, no standard output replaced. Then, with everything imported and nothing run, it calls
    test_checkpoints.killed_in_each_phase, which forks it for each run that it kills (a fork of the tests' own process
    could hang in torch's threads), and writes their exit codes to folder/killed.json. Last, it becomes `python
    step1.py > /dev/full 2> folder/full/err`, one quick epoch saving over folder/full/my_network.pth: its standard
    output, block-buffered as a new Python makes it for a file, now writes to /dev/full, and it ends as that run
    ends, through Python's own ending."""

    DONE = "(the imports are done)\n"  # printed to its standard output and error output in between
    CODE = ("import json, signal, sys, torch\n"
            "def state():\n"
            "    handlers = {number: signal.getsignal(number) for number in signal.valid_signals()\n"
            "                if number not in (signal.SIGKILL, signal.SIGSTOP)}\n"
            "    return (handlers, torch.backends.mkldnn.enabled, torch.backends.cudnn.deterministic,\n"
            "            torch.backends.cudnn.benchmark, torch.get_rng_state().sum().item(), sys.stdout)\n"
            "tests, cifar_dir, folder, done, *modules = sys.argv[1:]\n"
            "before = state()\n"
            "found = {}\n"
            "for module in modules:\n"
            "    __import__(module)\n"
            "    found[module] = [state() == before, 'torchvision' in sys.modules]\n"
            "with open(folder + '/imports.json', 'w') as file:\n"
            "    json.dump(found, file)\n"
            "print(done, end='', flush=True)\n"
            "print(done, end='', file=sys.stderr, flush=True)\n"
            "sys.path.insert(0, tests)\n"
            "import test_checkpoints\n"
            "test_checkpoints.killed_in_each_phase(cifar_dir, folder)\n"
            "import helpers, os, runpy\n"
            "helpers.skip_md5()\n"
            "os.dup2(os.open('/dev/full', os.O_WRONLY), 1)\n"
            "os.dup2(os.open(folder + '/full/err', os.O_WRONLY | os.O_CREAT | os.O_EXCL), 2)\n"
            "sys.argv = ['step1.py', '--data-dir', cifar_dir, '--output', folder + '/full/my_network.pth',\n"
            "            '--device', 'cpu', *helpers.ONE_EPOCH]\n"
            "runpy.run_path('step1.py', run_name='__main__')")

    def __init__(self, cifar_dir, folder):
        self.folder = folder
        (folder / "full").mkdir()
        self.earlier = earlier_weights(folder / "full" / "my_network.pth")
        command = [sys.executable, "-c", self.CODE, os.path.dirname(__file__), cifar_dir, str(folder), self.DONE,
                   *MODULES]
        self.process = subprocess.Popen(at_low_priority(command), cwd=ROOT, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED=""))
        self.output = None

    def ended(self):
        """Wait for it; return its standard output and error output until it became step1.py, each split where the
        imports were done."""
        if self.output is None:
            stdout, stderr = self.process.communicate(timeout=120)
            assert stdout.count(self.DONE) == stderr.count(self.DONE) == 1, stderr
            self.output = stdout.split(self.DONE), stderr.split(self.DONE)
        return self.output

    def imports(self):
        """(what it found of each module's import, what the imports printed, what they printed as errors)"""
        (stdout, _), (stderr, _) = self.ended()
        return json.loads((self.folder / "imports.json").read_text()), stdout, stderr

    def killed_runs(self):
        """{phase: exit code} of the runs that test_checkpoints.killed_in_each_phase killed"""
        (_, stdout), (_, stderr) = self.ended()
        assert stdout == stderr == ""
        return json.loads((self.folder / "killed.json").read_text())

    def full_disk_run(self):
        """The exit code of `python step1.py > /dev/full`, its error output, the file it saved to, and that file's
        earlier bytes."""
        self.ended()
        run = self.folder / "full"
        return self.process.returncode, (run / "err").read_text(), run / "my_network.pth", self.earlier


# Files, and what they hold


def earlier_weights(path):
    """Write MyNet's weights to path, as a run before this one did; return the file's bytes."""
    torch.save(MyNet().state_dict(), path)
    return path.read_bytes()


def same_weights(path, expected):
    """path holds exactly the weights of the state_dict expected."""
    saved = torch.load(path, weights_only=True)
    return list(saved) == list(expected) and all(torch.equal(saved[name], expected[name]) for name in expected)


def listing(folder):
    """Each entry of folder, with its type, permission bits and owner, and a regular file's bytes (its size and time
    of change where this user cannot read it)."""
    return {entry.name: (entry.stat(follow_symlinks=False).st_mode, entry.stat(follow_symlinks=False).st_uid,
                         entry.is_file(follow_symlinks=False) and contents(entry))
            for entry in os.scandir(folder)}


def contents(entry):
    try:
        return pathlib.Path(entry.path).read_bytes()
    except PermissionError:
        status = entry.stat(follow_symlinks=False)
        return status.st_size, status.st_mtime_ns


def kept_instead(err, output, reason, temporary_folder):
    """The error line of a save that failed: it names the reason and the file that holds the weights instead. Before
    it, at most the warning of the last epoch's checkpoint, which failed there first."""
    *warnings, error = err.splitlines()
    assert len(warnings) <= 1 and all(line.startswith("warning: could not save the checkpoint of epoch ")
                                      and line.endswith("; training goes on") for line in warnings), warnings
    match = re.fullmatch(rf"error: could not save the weights to {re.escape(str(output))} \({re.escape(reason)}\); "
                         rf"they are in ({re.escape(str(temporary_folder))}/my_network-\w+\.pth) instead", error)
    assert match, error
    return match[1]


# Root's powers, set aside


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
        if mode not in ("wb", "xb"):
            return file
        where = os.readlink(f"/proc/self/fd/{file.fileno()}")  # opened by name or by descriptor, as step1.py does
        return Limited(file) if where.startswith(os.path.realpath(disk)) else file

    def limited_temporary_file(*args, dir=None, **kwargs):  # nameless, as the check before training makes one
        file = real_temporary_file(*args, dir=dir, **kwargs)
        return Limited(file) if dir and os.path.realpath(dir).startswith(os.path.realpath(disk)) else file

    real_temporary_file = tempfile.TemporaryFile
    monkeypatch.setattr(tempfile, "TemporaryFile", limited_temporary_file)
    monkeypatch.setattr("builtins.open", limited_open)
    monkeypatch.setattr(tarfile, "bltn_open", limited_open)


# The guide's network and training loop, written as the guide writes them


class GuideNet(nn.Module):
    """The guide's MyNet, layer for layer, to check that weights move both ways."""

    def __init__(self):
        super().__init__()
        self.conv_layers = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
            nn.Conv2d(6, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
            nn.Conv2d(12, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
        )
        self.fc_layers = nn.Sequential(
            nn.Dropout(p=0.1),
            nn.Linear(384, 192), nn.ReLU(inplace=True),
            nn.Linear(192, 96), nn.ReLU(inplace=True),
            nn.Linear(96, 10),
        )

    def forward(self, x):
        x = self.conv_layers(x)
        x = x.view(-1, 24 * 4 * 4)
        return self.fc_layers(x)


def guide_training(model, images, labels, epochs, batch_size, lr, momentum, log_interval):
    """The guide's loop: SGD on the mini-batches of a shuffling DataLoader, in training mode, then eval mode for the
    accuracy after each epoch (which draws no random numbers). Returns the mean losses it would print, by (epoch,
    mini-batch)."""
    loader = DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=True)
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    losses = {}
    for epoch in range(epochs):
        model.train()
        running_loss = 0.0
        for i, (batch_images, batch_labels) in enumerate(loader):
            optimizer.zero_grad()
            loss = criterion(model(batch_images), batch_labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            if (i + 1) % log_interval == 0 or i + 1 == len(loader):
                losses[epoch, i + 1] = running_loss / (i % log_interval + 1)
                running_loss = 0.0
        model.eval()
    return losses
