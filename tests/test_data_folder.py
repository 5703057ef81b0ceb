"""data_folder.py: the paths given to --data-dir and --output (path_option: ~ expanded, an empty one refused), and
the folder that torchvision reads CIFAR-10 from or downloads it into (checked): a --data-dir that cannot be right, a
link that leads nowhere, data missing, damaged or unreadable, each in one line that says which; a failed download
removes what it created, and only that."""
import errno
import os
import pathlib
import signal
import tarfile
import urllib.error
import urllib.request

import pytest
import torchvision
import torchvision.datasets.cifar as cifar
import torchvision.datasets.utils

from helpers import (
    as_a_user,
    earlier_weights,
    listing,
    run_step1,
    send_here,
    train,
    write_cifar,
)


def folder_contents(folder):
    return {os.path.relpath(os.path.join(path, name), folder): pathlib.Path(path, name).read_bytes()
            for path, _, names in os.walk(folder) for name in names}


# Paths (path_option)


@pytest.mark.parametrize("option", ["--output", "--data-dir"])
def test_an_empty_path_is_refused_like_any_bad_option(option, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, lines, err = run_step1([option, ""])
    assert code == 2
    assert lines == []
    assert err.splitlines()[-1].endswith(f"error: argument {option}: must not be empty")
    assert os.listdir(tmp_path) == []


def test_tilde_is_expanded_in_output_and_data_dir(cifar_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    os.symlink(cifar_dir, tmp_path / "datasets")
    train(cifar_dir, "~/w.pth", "--epochs", "1", "--data-dir", "~/datasets")
    assert sorted(os.listdir(tmp_path)) == ["datasets", "w.pth", "w.pth.checkpoint"]
    assert not os.path.exists("~")


# A --data-dir that cannot be right, refused before anything is read (check_folder)


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


def test_a_batch_that_is_a_link_to_nothing_is_named(tmp_path, offline):
    data_dir = write_cifar(tmp_path / "datasets")
    batch = data_dir / "cifar-10-batches-py" / "data_batch_2"
    batch.unlink()
    os.symlink(tmp_path / "gone", batch)
    code, _, err = run_step1(["--data-dir", str(data_dir), "--output", str(tmp_path / "w.pth")])
    assert code == 1
    assert err.splitlines() == [f"error: {batch} is a link that leads nowhere; fix or remove it, or give another "
                                f"--data-dir"]


# Data missing, damaged or unreadable: what is wrong and what to do, in one line, the user's files untouched


def test_missing_data_offline_is_one_clear_line(tmp_path, offline):
    output = tmp_path / "my_network.pth"
    earlier = earlier_weights(output)
    data_dir = tmp_path / "datasets"
    code, lines, err = run_step1(["--data-dir", str(data_dir), "--output", str(output)])
    assert code == 1
    printed = "\n".join(lines)
    assert printed.startswith("Device") and "Training" not in printed
    [error] = err.splitlines()
    assert error.startswith("error: CIFAR-10 is not in %s and could not be downloaded" % data_dir)
    assert "cifar-10-python.tar.gz" in error and "cifar-10-batches-py/" in error and "--data-dir" in error
    assert not data_dir.exists()  # no empty folder left behind
    assert os.listdir(tmp_path) == ["my_network.pth"]
    assert output.read_bytes() == earlier


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


# A failed download removes what it created (remove_what_a_download_made), where the system put it


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


def cut_off_midway(ending):
    """A response that sends some bytes of the archive, then ending() comes: the connection drops, or a Ctrl-C."""
    class CutOff:
        length = 170_000_000
        url = None

        def __init__(self, *args, **kwargs):
            self.sent = False

        def read(self, size):
            if self.sent:
                ending()
            self.sent = True
            return b"\x1f\x8b" + b"\0" * (size - 2)

        def __enter__(self):
            return self

        def __exit__(self, *exception):
            pass

    return CutOff


def connection_reset():
    raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")


def test_a_download_cut_off_midway_leaves_no_partial_archive(tmp_path, monkeypatch):
    data_dir = tmp_path / "datasets"
    data_dir.mkdir()
    monkeypatch.setattr(urllib.request, "urlopen", cut_off_midway(connection_reset))
    code, _, err = run_step1(["--data-dir", str(data_dir), "--output", str(tmp_path / "w.pth")])
    assert code == 1
    [error] = [line for line in err.splitlines() if line.startswith("error")]  # torchvision's progress bar aside
    assert error.startswith(f"error: CIFAR-10 is not in {data_dir} and could not be downloaded ("), error
    assert "Connection reset by peer" in error
    assert os.listdir(data_dir) == []  # the folder was there: kept, empty as it was


def test_ctrl_c_during_a_download_leaves_no_partial_archive(tmp_path, monkeypatch):
    """checked() cleans up after any ending, a KeyboardInterrupt too (BaseException): nothing is left of the archive
    or of the folder it created, and the stop ends the run with its own line."""
    data_dir = tmp_path / "datasets"
    monkeypatch.setattr(urllib.request, "urlopen", cut_off_midway(lambda: send_here(signal.SIGINT)))
    code, _, err = run_step1(["--data-dir", str(data_dir), "--output", str(tmp_path / "w.pth")])
    assert code == -signal.SIGINT
    assert err.endswith("\ninterrupted: no weights were saved\n")
    assert os.listdir(tmp_path) == []
