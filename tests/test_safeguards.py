"""step1.py's three promises: nothing trained is lost, nothing of yours is destroyed, and every failure gets one line
with the right cause and the next step. Plus what it refuses before training.

CI runs as root. The tests make each case real wherever root can: a small tmpfs for a full disk, chown, chattr, a
vanishing folder, real signals, and root's powers set aside (helpers.as_a_user) for what permissions refuse a user.
They simulate a failure only where that cannot be done, as on a machine where they do not run as root."""
import contextlib
import errno
import os
import pathlib
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
import warnings
import zipfile

import pytest
import torch
import torchvision.datasets.cifar as cifar
import torchvision.datasets.utils

import step1
import stop_signals
from helpers import (
    AS_ROOT,
    LOSS_PATTERN,
    OFFLINE,
    ROOT,
    as_a_user,
    earlier_weights,
    kept_instead,
    listing,
    parse,
    python_command,
    refused_output,
    run_on_the_tiny_data,
    run_python,
    run_step1,
    run_until_the_save,
    same_weights,
    signalled,
    train,
    write_cifar,
)
from model import MyNet


@contextlib.contextmanager
def chattr(flag, path):
    """chattr +flag on path (i: immutable, a: append-only), taken off again after; root only."""
    subprocess.run(["chattr", f"+{flag}", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", f"-{flag}", str(path)], check=True)


# Before training: an --output that cannot, or must not, be replaced

def test_output_in_a_missing_folder_is_refused_before_training(cifar_dir, tmp_path):
    error = refused_output(cifar_dir, tmp_path / "missing" / "w.pth")
    assert error.endswith(f"argument --output: {tmp_path / 'missing' / 'w.pth'} cannot be written "
                          f"(No such file or directory: check that the folder is there); choose another path")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kind, named", [
    ("folder", "is a folder, not a file"), ("folder/", "is not a file name"), ("new/", "is not a file name"),
    ("fifo", "is a named pipe, not a file"), ("socket", "is a socket, not a file"),
    ("link to a file", "is a link, not a file"), ("broken link", "is a link, not a file"),
])
def test_output_that_is_not_a_regular_file_is_refused_named_for_what_it_is_and_left_alone(cifar_dir, tmp_path, kind,
                                                                                          named):
    (tmp_path / "folder").mkdir()
    earlier_weights(tmp_path / "file")
    os.mkfifo(tmp_path / "fifo")  # like /dev/null, not a regular file; creating one needs no privilege
    with socket.socket(socket.AF_UNIX) as unix_socket:
        unix_socket.bind(str(tmp_path / "socket"))
    os.symlink(tmp_path / "file", tmp_path / "link to a file")
    os.symlink(tmp_path / "nothing", tmp_path / "broken link")
    before = listing(tmp_path)
    error = refused_output(cifar_dir, os.path.join(str(tmp_path), kind))
    advice = "give a file name" if named.endswith("not a file") else "give one"
    assert error.endswith(f"argument --output: {os.path.join(str(tmp_path), kind)} {named}; {advice} such as "
                          f"my_network.pth")
    assert listing(tmp_path) == before
    assert os.listdir(tmp_path / "folder") == []


@pytest.mark.parametrize("option", ["--output", "--data-dir"])
def test_an_empty_path_is_refused_like_any_bad_option(option, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, lines, err = run_step1([option, ""])
    assert code == 2
    assert lines == []
    assert err.splitlines()[-1].endswith(f"error: argument {option}: must not be empty")
    assert os.listdir(tmp_path) == []


def test_output_in_a_folder_that_cannot_be_written_is_refused_before_training(cifar_dir, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    folder.chmod(0o555)
    with as_a_user():
        error = refused_output(cifar_dir, folder / "w.pth")
    assert error.endswith("cannot be written (Permission denied: fix the permissions); choose another path")
    assert os.listdir(folder) == []


def test_a_name_too_long_is_refused_before_training_and_one_that_fits_is_saved(cifar_dir, tmp_path):
    too_long = tmp_path / ("w" * 252 + ".pth")  # 256 characters: more than a file name may have
    error = refused_output(cifar_dir, too_long)
    assert error.endswith(f"argument --output: {too_long} cannot be written (File name too long: use a shorter "
                          f"name); choose another path")
    longest = tmp_path / ("w" * 251 + ".pth")  # 255: the longest; too long for a temporary name made from it
    train(cifar_dir, longest, "--epochs", "1")
    assert list(torch.load(longest, weights_only=True)) == list(MyNet().state_dict())
    assert os.listdir(tmp_path) == [longest.name]


def test_output_with_a_folder_that_cannot_be_entered_is_refused_with_the_systems_reason(cifar_dir, tmp_path):
    folder = tmp_path / "private"
    folder.mkdir()
    earlier = earlier_weights(folder / "w.pth")
    folder.chmod(0o600)  # readable, but not to be entered (no x)
    with as_a_user():
        error = refused_output(cifar_dir, folder / "w.pth")
    folder.chmod(0o755)
    assert error.endswith("cannot be written (Permission denied: fix the permissions); choose another path")
    assert (folder / "w.pth").read_bytes() == earlier


# Promise 2: nothing of yours is destroyed. An earlier --output is replaced only if it holds weights.

def earlier_file(kind, path, cifar_dir):
    """Write an earlier file of the given kind to path."""
    model = MyNet()
    if kind == "code":
        shutil.copy(os.path.join(ROOT, "model.py"), path)
    elif kind == "a data batch":
        shutil.copy(os.path.join(cifar_dir, "cifar-10-batches-py", "data_batch_1"), path)
    elif kind == "a zip file with an entry named data.pkl":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("holiday/data.pkl", "not weights")
    elif kind == "an empty file":
        path.touch()
    elif kind == "a TorchScript model":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # that tracing turns MyNet's input checks into constants
            torch.jit.save(torch.jit.trace(model.eval(), torch.rand(1, 3, 32, 32)), path)
    elif kind == "a checkpoint":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 3}, path)
    elif kind == "a saved data set":
        torch.save(torch.utils.data.TensorDataset(torch.zeros(4, 3, 32, 32), torch.zeros(4)), path)
    elif kind == "a list of tensors":
        torch.save([torch.zeros(3)], path)
    else:  # damaged weights: the first half of a file that torch.save wrote
        torch.save(model.state_dict(), path)
        path.write_bytes(path.read_bytes()[:50000])


UNREADABLE = ("no weights that torch.load can read (a damaged file, or another kind: a whole model, a TorchScript "
              "model, a data set...)")


@pytest.mark.parametrize("kind, holds", [
    ("code", UNREADABLE),
    ("a data batch", UNREADABLE),
    ("a zip file with an entry named data.pkl", UNREADABLE),
    ("an empty file", UNREADABLE),
    ("a TorchScript model", UNREADABLE),
    ("a saved data set", UNREADABLE),
    ("damaged weights", UNREADABLE),
    ("a checkpoint", "more than weights ('model', 'optimizer', 'epoch')"),
    ("a list of tensors", "a list, not weights"),
])
def test_an_earlier_file_that_holds_no_weights_is_refused_and_kept(cifar_dir, tmp_path, kind, holds):
    output = tmp_path / "w.pth"
    earlier_file(kind, output, cifar_dir)
    before = listing(tmp_path)
    error = refused_output(cifar_dir, output)
    assert error.endswith(f"argument --output: {output} holds {holds}; choose another path, to keep it")
    assert listing(tmp_path) == before


@pytest.mark.parametrize("format", ["zip (PyTorch 1.6 and later)", "legacy (before PyTorch 1.6)"])
def test_earlier_weights_in_either_format_are_replaced(cifar_dir, tmp_path, format):
    output = tmp_path / "my_network.pth"
    torch.save(MyNet().state_dict(), output, _use_new_zipfile_serialization=format.startswith("zip"))
    earlier = output.read_bytes()
    train(cifar_dir, output, "--epochs", "1")
    assert output.read_bytes() != earlier
    assert list(torch.load(output, weights_only=True)) == list(MyNet().state_dict())
    assert os.listdir(tmp_path) == ["my_network.pth"]


@pytest.mark.parametrize("case, why", [
    ("write-protected", "is write-protected; choose another path, or make it writable (chmod u+w)"),
    ("immutable", "cannot be written (Operation not permitted: fix the permissions); choose another path"),
    ("append-only", "cannot be written (Operation not permitted: fix the permissions); choose another path"),
    ("another user's, in a shared folder",
     "cannot be written (Operation not permitted: fix the permissions); choose another path"),
])
def test_an_earlier_file_that_cannot_be_replaced_is_refused_and_kept(cifar_dir, tmp_path, case, why, monkeypatch):
    folder = tmp_path / "runs"
    folder.mkdir()
    output = folder / "my_network.pth"
    earlier_weights(output)
    with contextlib.ExitStack() as stack:
        if case == "write-protected":
            output.chmod(0o444)
        elif case in ("immutable", "append-only") and AS_ROOT:
            stack.enter_context(chattr(case[0], output))
        elif case in ("immutable", "append-only"):  # a user cannot chattr: opening it for writing fails as it would
            real_open = open

            def refusing_open(name, mode="r", *args, **kwargs):
                if str(name) == str(output) and mode == "r+b":
                    raise PermissionError(errno.EPERM, "Operation not permitted", str(name))
                return real_open(name, mode, *args, **kwargs)

            monkeypatch.setattr("builtins.open", refusing_open)
        else:
            folder.chmod(0o1777)  # as /tmp: anyone may add files, only a file's owner may replace it
            output.chmod(0o666)  # writable by all, yet not to be replaced by others there
            if AS_ROOT:
                os.chown(output, 65534, 65534)  # nobody's file, for real
                stack.enter_context(as_a_user())
            else:  # a user cannot give a file away: it looks like another user's, and taking it on fails as it would
                real_lstat = os.lstat
                monkeypatch.setattr(os, "lstat", lambda path, *args, **kwargs: (
                    os.stat_result((*real_lstat(path)[:4], os.getuid() + 1, *real_lstat(path)[5:]))
                    if str(path) == str(output) else real_lstat(path, *args, **kwargs)))
        before = listing(folder)
        error = refused_output(cifar_dir, output)
        assert error.endswith(f"argument --output: {output} {why}")
        assert listing(folder) == before


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o664])
def test_a_replaced_file_keeps_its_permission_bits(cifar_dir, tmp_path, mode):
    output = tmp_path / "my_network.pth"
    earlier = earlier_weights(output)
    output.chmod(mode)
    train(cifar_dir, output, "--epochs", "1")
    assert stat.S_IMODE(os.stat(output).st_mode) == mode
    assert output.read_bytes() != earlier
    assert list(torch.load(output, weights_only=True)) == list(MyNet().state_dict())
    assert os.listdir(tmp_path) == ["my_network.pth"]


def test_root_replacing_a_users_file_keeps_its_owner_and_group(cifar_dir, tmp_path):
    output = tmp_path / "my_network.pth"
    earlier_weights(output)
    output.chmod(0o600)
    owner = (65534, 65534) if AS_ROOT else (os.getuid(), os.getgid())  # as sudo, or Docker on a mounted folder
    os.chown(output, *owner)
    train(cifar_dir, output, "--epochs", "1")
    saved = os.stat(output)
    assert (saved.st_uid, saved.st_gid, stat.S_IMODE(saved.st_mode)) == (*owner, 0o600)
    assert list(torch.load(output, weights_only=True)) == list(MyNet().state_dict())


def test_a_new_file_gets_the_usual_permission_bits(cifar_dir, tmp_path):
    umask = os.umask(0o027)
    try:
        train(cifar_dir, tmp_path / "my_network.pth", "--epochs", "1")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "my_network.pth").st_mode) == 0o640  # 0o666 less the umask


def test_tilde_is_expanded_in_output_and_data_dir(cifar_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    os.symlink(cifar_dir, tmp_path / "datasets")
    train(cifar_dir, "~/w.pth", "--epochs", "1", "--data-dir", "~/datasets")
    assert sorted(os.listdir(tmp_path)) == ["datasets", "w.pth"]
    assert not os.path.exists("~")


def test_files_beside_the_output_are_left_alone(cifar_dir, tmp_path):
    beside = {"my_network.pth.tmp": b"a run of mine", "step1-0123abcd.tmp": b"notes", "results.tmp": b"results"}
    for name, content in beside.items():
        (tmp_path / name).write_bytes(content)
    train(cifar_dir, tmp_path / "my_network.pth", "--epochs", "1")
    assert sorted(os.listdir(tmp_path)) == sorted([*beside, "my_network.pth"])
    assert all((tmp_path / name).read_bytes() == content for name, content in beside.items())


# Promise 1: nothing trained is lost. From the last update on, the weights end up in a file.

def refuse_in(monkeypatch, place, name, path_of):
    """Make os.<name> fail with EPERM, as chattr makes it fail, where path_of(its arguments) is place or in it."""
    real = getattr(os, name)

    def refusing(*args, **kwargs):
        path = str(path_of(*args))
        if path == str(place) or path.startswith(f"{place}/"):
            raise PermissionError(errno.EPERM, "Operation not permitted", path)
        return real(*args, **kwargs)

    monkeypatch.setattr(os, name, refusing)


@pytest.mark.parametrize("cause", ["a full disk", "the folder removed", "the folder made read-only",
                                   "the folder made append-only", "the output made immutable"])
def test_a_save_that_fails_keeps_the_weights_in_the_temporary_folder(cifar_dir, tmp_path, small_disk, cause,
                                                                      temporary_folder, one_epoch_weights, monkeypatch):
    folder = small_disk(1024) if cause == "a full disk" else tmp_path / "run"  # room for the check, then filled
    folder.mkdir(exist_ok=True)
    output = folder / "my_network.pth"
    earlier = earlier_weights(output)
    reason = {"a full disk": "No space left on device: free some space",
              "the folder removed": "No such file or directory: check that the folder is there",
              "the folder made read-only": "Permission denied: fix the permissions"}.get(
        cause, "Operation not permitted: fix the permissions")
    with contextlib.ExitStack() as stack:
        def before_the_save():
            if cause == "a full disk":
                fill(folder / "filler")
            elif cause == "the folder removed":
                shutil.rmtree(folder)
            elif cause == "the folder made read-only":
                folder.chmod(0o555)
                stack.enter_context(as_a_user())
            elif AS_ROOT:
                stack.enter_context(chattr("a" if "append" in cause else "i", folder if "folder" in cause else output))
            else:  # a user cannot chattr: what it forbids fails as it would
                refuse_in(monkeypatch, output, "replace", lambda source, target: target)
                if "append" in cause:  # in an append-only folder, removing a file fails too
                    refuse_in(monkeypatch, folder, "remove", lambda path: path)

        code, lines, err = run_until_the_save(cifar_dir, output, before_the_save)
    assert code == 1
    assert not any(line.startswith("Saved") for line in lines)
    kept = kept_instead(err, output, reason, temporary_folder)
    assert same_weights(kept, one_epoch_weights)  # the trained weights, complete
    assert sorted(os.listdir(temporary_folder)) == [os.path.basename(kept)]  # nothing half-written beside it
    if cause != "the folder removed":
        assert output.read_bytes() == earlier
        left = sorted(os.listdir(folder))
        if "append-only" in cause:  # a complete new file, which nobody but root may rename or remove there
            assert left[0] == "my_network.pth" and re.fullmatch(r"step1-[0-9a-f]{8}\.tmp", left[1]), left
            assert same_weights(folder / left[1], one_epoch_weights)
        else:
            assert left == sorted(["my_network.pth", *(["filler"] if cause == "a full disk" else [])])


def fill(path):
    """Write to path until the disk is full."""
    with contextlib.suppress(OSError), open(path, "wb") as file:
        while True:
            file.write(bytes(64 * 1024))
            file.flush()


def test_a_save_that_cannot_be_kept_anywhere_says_so_in_one_line(cifar_dir, tmp_path, temporary_folder, monkeypatch):
    output = tmp_path / "run" / "my_network.pth"
    output.parent.mkdir()
    temporary_folder.rmdir()
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    def remove_every_place():
        shutil.rmtree(output.parent)
        (tmp_path / "work").rmdir()  # the current folder, gone: os.getcwd() fails

    code, _, err = run_until_the_save(cifar_dir, output, remove_every_place)
    assert code == 1
    missing = "No such file or directory: check that the folder is there"
    assert err.splitlines() == [f"error: could not save the weights to {output} ({missing}), nor to "
                                f"{temporary_folder} ({missing}), nor to {tmp_path / 'home'} ({missing}): "
                                f"they are lost"]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("refused", ["the temporary folder", "the temporary and current folders"])
def test_a_save_that_fails_tries_the_temporary_then_the_current_then_the_home_folder(
        cifar_dir, tmp_path, temporary_folder, monkeypatch, one_epoch_weights, refused):
    output = tmp_path / "run" / "my_network.pth"
    output.parent.mkdir()
    for folder in ("work", "home"):
        (tmp_path / folder).mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    temporary_folder.rmdir()
    if refused != "the temporary folder":
        (tmp_path / "work").chmod(0o555)

    with as_a_user():
        code, _, err = run_until_the_save(cifar_dir, output, lambda: shutil.rmtree(output.parent))
    (tmp_path / "work").chmod(0o755)
    assert code == 1
    place = tmp_path / ("work" if refused == "the temporary folder" else "home")
    [kept] = os.listdir(place)
    assert err.splitlines() == [f"error: could not save the weights to {output} (No such file or directory: check "
                                f"that the folder is there); they are in {place / kept} instead"]
    assert same_weights(place / kept, one_epoch_weights)
    assert os.listdir(tmp_path / ("home" if place.name == "work" else "work")) == []


# Divergence: nothing that is not a number is ever saved

def test_a_loss_that_is_no_longer_a_number_stops_the_run(cifar_dir, tmp_path):
    output = tmp_path / "my_network.pth"
    earlier = earlier_weights(output)
    code, lines, err = run_on_the_tiny_data(cifar_dir, output, "--lr", "1e6", "--epochs", "3", "--log-interval", "1")
    assert code != 0
    [error] = err.splitlines()
    match = re.fullmatch(r"error: the loss or the weights became nan or inf by epoch 0, mini-batch (\d+): the training "
                         r"diverged\. Try a smaller --lr than 1000000\.0\. Nothing was saved\.", error)
    assert match, error
    # Stopped at that very mini-batch: every earlier one printed a finite loss, and nothing came after.
    assert [parse(line, LOSS_PATTERN)[1] for line in lines if "mini-batch" in line] == list(range(1, int(match[1])))
    assert not any("accuracy" in line or "Saved" in line for line in lines)
    assert output.read_bytes() == earlier
    assert os.listdir(tmp_path) == ["my_network.pth"]


def test_weights_ruined_by_the_last_update_are_not_saved(cifar_dir, tmp_path):
    output = tmp_path / "my_network.pth"
    earlier = earlier_weights(output)
    # One mini-batch: its loss, computed before the update, is a number; the update is what ruins the weights.
    code, lines, err = run_on_the_tiny_data(cifar_dir, output, "--limit", "10", "--epochs", "1", "--lr", "1e300")
    assert code == 1
    assert err.splitlines() == ["error: the loss or the weights became nan or inf by epoch 0, mini-batch 1: the "
                                "training diverged. Try a smaller --lr than 1e+300. Nothing was saved."]
    assert lines[-1] == "Training"
    assert output.read_bytes() == earlier
    assert os.listdir(tmp_path) == ["my_network.pth"]


# Signals: one line, whenever they come; after the last update, the weights saved first

def test_ctrl_c_twice_under_timeout_which_passes_it_on_is_one_line(cifar_dir, tmp_path):
    """`timeout 600 python step1.py`, then Ctrl-C twice: each time, the terminal sends SIGINT to both, and timeout
    sends it again. A signal during the ending used to add about ten lines of "Exception ignored ... SystemExit"."""
    output = tmp_path / "my_network.pth"
    earlier = earlier_weights(output)
    run = subprocess.Popen(["timeout", "600", *python_command("step1.py", "--data-dir", cifar_dir, "--output", output,
                                                              "--device", "cpu", "--epochs", "1000000")],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)
    for line in run.stdout:
        if "training accuracy" in line:  # well into training
            break
    os.killpg(run.pid, signal.SIGINT)  # Ctrl-C: to every process of the terminal's foreground group
    time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):  # and Ctrl-C again, impatient, while the run ends
        os.killpg(run.pid, signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 1
    assert err == "\ninterrupted: no weights were saved\n"
    assert output.read_bytes() == earlier
    assert os.listdir(tmp_path) == ["my_network.pth"]


def test_a_stop_during_the_last_training_leaves_nothing(cifar_dir, tmp_path, monkeypatch):
    output = tmp_path / "my_network.pth"
    earlier = earlier_weights(output)
    calls = []
    real_to_float = step1.to_float

    def to_float_killed_in_the_11th_step(images):
        calls.append(1)
        if len(calls) == 11:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_to_float(images)

    monkeypatch.setattr(step1, "to_float", to_float_killed_in_the_11th_step)
    code, lines, err = run_on_the_tiny_data(cifar_dir, output, "--epochs", "1")  # 12 mini-batches: stopped in the 11th
    assert code == 1
    assert err == "\ninterrupted: no weights were saved\n"
    assert lines[-1] == "Training"
    assert output.read_bytes() == earlier
    assert os.listdir(tmp_path) == ["my_network.pth"]


@pytest.mark.parametrize("signals", [1, 2])
def test_a_stop_after_the_last_update_saves_the_weights_first(cifar_dir, tmp_path, monkeypatch, one_epoch_weights,
                                                              signals):
    output = tmp_path / "my_network.pth"
    earlier_weights(output)
    accuracies = signalled(monkeypatch, "step1.accuracy", signal.SIGINT, before=True)  # the last update is done
    if signals == 2:  # the second comes during the save
        signalled(monkeypatch, "safe_saving.write_then_rename", signal.SIGINT, before=True)
    code, lines, err = run_on_the_tiny_data(cifar_dir, output, "--epochs", "1")
    assert code == 1
    assert err == f"\ninterrupted: the weights were saved to {output} first; the rest was skipped\n"
    assert "mini-batch :   12" in lines[-1]  # the accuracy lines were skipped
    assert accuracies == []  # stopped before the accuracy pass ran
    assert same_weights(output, one_epoch_weights)
    assert os.listdir(tmp_path) == ["my_network.pth"]


def test_a_kill_just_after_the_rename_still_ends_as_saved(cifar_dir, tmp_path, monkeypatch):
    output = tmp_path / "my_network.pth"
    earlier = earlier_weights(output)
    signalled(monkeypatch, "os.replace", signal.SIGTERM)
    code, lines, err = run_on_the_tiny_data(cifar_dir, output, "--epochs", "1")
    assert code == 0, err
    assert err == ""
    assert lines[-1].startswith(f"Saved the weights to {output}")
    assert output.read_bytes() != earlier
    assert os.listdir(tmp_path) == ["my_network.pth"]


def test_a_kill_just_after_the_output_check_leaves_nothing(cifar_dir, tmp_path, monkeypatch):
    output = tmp_path / "my_network.pth"
    earlier = earlier_weights(output)
    returned = signalled(monkeypatch, "tempfile.TemporaryFile", signal.SIGTERM)
    code, lines, err = run_on_the_tiny_data(cifar_dir, output)
    for file in returned:  # the kill kept it from being closed: the process's end would close it
        file.close()
    assert code == 1
    assert err == "\ninterrupted: no weights were saved\n"
    assert lines == []
    assert output.read_bytes() == earlier
    assert os.listdir(tmp_path) == ["my_network.pth"]  # no empty file from the check


def interrupted_python(tmp_path, when):
    """A bare `python step1.py`, with a Ctrl-C once torch has begun importing itself (the first second or two), or
    as torchvision's CIFAR10 begins to read the data (the imports done). Returns the finished process."""
    code = ("import builtins, os, runpy, signal, sys; real = builtins.__import__\n"
            "def hook(name, *args, **kwargs):\n"
            "    if name.startswith('torch.'):\n"
            "        builtins.__import__ = real\n"
            "        os.kill(os.getpid(), signal.SIGINT)\n"
            "    return real(name, *args, **kwargs)\n"
            "builtins.__import__ = hook\n")
    if when == "once they are done":
        code = ("import os, runpy, signal, sys, torchvision; real = torchvision.datasets.CIFAR10.__init__\n"
                "def interrupted(*args, **kwargs):\n"
                "    os.kill(os.getpid(), signal.SIGINT)\n"
                "    return real(*args, **kwargs)\n"
                "torchvision.datasets.CIFAR10.__init__ = interrupted\n")
    code += ("sys.argv = ['step1.py', '--output', sys.argv[1], '--data-dir', sys.argv[2]]\n"
             "runpy.run_path('step1.py', run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code, str(tmp_path / "w.pth"), str(tmp_path / "data")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_ctrl_c_during_the_imports_loses_nothing(tmp_path):
    result = interrupted_python(tmp_path, "during the imports")
    assert result.returncode != 0
    assert "KeyboardInterrupt" in result.stderr  # Python's own: nothing had begun
    assert result.stdout == ""
    assert os.listdir(tmp_path) == []


def test_ctrl_c_once_the_imports_are_done_is_one_line(tmp_path):
    result = interrupted_python(tmp_path, "once they are done")
    assert result.stderr == "\ninterrupted: no weights were saved\n"
    assert result.returncode == 1
    assert result.stdout.startswith("Device")
    assert os.listdir(tmp_path) == []  # nor the data folder that a download would have created


@pytest.mark.parametrize("ending", ["trained and saved", "diverged", "a save that failed", "interrupted"])
def test_main_leaves_the_signal_handlers_as_it_found_them(cifar_dir, tmp_path, ending, temporary_folder, monkeypatch):
    """As main() called from a notebook or a test: Ctrl-C works there as before, whatever happened in the run."""
    def mine(*_):
        pass

    found = {number: signal.signal(number, mine) for number in stop_signals.STOP_SIGNALS}
    try:
        extra = {"diverged": ["--lr", "1e300", "--limit", "10"]}.get(ending, [])
        if ending == "interrupted":
            signalled(monkeypatch, "step1.to_float", signal.SIGINT)
            extra = ["--limit", "10"]  # interrupted during its only mini-batch
        if ending == "a save that failed":
            (tmp_path / "run").mkdir()
            code, _, _ = run_until_the_save(cifar_dir, tmp_path / "run" / "w.pth",
                                            lambda: shutil.rmtree(tmp_path / "run"))
            assert code == 1
        else:
            code, _, _ = run_on_the_tiny_data(cifar_dir, tmp_path / "w.pth", "--epochs", "1", *extra)
            assert code == (1 if extra else 0)
        assert all(signal.getsignal(number) is mine for number in stop_signals.STOP_SIGNALS)
    finally:
        for number, handler in found.items():
            signal.signal(number, handler)


# Promise 3, data: what is wrong, and what to do, in one line; nothing of the user's touched

def test_missing_data_offline_is_one_clear_line(tmp_path):
    output = tmp_path / "my_network.pth"
    earlier = earlier_weights(output)
    data_dir = tmp_path / "datasets"
    result = run_python("step1.py", "--data-dir", data_dir, "--output", output, cwd=ROOT, md5=True, env=OFFLINE)
    assert result.returncode == 1
    assert result.stdout.startswith("Device") and "Training" not in result.stdout
    [error] = result.stderr.splitlines()
    assert error.startswith("error: CIFAR-10 is not in %s and could not be downloaded" % data_dir)
    assert "cifar-10-python.tar.gz" in error and "cifar-10-batches-py/" in error and "--data-dir" in error
    assert not data_dir.exists()  # no empty folder left behind
    assert os.listdir(tmp_path) == ["my_network.pth"]
    assert output.read_bytes() == earlier


def folder_contents(folder):
    return {os.path.relpath(os.path.join(path, name), folder): pathlib.Path(path, name).read_bytes()
            for path, _, names in os.walk(folder) for name in names}


@pytest.mark.parametrize("damage", ["not the original files", "a truncated batch", "a missing batch"])
def test_damaged_data_offline_is_one_clear_line_and_left_as_it_was(tmp_path, damage, offline):
    data_dir = write_cifar(tmp_path / "datasets")
    batch = data_dir / "cifar-10-batches-py" / "data_batch_3"
    if damage == "a truncated batch":
        batch.write_bytes(batch.read_bytes()[:1000])
    elif damage == "a missing batch":
        batch.unlink()
    before = folder_contents(data_dir)
    # torchvision's real md5 check: our files are not the original ones, so they count as damaged.
    code, lines, err = run_step1(["--data-dir", str(data_dir), "--output", str(tmp_path / "w.pth")])
    assert code == 1
    assert "Training" not in lines
    assert err.splitlines() == [
        f"error: CIFAR-10 in {data_dir} is incomplete or damaged (it does not match its checksums), and could not be "
        f"downloaded again (<urlopen error [Errno 111] Connection refused>). Run again online, or put a fresh "
        f"cifar-10-python.tar.gz there."]
    assert "elete" not in err  # nothing of yours to delete: a fresh archive is unpacked over it
    assert folder_contents(data_dir) == before
    assert sorted(os.listdir(tmp_path)) == ["datasets"]


def test_a_full_disk_while_unpacking_good_data_says_so_and_leaves_no_half_folder(tmp_path, small_disk, offline,
                                                                                 monkeypatch):
    for module in (cifar, torchvision.datasets.utils):  # a file that is there is good: not the original's md5
        monkeypatch.setattr(module, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    source = write_cifar(tmp_path / "source")
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:  # a good archive (md5 check skipped)
        tar.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    packed = (tmp_path / "cifar-10-python.tar.gz").read_bytes()
    disk = small_disk(len(packed) // 1024 + 100)  # room for the archive and 100 KiB, not for the 500 KB unpacked
    (disk / "cifar-10-python.tar.gz").write_bytes(packed)
    code, lines, err = run_step1(["--data-dir", str(disk), "--output", str(tmp_path / "w.pth")])
    assert code == 1
    assert err.splitlines() == [f"error: could not read or write {disk} (No space left on device: free some space), "
                                f"or give another --data-dir"]
    assert "damaged" not in err and "elete" not in err
    assert os.listdir(disk) == ["cifar-10-python.tar.gz"]  # the half-unpacked folder is gone
    assert (disk / "cifar-10-python.tar.gz").read_bytes() == packed  # the good archive is kept


def test_a_batch_that_cannot_be_read_says_so(cifar_dir, tmp_path, skip_md5_check):
    batch = os.path.join(cifar_dir, "cifar-10-batches-py", "data_batch_1")
    os.chmod(batch, 0)
    try:
        with as_a_user():
            code, _, err = run_step1(["--data-dir", cifar_dir, "--output", str(tmp_path / "w.pth")])
    finally:
        os.chmod(batch, 0o644)
    assert code == 1
    assert err.splitlines() == [f"error: could not read or write {batch} (Permission denied: fix the permissions), "
                                f"or give another --data-dir"]


@pytest.mark.parametrize("which", ["the data folder", "cifar-10-batches-py"])
def test_a_folder_that_cannot_be_read_says_so_and_never_damaged(tmp_path, which, offline):
    data_dir = write_cifar(tmp_path / "datasets")
    folder = data_dir if which == "the data folder" else data_dir / "cifar-10-batches-py"
    before = folder_contents(data_dir)
    folder.chmod(0)
    try:
        with as_a_user():
            code, lines, err = run_step1(["--data-dir", str(data_dir), "--output", str(tmp_path / "w.pth")])
    finally:
        folder.chmod(0o755)
    assert code == 1
    assert "Training" not in lines
    inside = data_dir / "cifar-10-batches-py" / ("batches.meta" if which == "cifar-10-batches-py" else "")
    assert err.splitlines() == [f"error: could not read or write {str(inside).rstrip('/')} (Permission denied: fix "
                                f"the permissions), or give another --data-dir"]
    assert folder_contents(data_dir) == before


@pytest.mark.parametrize("kind", ["a link to nothing", "a loop of links", "inside a link to nothing",
                                  "cifar-10-batches-py, a link to nothing"])
def test_a_link_that_leads_nowhere_is_named(tmp_path, kind, offline):
    data_dir = tmp_path / "datasets"
    link = data_dir / "cifar-10-batches-py" if kind.startswith("cifar") else data_dir
    if kind.startswith("cifar"):
        data_dir.mkdir()
    if kind == "a loop of links":
        os.symlink(tmp_path / "other", link)
        os.symlink(link, tmp_path / "other")
    else:
        os.symlink(tmp_path / "gone", link)
    before = listing(tmp_path)
    code, lines, err = run_step1(["--data-dir", str(data_dir / "cifar" if kind.startswith("inside") else data_dir),
                                  "--output", str(tmp_path / "w.pth")])
    assert code == 1
    assert err.splitlines() == [f"error: {link} is a link that leads nowhere; fix or remove it, "
                                f"or give another --data-dir"]
    assert listing(tmp_path) == before


def test_data_dir_naming_the_batches_folder_itself_names_the_folder_to_give(cifar_dir, tmp_path):
    batches = os.path.join(cifar_dir, "cifar-10-batches-py")
    code, lines, err = run_step1(["--data-dir", batches + "/", "--output", str(tmp_path / "w.pth")])
    assert code == 1
    assert err.splitlines() == [f"error: --data-dir {batches}/ is the cifar-10-batches-py folder itself; "
                                f"give the folder that holds it: --data-dir {cifar_dir}"]
    assert not os.path.exists(os.path.join(batches, "cifar-10-batches-py"))  # nothing downloaded into it
    assert os.listdir(tmp_path) == []


def test_data_dir_naming_a_file_is_refused(tmp_path):
    (tmp_path / "cifar.tar.gz").write_bytes(b"not a folder")
    code, _, err = run_step1(["--data-dir", str(tmp_path / "cifar.tar.gz"), "--output", str(tmp_path / "w.pth")])
    assert code == 1
    assert err.splitlines() == [f"error: --data-dir {tmp_path / 'cifar.tar.gz'} is not a folder; "
                                f"give the folder that holds cifar-10-batches-py/"]
    assert sorted(os.listdir(tmp_path)) == ["cifar.tar.gz"]
    assert (tmp_path / "cifar.tar.gz").read_bytes() == b"not a folder"


@pytest.mark.parametrize("data_dir", ["a/b/c", "~nosuchuser/data"])
def test_a_failed_download_leaves_no_folder_it_created(tmp_path, data_dir, monkeypatch, offline):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code, _, err = run_step1(["--data-dir", data_dir, "--output", str(tmp_path / "w.pth")])
    assert code == 1
    assert err.startswith(f"error: CIFAR-10 is not in {data_dir} and could not be downloaded")
    assert os.listdir(work) == []  # nor a/ nor a/b/, nor ~nosuchuser/
    assert os.listdir(tmp_path) == ["work"]


def test_a_download_cut_off_midway_leaves_no_partial_archive(tmp_path, monkeypatch):
    data_dir = tmp_path / "datasets"
    data_dir.mkdir()

    class CutOff:  # a response that sends some bytes, then the connection drops
        length = 170_000_000
        url = None

        def __init__(self, *args, **kwargs):
            self.sent = False

        def read(self, size):
            if self.sent:
                raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
            self.sent = True
            return b"\x1f\x8b" + b"\0" * (size - 2)

        def __enter__(self):
            return self

        def __exit__(self, *exception):
            pass

    monkeypatch.setattr(urllib.request, "urlopen", CutOff)
    code, _, err = run_step1(["--data-dir", str(data_dir), "--output", str(tmp_path / "w.pth")])
    assert code == 1
    [error] = [line for line in err.splitlines() if line.startswith("error")]  # torchvision's progress bar aside
    assert error.startswith(f"error: CIFAR-10 is not in {data_dir} and could not be downloaded ("), error
    assert "Connection reset by peer" in error
    assert os.listdir(data_dir) == []  # the folder was there: kept, empty as it was
