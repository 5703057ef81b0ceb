"""step1.py's safeguards: what it refuses before training, how it saves, how it stops, and what it says about data.

CI runs as root. Where root can make a case real (chattr +i, a FIFO, a signal, a folder that vanishes), the tests
do; where root cannot (permission bits do not stop it), they make the failing call fail as it fails for a user."""
import errno
import os
import pathlib
import re
import signal
import shutil
import stat
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile

import pytest
import torch

import step1
from conftest import (OFFLINE, ROOT, earlier_weights, python_command, run_python, run_step1, skip_md5, train,
                      write_cifar)
from model import MyNet
from test_step1 import LOSS_PATTERN, parse

AS_ROOT = os.geteuid() == 0


def refused_output(cifar_dir, output):
    """Run with a bad --output; return the error line, after checking nothing was read or trained."""
    code, lines, err = run_step1(["--data-dir", cifar_dir, "--output", str(output), "--device", "cpu"])
    assert code == 2
    assert lines == []  # not even the device: refused before reading anything
    return err.splitlines()[-1]


def listing(folder):
    """Each entry of folder, with its type and permission bits, and a regular file's bytes."""
    return {entry.name: (entry.stat(follow_symlinks=False).st_mode,
                         entry.is_file(follow_symlinks=False) and pathlib.Path(entry.path).read_bytes())
            for entry in os.scandir(folder)}


@pytest.fixture
def immutable():
    """make(path): path can no longer be changed, replaced, or (a folder) written into, not even by root. For real
    with chattr +i where the tests run as root; else by the means a user has: no write permission for a folder, and
    for a file, opening it for writing and renaming onto it fail as they fail for an immutable file."""
    made = []
    with pytest.MonkeyPatch.context() as patch:
        def make(path):
            path = str(path)
            if AS_ROOT and subprocess.run(["chattr", "+i", path], capture_output=True).returncode == 0:
                made.append(path)
            elif os.path.isdir(path):
                os.chmod(path, 0o555)
            else:
                def refusing(real, check):
                    def call(*args, **kwargs):
                        if check(*args):
                            raise PermissionError(errno.EPERM, "Operation not permitted", path)
                        return real(*args, **kwargs)
                    return call
                patch.setattr("builtins.open", refusing(open, lambda name, mode="r", *_: str(name) == path
                                                        and mode != "rb"))
                patch.setattr(os, "replace", refusing(os.replace, lambda source, target: str(target) == path))
        yield make
    for path in made:
        subprocess.run(["chattr", "-i", path], check=True)


# Before training: an --output that cannot, or must not, be replaced

def test_output_in_a_missing_folder_is_refused_before_training(cifar_dir, tmp_path):
    error = refused_output(cifar_dir, tmp_path / "missing" / "w.pth")
    assert error.endswith(f"argument --output: {tmp_path / 'missing' / 'w.pth'} cannot be written "
                          f"(No such file or directory); choose another path")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kind", ["folder", "folder/", "new/", "", "fifo", "link to a file", "broken link"])
def test_output_that_is_not_a_regular_file_is_refused_and_left_alone(cifar_dir, tmp_path, kind):
    (tmp_path / "folder").mkdir()
    earlier_weights(tmp_path / "file")
    os.mkfifo(tmp_path / "fifo")  # like /dev/null, not a regular file; creating one needs no privilege
    os.symlink(tmp_path / "file", tmp_path / "link to a file")
    os.symlink(tmp_path / "nothing", tmp_path / "broken link")
    before = listing(tmp_path)
    error = refused_output(cifar_dir, os.path.join(str(tmp_path), kind) if kind else "")
    assert "is not a file name (but a folder, a link or a device)" in error
    assert listing(tmp_path) == before
    assert os.listdir(tmp_path / "folder") == []


def test_output_in_a_folder_that_cannot_be_written_is_refused_before_training(cifar_dir, tmp_path, immutable):
    folder = tmp_path / "folder"
    folder.mkdir()
    immutable(folder)
    error = refused_output(cifar_dir, folder / "w.pth")
    assert re.search(r"cannot be written \((Operation not permitted|Permission denied)\); choose another path", error)
    assert os.listdir(folder) == []


@pytest.mark.parametrize("kind", ["code", "a data batch", "another zip file", "an empty file"])
def test_an_earlier_file_that_torch_save_did_not_write_is_refused_and_kept(cifar_dir, tmp_path, kind):
    output = tmp_path / {"code": "model.py", "a data batch": "data_batch_1", "another zip file": "photos.zip",
                         "an empty file": "w.pth"}[kind]
    if kind == "code":
        shutil.copy(os.path.join(ROOT, "model.py"), output)
    elif kind == "a data batch":
        shutil.copy(os.path.join(cifar_dir, "cifar-10-batches-py", "data_batch_1"), output)
    elif kind == "another zip file":
        with zipfile.ZipFile(output, "w") as archive:
            archive.writestr("holiday/data.txt", "not weights")
    else:
        output.touch()
    before = listing(tmp_path)
    error = refused_output(cifar_dir, output)
    assert error.endswith(f"argument --output: {output} holds no weights saved by torch.save; "
                          f"choose another path, to keep it")
    assert listing(tmp_path) == before


@pytest.mark.parametrize("case, why", [
    ("write-protected", "is write-protected; choose another path, or make it writable (chmod u+w)"),
    ("immutable", "cannot be written (Operation not permitted); choose another path"),
    ("another user's, in a shared folder", "is another user's file in a shared folder: only they may replace it"),
])
def test_an_earlier_file_that_cannot_be_replaced_is_refused_and_kept(cifar_dir, tmp_path, case, why, immutable,
                                                                     monkeypatch):
    folder = tmp_path / "runs"
    folder.mkdir()
    output = folder / "my_network.pth"
    earlier_weights(output)
    if case == "write-protected":
        output.chmod(0o444)
    elif case == "immutable":
        immutable(output)
    else:
        folder.chmod(0o1777)  # as /tmp: anyone may add files, only a file's owner may replace it
        output.chmod(0o666)  # writable by all, yet not replaceable by others there
        # This process owns both: it plays a third user, which the tests may not become for real.
        monkeypatch.setattr(os, "geteuid", lambda: os.stat(output).st_uid + 1)
    before = listing(folder)
    error = refused_output(cifar_dir, output)
    assert error.endswith(f"argument --output: {output} {why}")
    assert listing(folder) == before


def test_tilde_is_expanded_in_output_and_data_dir(cifar_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    os.symlink(cifar_dir, tmp_path / "datasets")
    train(cifar_dir, "~/w.pth", "--epochs", "1", "--data-dir", "~/datasets")
    assert sorted(os.listdir(tmp_path)) == ["datasets", "w.pth"]
    assert not os.path.exists("~")


def test_files_beside_the_output_are_left_alone(cifar_dir, tmp_path):
    beside = {"my_network.pth.tmp": b"a run of mine", "my_network.tmp": b"notes", "results.tmp": b"results"}
    for name, content in beside.items():
        (tmp_path / name).write_bytes(content)
    train(cifar_dir, tmp_path / "my_network.pth", "--epochs", "1")
    assert sorted(os.listdir(tmp_path)) == sorted([*beside, "my_network.pth"])
    assert all((tmp_path / name).read_bytes() == content for name, content in beside.items())


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


def test_a_new_file_gets_the_usual_permission_bits(cifar_dir, tmp_path):
    umask = os.umask(0o027)
    try:
        train(cifar_dir, tmp_path / "my_network.pth", "--epochs", "1")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "my_network.pth").st_mode) == 0o640  # 0o666 less the umask


# At the save, after training: one line that says what happened, and nothing lost that can be kept

def run_until_the_save(cifar_dir, output, before_the_save):
    """A one-epoch run that calls before_the_save() as training ends; return its exit code, lines and error."""
    real_accuracy, calls = step1.accuracy, []

    def accuracy(*args):
        calls.append(1)
        if len(calls) == 2:  # the test accuracy of the last epoch: training is over
            before_the_save()
        return real_accuracy(*args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(step1, "accuracy", accuracy)
        skip_md5(patch.setattr)
        return run_step1(["--data-dir", cifar_dir, "--output", str(output), "--device", "cpu", "--epochs", "1"])


def test_a_full_disk_at_the_save_is_one_line_and_keeps_the_earlier_file(cifar_dir, tmp_path, monkeypatch):
    output = tmp_path / "my_network.pth"
    earlier = earlier_weights(output)

    class FullDisk:  # the file that open() gives on a full disk: created, but every write fails
        def __init__(self, file):
            self.file = file

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exception):
            self.file.close()

    real_open = open
    monkeypatch.setattr("builtins.open", lambda name, mode="r", *args, **kwargs: (
        FullDisk(real_open(name, mode, *args, **kwargs)) if mode == "xb" else real_open(name, mode, *args, **kwargs)))
    code, lines, err = run_until_the_save(cifar_dir, output, lambda: None)
    assert code == 1
    assert err.splitlines() == [f"error: could not save the weights to {output} (No space left on device); "
                                f"check that its folder is still there and has free space, then run again"]
    assert not any(line.startswith("Saved") for line in lines)
    assert output.read_bytes() == earlier
    assert os.listdir(tmp_path) == ["my_network.pth"]  # the half-written file is gone


def test_an_output_folder_removed_during_training_is_one_line(cifar_dir, tmp_path):
    output = tmp_path / "run" / "my_network.pth"
    output.parent.mkdir()
    code, lines, err = run_until_the_save(cifar_dir, output, lambda: shutil.rmtree(output.parent))
    assert code == 1
    assert err.splitlines() == [f"error: could not save the weights to {output} (No such file or directory); "
                                f"check that its folder is still there and has free space, then run again"]
    assert os.listdir(tmp_path) == []


def test_an_output_that_became_unreplaceable_during_training_says_where_the_weights_are(cifar_dir, tmp_path,
                                                                                      immutable):
    output = tmp_path / "my_network.pth"
    earlier = earlier_weights(output)
    code, lines, err = run_until_the_save(cifar_dir, output, lambda: immutable(output))
    assert code == 1
    [error] = err.splitlines()
    match = re.fullmatch(rf"error: could not replace {re.escape(str(output))} \(Operation not permitted\); "
                         rf"the weights are in ({re.escape(str(output))}\.[0-9a-f]{{8}}\.tmp)", error)
    assert match, error
    assert output.read_bytes() == earlier
    weights = torch.load(match[1], weights_only=True)  # complete, and the trained network's
    assert list(weights) == list(MyNet().state_dict())
    assert sorted(os.listdir(tmp_path)) == sorted(["my_network.pth", os.path.basename(match[1])])


# Divergence: nothing that is not a number is ever saved

def test_a_loss_that_is_no_longer_a_number_stops_the_run(cifar_dir, tmp_path, skip_md5_check):
    output = tmp_path / "my_network.pth"
    earlier = earlier_weights(output)
    code, lines, err = run_step1(["--data-dir", cifar_dir, "--output", str(output), "--device", "cpu",
                                  "--lr", "1e6", "--epochs", "3", "--log-interval", "1"])
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


def test_weights_ruined_by_the_last_update_are_not_saved(cifar_dir, tmp_path, skip_md5_check):
    output = tmp_path / "my_network.pth"
    earlier = earlier_weights(output)
    # One mini-batch: its loss, computed before the update, is a number; the update is what ruins the weights.
    code, lines, err = run_step1(["--data-dir", cifar_dir, "--output", str(output), "--device", "cpu",
                                  "--limit", "10", "--epochs", "1", "--lr", "1e300"])
    assert code == 1
    assert err.splitlines() == ["error: the loss or the weights became nan or inf by epoch 0, mini-batch 1: the "
                                "training diverged. Try a smaller --lr than 1e+300. Nothing was saved."]
    assert lines[-1] == "Training"
    assert output.read_bytes() == earlier
    assert os.listdir(tmp_path) == ["my_network.pth"]


# Signals: one line and no stray file, whenever they come

def test_sigterm_stops_the_run_like_ctrl_c(cifar_dir, tmp_path):
    output = tmp_path / "my_network.pth"
    earlier = earlier_weights(output)
    run = subprocess.Popen(python_command("step1.py", "--data-dir", cifar_dir, "--output", output, "--device", "cpu",
                                          "--epochs", "1000000"),
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=dict(os.environ, PYTHONUNBUFFERED="1"))
    for line in run.stdout:
        if "training accuracy" in line:  # well into training
            break
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 1
    assert err.splitlines() == ["", "interrupted: no weights were saved"]
    assert output.read_bytes() == earlier
    assert os.listdir(tmp_path) == ["my_network.pth"]


def run_signalled_after(call, args, monkeypatch):
    """Run step1.py's main(args) here, sending this process SIGTERM right after each call of call (a dotted
    name), as a kill could come at that very moment; SIGTERM does here what `python step1.py` makes it do."""
    module, name = call.rsplit(".", 1)
    real, returned = getattr(sys.modules[module], name), []
    monkeypatch.setattr(sys.modules[module], name,
                        lambda *a, **k: (returned.append(real(*a, **k)), os.kill(os.getpid(), signal.SIGTERM))[0])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("\ninterrupted: no weights were saved"))
    skip_md5(monkeypatch.setattr)
    result = run_step1(args)
    for thing in returned:  # a file that the kill kept from being closed: the process's end would close it
        getattr(thing, "close", lambda: None)()
    return result


def test_a_kill_just_after_the_rename_still_ends_as_saved(cifar_dir, tmp_path, monkeypatch):
    output = tmp_path / "my_network.pth"
    earlier = earlier_weights(output)
    code, lines, err = run_signalled_after("os.replace", ["--data-dir", cifar_dir, "--output", str(output),
                                                          "--device", "cpu", "--epochs", "1"], monkeypatch)
    assert code == 0, err
    assert err == ""
    assert lines[-1].startswith(f"Saved the weights to {output}")
    assert output.read_bytes() != earlier
    assert os.listdir(tmp_path) == ["my_network.pth"]


def test_a_kill_just_after_the_output_check_leaves_nothing(cifar_dir, tmp_path, monkeypatch):
    output = tmp_path / "my_network.pth"
    earlier = earlier_weights(output)
    code, lines, err = run_signalled_after("tempfile.TemporaryFile", ["--data-dir", cifar_dir, "--output",
                                                                      str(output), "--device", "cpu"], monkeypatch)
    assert code == 1
    assert err.splitlines() == ["", "interrupted: no weights were saved"]
    assert lines == []
    assert output.read_bytes() == earlier
    assert os.listdir(tmp_path) == ["my_network.pth"]  # no empty file from the check


def test_ctrl_c_during_the_imports_is_one_line(tmp_path):
    # A bare `python step1.py`, interrupted once torch has begun importing itself (the first seconds).
    code = ("import builtins, os, runpy, signal, sys; real = builtins.__import__\n"
            "def hook(name, *args, **kwargs):\n"
            "    if name.startswith('torch.'):\n"
            "        builtins.__import__ = real\n"
            "        os.kill(os.getpid(), signal.SIGINT)\n"
            "    return real(name, *args, **kwargs)\n"
            "builtins.__import__ = hook\n"
            "sys.argv = ['step1.py', '--output', sys.argv[1]]\n"
            "runpy.run_path('step1.py', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "w.pth")], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr == "\ninterrupted: no weights were saved\n"
    assert result.stdout == ""
    assert os.listdir(tmp_path) == []


# Data: what is wrong, and what to do, in one line; nothing of the user's touched

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


@pytest.fixture
def offline(monkeypatch):
    """Any download fails as it does without a network (faster than a new Python with OFFLINE)."""
    def refuse(*args, **kwargs):
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


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
    [error] = err.splitlines()
    assert error.startswith(f"error: CIFAR-10 in {data_dir} is incomplete or damaged and could not be downloaded "
                            f"again"), error
    assert "Delete cifar-10-batches-py from it" in error and "cifar-10-python.tar.gz" in error
    assert folder_contents(data_dir) == before
    assert sorted(os.listdir(tmp_path)) == ["datasets"]


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


def refuse_to_open(monkeypatch, refused):
    """Make open() fail as the operating system does for a path you may not use, for the paths refused()
    picks: permission bits do not stop root, which the tests may run as."""
    real_open = open

    def refusing_open(path, *args, **kwargs):
        if refused(str(path)):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refusing_open)


def test_a_batch_that_cannot_be_read_says_so(cifar_dir, tmp_path, monkeypatch, skip_md5_check):
    batch = os.path.join(cifar_dir, "cifar-10-batches-py", "data_batch_1")
    refuse_to_open(monkeypatch, lambda path: path == batch)
    code, _, err = run_step1(["--data-dir", cifar_dir, "--output", str(tmp_path / "w.pth")])
    assert code == 1
    assert err.splitlines() == [f"error: cannot read or write {batch} (Permission denied); "
                                f"fix its permissions or give another --data-dir"]
    assert os.path.isfile(batch)


@pytest.mark.parametrize("which", ["the data folder", "cifar-10-batches-py"])
def test_a_folder_that_cannot_be_read_says_so_and_never_damaged(tmp_path, which, monkeypatch, offline):
    data_dir = write_cifar(tmp_path / "datasets")
    folder = data_dir if which == "the data folder" else data_dir / "cifar-10-batches-py"
    before = folder_contents(data_dir)
    if AS_ROOT:  # root may read anything: the folder refuses as it does a user, whom os.access asks about
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kwargs: (
            str(path) != str(folder) and real_access(path, mode, **kwargs)))
    else:
        folder.chmod(0)
    try:
        code, lines, err = run_step1(["--data-dir", str(data_dir), "--output", str(tmp_path / "w.pth")])
    finally:
        folder.chmod(0o755)
    assert code == 1
    assert "Training" not in lines
    assert err.splitlines() == [f"error: cannot read {folder} (permission denied); "
                                f"fix its permissions or give another --data-dir"]
    assert folder_contents(data_dir) == before


@pytest.mark.parametrize("kind", ["a link to nothing", "a loop of links", "inside a link to nothing"])
def test_a_data_dir_link_that_leads_nowhere_is_named(tmp_path, kind, offline):
    link = tmp_path / "datasets"
    if kind == "a loop of links":
        os.symlink(tmp_path / "other", link)
        os.symlink(link, tmp_path / "other")
    else:
        os.symlink(tmp_path / "gone", link)
    data_dir = link / "cifar" if kind == "inside a link to nothing" else link
    before = listing(tmp_path)
    code, lines, err = run_step1(["--data-dir", str(data_dir), "--output", str(tmp_path / "w.pth")])
    assert code == 1
    assert err.splitlines() == [f"error: {link} is a link that leads nowhere; fix or remove it, "
                                f"or give another --data-dir"]
    assert listing(tmp_path) == before


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
