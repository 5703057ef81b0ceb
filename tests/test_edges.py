"""The three promises where they are easiest to break: a file that changes at --output while the network trains, a
save that fails in ways the check before training could not see until it wrote what the save writes, endings after
the last update that are not Ctrl-C, odd names, and main() called from other code.

Made real where root can (tmpfs, bind mounts, a file size limit, SIGHUP); simulated only where it cannot."""
import contextlib
import errno
import io
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest
import torch
import torchvision

import failures
import safe_saving
import step1
import stop_signals
from helpers import (
    AS_ROOT,
    ROOT,
    as_a_user,
    earlier_weights,
    kept_instead,
    listing,
    python_command,
    readme_snippet,
    refused_output,
    run_on_the_tiny_data,
    run_step1,
    run_until_the_save,
    same_weights,
    signalled,
    train,
    write_cifar,
)
from model import MyNet

# Before training: the rule, and a check that writes what the save will write


@pytest.mark.parametrize("kind, holds", [
    ("another network's weights", "the weights of another network, not MyNet's"),
    ("a large network's weights", "47 MB, far more than MyNet's weights"),  # refused unread: it could be gigabytes
    ("a dict of data tensors", "the weights of another network, not MyNet's"),
    ("MyNet's weights with a layer missing", "the weights of another network, not MyNet's"),
])
def test_only_mynets_weights_are_replaced(cifar_dir, tmp_path, kind, holds):
    output = tmp_path / "w.pth"
    if kind == "another network's weights":
        torch.save(torch.nn.Sequential(torch.nn.Linear(384, 10)).state_dict(), output)
    elif kind == "a large network's weights":
        torch.save(torchvision.models.resnet18().state_dict(), output)
    elif kind == "a dict of data tensors":
        torch.save({"images": torch.zeros(4, 3, 32, 32), "labels": torch.zeros(4)}, output)
    else:
        weights = MyNet().state_dict()
        del weights["fc_layers.5.bias"]
        torch.save(weights, output)
    before = listing(tmp_path)
    error = refused_output(cifar_dir, output)
    assert error.endswith(f"argument --output: {output} holds {holds}; choose another path, to keep it")
    assert listing(tmp_path) == before


def test_a_disk_too_full_for_the_weights_is_refused_before_training(cifar_dir, tmp_path, small_disk):
    disk = small_disk(256)  # MyNet's weights take 396 KB
    error = refused_output(cifar_dir, disk / "w.pth")
    assert error.endswith(f"argument --output: {disk / 'w.pth'} cannot be written (No space left on device: free some "
                          f"space); choose another path")
    assert os.listdir(disk) == []


@contextlib.contextmanager
def file_size_limit(size):
    """As `ulimit -f`, for this process: a write beyond size bytes fails with EFBIG (Python ignores SIGXFSZ)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_file_size_limit_is_refused_before_training(cifar_dir, tmp_path):
    """`ulimit -f 300` (300 KiB): the weights do not fit. Found by the check, not after the training."""
    with file_size_limit(300 * 1024):
        error = refused_output(cifar_dir, tmp_path / "w.pth")
    assert error.endswith(f"argument --output: {tmp_path / 'w.pth'} cannot be written (File too large: the file is "
                          f"larger than a limit allows (ulimit -f, or the disk's format): choose another disk); choose "
                          f"another path")
    assert os.listdir(tmp_path) == []


def test_a_name_with_a_newline_stays_one_line(cifar_dir, tmp_path):
    output = tmp_path / "missing\nfolder" / "w.pth"
    error = refused_output(cifar_dir, output)
    assert error.endswith(f"argument --output: {str(output)!r} cannot be written (No such file or directory: check "
                          f"that the folder is there); choose another path")


def test_a_folder_that_takes_no_new_files_is_not_called_missing(cifar_dir):
    error = refused_output(cifar_dir, "/proc/new.pth")
    assert error.endswith("argument --output: /proc/new.pth cannot be written (No such file or directory: this folder "
                          "takes no new files, choose another); choose another path")


def test_a_name_that_only_fits_relative_to_its_folder_is_saved_there(cifar_dir, tmp_path):
    """A 4080-character folder: its path with w.pth fits the system's limit of 4096, the path of a temporary file
    named step1-01234567.tmp would not. The save works relative to the folder, so the weights go where asked."""
    folder = tmp_path
    while len(str(folder)) < 4080 - 201:
        folder = folder / ("f" * 200)
    folder = folder / ("g" * (4080 - len(str(folder)) - 1))
    os.makedirs(folder)
    assert len(str(folder)) == 4080
    train(cifar_dir, folder / "w.pth", "--epochs", "1", "--limit", "10")
    assert os.listdir(folder) == ["w.pth"]
    assert list(torch.load(folder / "w.pth", weights_only=True)) == list(MyNet().state_dict())


# At the save: the rule again, as the file may have changed during training


@pytest.mark.parametrize("change", ["code copied there", "notes where the weights were", "a link to a file",
                                    "a folder"])
def test_a_file_put_at_output_during_training_is_kept(cifar_dir, tmp_path, temporary_folder, one_epoch_weights,
                                                      change):
    output = tmp_path / "run" / "my_network.pth"
    output.parent.mkdir()
    earlier_weights(output)
    target = tmp_path / "notes.txt"
    target.write_text("my notes")
    target.chmod(0o600)

    def change_it():
        output.unlink()
        if change == "code copied there":
            shutil.copy(os.path.join(ROOT, "model.py"), output)
        elif change == "notes where the weights were":
            output.write_text("notes")
        elif change == "a link to a file":
            os.symlink(target, output)
        else:
            output.mkdir()

    before = None

    def change_and_remember():
        nonlocal before
        change_it()
        before = listing(output.parent)

    code, lines, err = run_until_the_save(cifar_dir, output, change_and_remember)
    assert code == 1
    assert not any(line.startswith("Saved") for line in lines)
    what = {"code copied there": "holds no weights that torch.load can read",
            "notes where the weights were": "holds no weights that torch.load can read",
            "a link to a file": "is a link, not a file", "a folder": "is a folder, not a file"}[change]
    [line] = err.splitlines()
    assert line.startswith(f"error: could not save the weights to {output} ({output} {what}")
    kept = line.rsplit(" they are in ", 1)[1].removesuffix(" instead")
    assert kept.startswith(str(temporary_folder))
    assert same_weights(kept, one_epoch_weights)
    assert listing(output.parent) == before  # nothing there replaced, nothing left beside it
    assert target.read_text() == "my notes"
    assert oct(target.stat().st_mode & 0o777) == oct(0o600)  # the link's target untouched, not made world-writable


def test_a_bind_mounted_output_keeps_the_weights_elsewhere_with_the_reason(cifar_dir, tmp_path, temporary_folder,
                                                                           one_epoch_weights, monkeypatch):
    """Docker's -v file:file, for one: the file cannot be renamed over. Found only by the rename itself."""
    output = tmp_path / "my_network.pth"
    earlier = earlier_weights(output)
    mounted = []
    if AS_ROOT:
        source = tmp_path / "source.pth"
        shutil.copy(output, source)
        subprocess.run(["mount", "--bind", str(source), str(output)], check=True)
        mounted.append(output)
    else:
        real_replace = os.replace

        def busy(source, target, *args, **kwargs):
            if kwargs.get("dst_dir_fd") is not None and target == output.name:
                raise OSError(errno.EBUSY, "Device or resource busy", target)
            return real_replace(source, target, *args, **kwargs)

        monkeypatch.setattr(os, "replace", busy)
    try:
        code, _, err = run_on_the_tiny_data(cifar_dir, output, "--epochs", "1")
    finally:
        for path in mounted:
            subprocess.run(["umount", str(path)], check=True)
    assert code == 1
    kept = kept_instead(err, output, "Device or resource busy: it is in use, or mounted there: choose another path",
                        temporary_folder)
    assert same_weights(kept, one_epoch_weights)
    assert output.read_bytes() == earlier


def test_a_replaced_file_takes_mode_and_owner_after_the_data_so_setgid_stays(cifar_dir, tmp_path):
    output = tmp_path / "my_network.pth"
    earlier_weights(output)
    group = os.getgid()
    output.chmod(0o2640)  # setgid: Linux clears it on a write or a chown that comes after the chmod
    train(cifar_dir, output, "--epochs", "1", "--limit", "10")
    assert oct(output.stat().st_mode & 0o7777) == oct(0o2640)
    assert output.stat().st_gid == group


# Any ending after the last update saves first


def test_a_hangup_after_the_last_update_saves_first(cifar_dir, tmp_path, monkeypatch, one_epoch_weights):
    output = tmp_path / "my_network.pth"
    earlier_weights(output)
    signalled(monkeypatch, "step1.accuracy", signal.SIGHUP, before=True)  # a closed terminal, training done
    code, _, err = run_on_the_tiny_data(cifar_dir, output, "--epochs", "1")
    assert code == 1
    assert err == f"\ninterrupted: the weights were saved to {output} first; the rest was skipped\n"
    assert same_weights(output, one_epoch_weights)
    assert os.listdir(tmp_path) == ["my_network.pth"]


def test_a_hangup_before_the_last_update_is_one_line_and_saves_nothing(cifar_dir, tmp_path, monkeypatch):
    output = tmp_path / "my_network.pth"
    earlier = earlier_weights(output)
    signalled(monkeypatch, "step1.to_float", signal.SIGHUP)  # the terminal closes, during the first step
    code, lines, err = run_on_the_tiny_data(cifar_dir, output)
    assert code == 1
    assert err == "\ninterrupted: no weights were saved\n"
    assert lines[-1] == "Training"
    assert output.read_bytes() == earlier


def test_an_error_after_the_last_update_saves_first(cifar_dir, tmp_path, monkeypatch, one_epoch_weights):
    output = tmp_path / "my_network.pth"
    earlier_weights(output)

    def broken(*args):
        raise RuntimeError("a bug in the accuracy pass")

    monkeypatch.setattr(step1, "accuracy", broken)
    with pytest.raises(RuntimeError, match="a bug in the accuracy pass"):
        run_on_the_tiny_data(cifar_dir, output, "--epochs", "1")
    assert same_weights(output, one_epoch_weights)  # a bug shows whole, and the trained weights are kept


def test_standard_output_that_cannot_be_written_is_one_line(cifar_dir, tmp_path):
    """Unbuffered (python -u, PYTHONUNBUFFERED=1 as in containers), the first line fails, before any training;
    buffered (to a file, here a full one, or a pipe), the lines go out at the end, after the save. The two runs go
    side by side, to keep the suite short."""
    runs = {}
    for where in ("a closed pipe, unbuffered", "/dev/full"):
        folder = tmp_path / ("pipe" if where.endswith("unbuffered") else "full")
        folder.mkdir()
        output = folder / "my_network.pth"
        earlier = earlier_weights(output)
        command = python_command("step1.py", "--data-dir", cifar_dir, "--output", output, "--device", "cpu",
                                 "--epochs", "1", "--limit", "20")
        if where == "/dev/full":
            stdout = open("/dev/full", "w")
        else:  # as `python step1.py | head -0`: the reader is gone before the first line
            read, written = os.pipe()
            os.close(read)
            stdout = open(written, "w")
        with stdout:
            env = dict(os.environ, PYTHONUNBUFFERED="1" if where.endswith("unbuffered") else "")
            process = subprocess.Popen(command, cwd=ROOT, stdout=stdout, stderr=subprocess.PIPE, text=True, env=env)
        runs[where] = (process, output, earlier)
    for where, (process, output, earlier) in runs.items():
        _, err = process.communicate(timeout=120)
        assert process.returncode == 1, where
        reason = "No space left on device: free some space" if where == "/dev/full" else (
            "Broken pipe: the program reading the output has stopped; send it to a file instead")
        assert err.splitlines() == [f"error: could not print to the standard output ({reason})"]
        if where.endswith("unbuffered"):
            assert output.read_bytes() == earlier
        else:
            assert output.read_bytes() != earlier
            assert list(torch.load(output, weights_only=True)) == list(MyNet().state_dict())
        assert os.listdir(output.parent) == ["my_network.pth"]


class ClosedAfter(io.StringIO):
    """Standard output that a reader stops reading once a line with the given text has come, as `head` does."""

    def __init__(self, text):
        super().__init__()
        self.text = text

    def write(self, text):
        if self.text in self.getvalue():
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
        return super().write(text)


def test_standard_output_closed_after_the_last_update_saves_first(cifar_dir, tmp_path, one_epoch_weights):
    output = tmp_path / "my_network.pth"
    earlier_weights(output)
    code, _, err = run_on_the_tiny_data(cifar_dir, output, "--epochs", "1", out=ClosedAfter("mini-batch :   12"))
    assert code == 1
    assert err.splitlines() == [
        "error: could not print to the standard output (Broken pipe: the program reading the output has stopped; "
        f"send it to a file instead); the weights were saved to {output} first"]
    assert same_weights(output, one_epoch_weights)


# Data: the clean-up after a failed download resolves the path as the system does


@pytest.mark.parametrize("data_dir, created", [("new/..", "new"), ("link/../fresh", "fresh")])
def test_a_failed_download_leaves_nothing_where_the_system_put_it(tmp_path, monkeypatch, offline, data_dir, created):
    work = tmp_path / "work"
    (work / "elsewhere" / "target").mkdir(parents=True)
    os.symlink(work / "elsewhere" / "target", work / "link")
    monkeypatch.chdir(work)
    before = sorted(os.listdir(work)), sorted(os.listdir(work / "elsewhere"))
    code, _, err = run_step1(["--data-dir", data_dir, "--output", str(tmp_path / "w.pth")])
    assert code == 1
    assert "could not be downloaded" in err
    assert (sorted(os.listdir(work)), sorted(os.listdir(work / "elsewhere"))) == before


def test_a_batch_that_is_a_link_to_nothing_is_named(tmp_path, offline):
    data_dir = write_cifar(tmp_path / "datasets")
    batch = data_dir / "cifar-10-batches-py" / "data_batch_2"
    batch.unlink()
    os.symlink(tmp_path / "gone", batch)
    code, _, err = run_step1(["--data-dir", str(data_dir), "--output", str(tmp_path / "w.pth")])
    assert code == 1
    assert err.splitlines() == [f"error: {batch} is a link that leads nowhere; fix or remove it, or give another "
                                f"--data-dir"]


# main() called from other code: a notebook, a thread


def flags():
    return (torch.backends.mkldnn.enabled, torch.backends.cudnn.enabled, torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark)


@pytest.mark.parametrize("ending", ["trained", "stopped during training", "stopped after the last update"])
def test_main_puts_torchs_settings_back_however_it_ends(cifar_dir, tmp_path, monkeypatch, ending):
    found = flags()
    if ending == "stopped during training":
        signalled(monkeypatch, "step1.to_float", signal.SIGINT)
    elif ending == "stopped after the last update":
        signalled(monkeypatch, "step1.accuracy", signal.SIGINT, before=True)
    code, _, _ = run_on_the_tiny_data(cifar_dir, tmp_path / "w.pth", "--epochs", "1", "--limit", "20")
    assert code == (0 if ending == "trained" else 1)
    assert flags() == found


def test_main_called_alone_leaves_the_signal_handlers_alone(cifar_dir, tmp_path, monkeypatch):
    def mine(*_):
        pass

    found = {number: signal.signal(number, mine) for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    seen = []
    real_accuracy = step1.accuracy

    def accuracy(*args):
        seen.append({number: signal.getsignal(number) for number in found})
        return real_accuracy(*args)

    monkeypatch.setattr(step1, "accuracy", accuracy)
    try:
        code, _, err = run_on_the_tiny_data(cifar_dir, tmp_path / "w.pth", "--epochs", "1", "--limit", "20",
                                            as_a_script=False)
        assert code == 0, err
        assert all(handler is mine for handlers in seen for handler in handlers.values())  # during the run too
    finally:
        for number, handler in found.items():
            signal.signal(number, handler)


def test_main_trains_from_a_thread(cifar_dir, tmp_path, skip_md5_check):
    results = []

    def run():
        try:
            step1.main(["--data-dir", cifar_dir, "--output", str(tmp_path / "w.pth"), "--device", "cpu",
                        "--epochs", "1", "--limit", "20"])
            results.append("done")
        except BaseException as error:  # noqa: B036 - whatever it is, the test shows it
            results.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=120)
    assert results == ["done"]
    assert list(torch.load(tmp_path / "w.pth", weights_only=True)) == list(MyNet().state_dict())


def test_the_save_in_a_thread_still_keeps_the_weights(tmp_path):
    """stop_signals.ignored() is only for the main thread: elsewhere the save runs as it is."""
    weights = MyNet().state_dict()
    results = []
    thread = threading.Thread(target=lambda: results.append(safe_saving.save_weights(weights, tmp_path / "w.pth")))
    thread.start()
    thread.join(timeout=60)
    assert results == [None]
    assert same_weights(tmp_path / "w.pth", weights)


# Importing a module changes nothing


MODULES = ["model", "failures", "stop_signals", "cuda_graph", "data_folder", "safe_saving", "step1"]


def test_importing_each_module_changes_nothing():
    """No signal handler, no torch setting, no random number drawn, no standard output replaced: one new Python
    imports each module in turn (each with what it imports) and compares."""
    code = ("import signal, sys, torch\n"
            "def state():\n"
            "    handlers = {number: signal.getsignal(number) for number in signal.valid_signals()\n"
            "                if number not in (signal.SIGKILL, signal.SIGSTOP)}\n"
            "    return (handlers, torch.backends.mkldnn.enabled, torch.backends.cudnn.deterministic,\n"
            "            torch.backends.cudnn.benchmark, torch.get_rng_state().sum().item(), sys.stdout)\n"
            "before = state()\n"
            "for module in sys.argv[1:]:\n"
            "    __import__(module)\n"
            "    print(module, 'unchanged' if state() == before else 'changed something')")
    result = subprocess.run([sys.executable, "-c", code, *MODULES], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.splitlines() == [f"{module} unchanged" for module in MODULES], result.stderr
    assert result.stderr == ""


# MyNet on what is not a tensor yet


@pytest.mark.parametrize("kind, advice", [
    ("a NumPy array", "torch.from_numpy(array)"),
    ("a PIL image", "transforms.ToTensor()(picture).unsqueeze(0)"),
    ("a list of tensors", "torch.stack(images)"),
])
def test_mynet_on_what_is_not_a_tensor_gets_advice(kind, advice):
    from PIL import Image

    value = {"a NumPy array": lambda: torch.zeros(1, 32, 32, 3).numpy(),
             "a PIL image": lambda: Image.new("RGB", (32, 32)),
             "a list of tensors": lambda: [torch.zeros(3, 32, 32)]}[kind]()
    with pytest.raises(TypeError) as raised:
        MyNet()(value)
    assert str(raised.value).startswith("MyNet expects a batch of images as a tensor, got a ")
    assert advice in str(raised.value)


def test_as_a_user_a_read_only_disk_is_named_as_one(cifar_dir, tmp_path):
    if not AS_ROOT:  # a user cannot mount: the advice is checked on the errno itself
        assert "the disk is read-only" in failures.why(OSError(errno.EROFS, "Read-only file system"))
        return
    folder = tmp_path / "disk"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(folder)], check=True)
    try:
        with as_a_user():
            error = refused_output(cifar_dir, folder / "w.pth")
    finally:
        subprocess.run(["umount", str(folder)], check=True)
    assert error.endswith("cannot be written (Read-only file system: the disk is read-only: choose a writable one); "
                          "choose another path")


@pytest.mark.parametrize("case, reason", [
    ("a file on the way", "Not a directory: a part of the path is a file, not a folder: fix the path"),
    ("a loop of links on the way", "Too many levels of symbolic links: a link leads back to itself: fix the links"),
])
def test_a_path_that_cannot_lead_anywhere_gets_its_own_advice(cifar_dir, tmp_path, case, reason):
    if case == "a file on the way":
        (tmp_path / "notes").write_text("mine")
        output = tmp_path / "notes" / "w.pth"
    else:
        os.symlink(tmp_path / "b", tmp_path / "a")
        os.symlink(tmp_path / "a", tmp_path / "b")
        output = tmp_path / "a" / "w.pth"
    before = listing(tmp_path)
    error = refused_output(cifar_dir, output)
    assert error.endswith(f"argument --output: {output} cannot be written ({reason}); choose another path")
    assert listing(tmp_path) == before


def test_the_requirements_ask_for_the_pillow_that_the_picture_snippet_needs():
    """ImageFont.load_default(size=...) came with Pillow 10.1; torchvision alone allows older ones."""
    assert "ImageFont.load_default(size=" in readme_snippet("predictions.png")
    with open(os.path.join(ROOT, "requirements.txt"), encoding="utf-8") as file:
        requirements = file.read()
    assert re.search(r"^pillow>=10\.1\b", requirements, re.M | re.I)


# Found by a hostile pass: a stop during the save, signals the user ignored, files others put in a new data folder


@pytest.mark.parametrize("when", ["as the save begins", "as it writes the file"])
def test_a_stop_during_the_save_waits_for_it_and_the_run_ends_as_saved(cifar_dir, tmp_path, monkeypatch,
                                                                      one_epoch_weights, when):
    output = tmp_path / "my_network.pth"
    earlier_weights(output)
    call = "safe_saving.save_weights" if when == "as the save begins" else "safe_saving.write_then_rename"
    signalled(monkeypatch, call, signal.SIGTERM, before=True)
    code, lines, err = run_on_the_tiny_data(cifar_dir, output, "--epochs", "1")
    assert code == 0, err
    assert err == ""
    assert lines[-1].startswith(f"Saved the weights to {output}")
    assert same_weights(output, one_epoch_weights)


def test_a_stop_after_a_save_that_kept_the_weights_elsewhere_still_names_where(cifar_dir, tmp_path, monkeypatch,
                                                                               temporary_folder, one_epoch_weights):
    output = tmp_path / "run" / "my_network.pth"
    output.parent.mkdir()
    signalled(monkeypatch, "safe_saving.places_to_keep_them", signal.SIGINT)  # the save at --output has failed
    code, _, err = run_until_the_save(cifar_dir, output, lambda: shutil.rmtree(output.parent))
    assert code == 1
    kept = kept_instead(err, output, "No such file or directory: check that the folder is there", temporary_folder)
    assert same_weights(kept, one_epoch_weights)
    assert oct(os.stat(kept).st_mode & 0o777) == oct(0o600)  # private, in a folder others share


def test_main_alone_passes_a_stop_during_the_save_to_the_callers_handler(cifar_dir, tmp_path, monkeypatch,
                                                                         one_epoch_weights):
    output = tmp_path / "my_network.pth"
    came = []
    found = signal.signal(signal.SIGTERM, lambda number, frame: came.append(number))
    try:
        signalled(monkeypatch, "safe_saving.write_then_rename", signal.SIGTERM, before=True)
        code, _, err = run_on_the_tiny_data(cifar_dir, output, "--epochs", "1", as_a_script=False)
    finally:
        signal.signal(signal.SIGTERM, found)
    assert code == 0, err
    assert came == [signal.SIGTERM]  # once, after the save
    assert same_weights(output, one_epoch_weights)


def test_a_hangup_that_nohup_ignores_stays_ignored(cifar_dir, tmp_path, monkeypatch, one_epoch_weights):
    found = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as `nohup python step1.py` starts it
    try:
        signalled(monkeypatch, "step1.to_float", signal.SIGHUP)  # the terminal closes, during training
        code, lines, err = run_on_the_tiny_data(cifar_dir, tmp_path / "w.pth", "--epochs", "1")
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, found)
    assert code == 0, err
    assert lines[-1].startswith("Saved the weights")
    assert same_weights(tmp_path / "w.pth", one_epoch_weights)


def test_a_failed_download_keeps_what_others_put_in_the_folder_it_created(tmp_path, monkeypatch):
    data_dir = tmp_path / "datasets"

    def another_program_writes_then_the_network_fails(*args, **kwargs):
        (data_dir / "notes.txt").write_text("mine")  # torchvision has created the folder by now
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setattr(urllib.request, "urlopen", another_program_writes_then_the_network_fails)
    code, _, err = run_step1(["--data-dir", str(data_dir), "--output", str(tmp_path / "w.pth")])
    assert code == 1
    assert "could not be downloaded" in err
    assert os.listdir(data_dir) == ["notes.txt"]
    assert (data_dir / "notes.txt").read_text() == "mine"


def test_a_file_saved_at_output_during_the_sync_is_kept(cifar_dir, tmp_path, temporary_folder, monkeypatch,
                                                        one_epoch_weights):
    """As an editor saves (a new file renamed over the old), while the weights are synced to the disk."""
    output = tmp_path / "run" / "my_network.pth"
    output.parent.mkdir()
    earlier_weights(output)
    real_fsync = os.fsync
    syncs = []

    def fsync_while_the_user_saves(descriptor):
        syncs.append(descriptor)
        if len(syncs) == 2:  # 1: the check before training; 2: the save
            (tmp_path / "notes").write_text("my notes")
            os.replace(tmp_path / "notes", output)
        return real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fsync_while_the_user_saves)
    code, _, err = run_until_the_save(cifar_dir, output, lambda: None)
    assert code == 1
    kept_instead(err, output, f"{output} changed while the weights were saved; choose another path", temporary_folder)
    assert output.read_text() == "my notes"


def test_standard_output_closed_from_the_start_is_no_error(cifar_dir, tmp_path, monkeypatch, skip_md5_check):
    """`python step1.py >&-`: Python then has no sys.stdout, and print() prints nothing."""
    monkeypatch.setattr(sys, "stdout", None)
    with stop_signals.StopSignals(), failures.one_line_for_failures():
        step1.main(["--data-dir", cifar_dir, "--output", str(tmp_path / "w.pth"), "--epochs", "1", "--limit", "20"])
    assert sys.stdout is None
    assert list(torch.load(tmp_path / "w.pth", weights_only=True)) == list(MyNet().state_dict())


def test_main_from_a_notebook_reads_no_kernel_arguments(tmp_path, monkeypatch, offline):
    monkeypatch.setattr(sys, "argv", ["ipykernel_launcher.py", "-f", "kernel-1234.json"])
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(failures.Failure, match="CIFAR-10 is not in .*datasets and could not be downloaded"):
        step1.main()  # the defaults: ~/datasets, my_network.pth
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["a\u2028b.pth", "a\x85b.pth", "a\x1b[2Jb.pth", "a\tb.pth"])
def test_a_name_with_any_unprintable_character_is_quoted(name):
    assert failures.quoted(name) == repr(name)
    assert len(f"error: {failures.quoted(name)}".splitlines()) == 1
    assert failures.quoted("mon réseau ✓.pth") == "mon réseau ✓.pth"


@pytest.mark.parametrize("call", ["failures.quoted", "time.perf_counter"])
def test_a_stop_once_the_weights_are_saved_ends_as_saved(cifar_dir, tmp_path, monkeypatch, one_epoch_weights, call):
    output = tmp_path / "my_network.pth"
    real_save = safe_saving.save_weights

    def save_then_stop_at_the_next_call(*args):
        real_save(*args)
        signalled(monkeypatch, call, signal.SIGTERM)  # as the last line is written

    monkeypatch.setattr(safe_saving, "save_weights", save_then_stop_at_the_next_call)
    code, _, err = run_on_the_tiny_data(cifar_dir, output, "--epochs", "1")
    assert code == 0, err
    assert "no weights were saved" not in err
    assert same_weights(output, one_epoch_weights)


def test_a_stop_while_a_failure_ends_the_run_keeps_its_one_line(cifar_dir, tmp_path, monkeypatch, temporary_folder,
                                                                one_epoch_weights):
    output = tmp_path / "run" / "my_network.pth"
    output.parent.mkdir()
    signalled(monkeypatch, "failures.silence", signal.SIGTERM, before=True)
    code, _, err = run_until_the_save(cifar_dir, output, lambda: shutil.rmtree(output.parent))
    assert code == 1
    kept = kept_instead(err, output, "No such file or directory: check that the folder is there", temporary_folder)
    assert same_weights(kept, one_epoch_weights)
