"""data_folder.py: the paths given to --data-dir and --output (path_option: ~ expanded, an empty one refused), and
the folder that torchvision reads CIFAR-10 from or downloads it into (checked): a --data-dir that cannot be right, a
link that leads nowhere, data missing, damaged or unreadable, each in one line that says which; a failed download
removes what it created, and only that."""
import contextlib
import errno
import io
import os
import pathlib
import resource
import shutil
import signal
import stat
import tarfile
import threading
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
    own_checksums,
    run_step1,
    send_here,
    signalled,
    the_nth_call,
    tiny_archive,
    train,
    write_cifar,
)


def folder_contents(folder):
    """Each regular file under folder, with its bytes (a named pipe is not read: that would wait for a writer)."""
    return {os.path.relpath(os.path.join(path, name), folder): pathlib.Path(path, name).read_bytes()
            for path, _, names in os.walk(folder) for name in names if os.path.isfile(os.path.join(path, name))}


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
    assert err.splitlines() == [f"error: {link} is a link that leads nowhere; fix or remove it, or give another "
                                f"--data-dir" if kind != "a loop of links" else
                                f"error: could not follow the link {link} (Too many levels of symbolic links: a link "
                                f"leads back to itself: fix the links), or give another --data-dir"]
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


def test_only_cifar10s_own_files_count_as_the_data(tmp_path, skip_md5_check):
    """An editor's lock file, a dangling link named .#readme.html, is not the data's: good data trains."""
    data_dir = write_cifar(tmp_path / "datasets")
    os.symlink("user@host.1234:1700000000", data_dir / "cifar-10-batches-py" / ".#readme.html")
    lines = train(str(data_dir), tmp_path / "w.pth", "--epochs", "1", "--limit", "10")
    assert lines[-1].startswith("Saved the weights")


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


@pytest.mark.parametrize("meta", ["missing", "damaged"])
def test_batches_meta_missing_or_damaged_beside_sound_batches_gets_a_next_step_that_works(tmp_path, monkeypatch,
                                                                                        offline, meta):
    """torchvision's download() looks at the six batches only: with those sound, neither running again online nor a
    fresh archive brings batches.meta back. Moving the batches away does."""
    data_dir = write_cifar(tmp_path / "datasets")
    tiny_archive(data_dir / "cifar-10-python.tar.gz", data_dir)
    own_checksums(monkeypatch.setattr, data_dir, archive=data_dir / "cifar-10-python.tar.gz")
    batches = data_dir / "cifar-10-batches-py"
    if meta == "missing":
        (batches / "batches.meta").unlink()
    else:
        (batches / "batches.meta").write_bytes(b"not the label names")
    code, lines, err = run_step1(["--data-dir", str(data_dir), "--output", str(tmp_path / "w.pth")])
    assert code == 1
    assert err.splitlines() == [
        f"error: {batches / 'batches.meta'} is missing or damaged (it does not match its checksum), and torchvision "
        f"gets it again only with a batch that is damaged too. Move cifar-10-batches-py/ away, then run again: "
        f"online, or with a fresh cifar-10-python.tar.gz there."]
    batches.rename(tmp_path / "moved away")
    code, lines, err = run_step1(["--data-dir", str(data_dir), "--output", str(tmp_path / "w.pth"), "--device", "cpu",
                                  "--epochs", "1", "--limit", "10"])
    assert (code, err) == (0, "")  # the archive unpacked again, batches.meta with it: torchvision checked it
    assert lines[-1].startswith("Saved the weights")


def test_data_missing_where_its_folder_cannot_be_made_says_that_it_is_missing(tmp_path, offline):
    """Not "fix the permissions": the data is not there, and could not be downloaded there."""
    parent = tmp_path / "shared"
    parent.mkdir()
    parent.chmod(0o555)
    data_dir = parent / "datasets"
    with as_a_user():
        code, _, err = run_step1(["--data-dir", str(data_dir), "--output", str(tmp_path / "w.pth")])
    assert code == 1
    assert err.splitlines() == [f"error: CIFAR-10 is not in {data_dir} and could not be downloaded ({data_dir}: "
                                f"Permission denied). Put cifar-10-python.tar.gz or its cifar-10-batches-py/ folder "
                                f"there, or give the folder that holds them with --data-dir."]
    assert os.listdir(parent) == []


def test_data_that_does_not_fit_in_memory_is_one_line(tmp_path, skip_md5_check, monkeypatch):
    """`ulimit -v`: torch imports, but torchvision cannot read the data. Made real with a limit on this process's
    memory, set only while torchvision reads the batches."""
    data_dir = write_cifar(tmp_path / "datasets", per_batch=5000)  # 77 MB at once: beyond what malloc keeps
    real_init = cifar.CIFAR10.__init__

    def init_with_little_memory(*args, **kwargs):
        with open("/proc/self/status") as status:
            used = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (used + 8 * 2**20, hard))  # 8 MB more: not enough
        try:
            real_init(*args, **kwargs)
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))

    monkeypatch.setattr(cifar.CIFAR10, "__init__", init_with_little_memory)
    code, lines, err = run_step1(["--data-dir", str(data_dir), "--output", str(tmp_path / "w.pth")])
    assert code == 1
    assert err.splitlines() == [
        "error: not enough memory to read CIFAR-10: torchvision needs about 310 MB at once to read its 60000 images "
        "(184 MB once read), and --limit cannot lower that, as torchvision reads them all. Free some memory, or "
        "raise the limit (ulimit -v)."]


def failing_at_the_second_pickle(monkeypatch, error):
    real = cifar.pickle.load
    second = the_nth_call(2)

    def failing_at_the_second(*args, **kwargs):
        if second():
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(cifar.pickle, "load", failing_at_the_second)


def test_an_error_while_sound_data_is_read_is_shown_whole_not_called_damaged_data(tmp_path, monkeypatch):
    error = RuntimeError("a bug")
    data_dir = write_cifar(tmp_path / "datasets")
    own_checksums(monkeypatch.setattr, data_dir)  # torchvision's own checks pass
    failing_at_the_second_pickle(monkeypatch, error)
    with pytest.raises(RuntimeError) as raised:
        run_step1(["--data-dir", str(data_dir), "--output", str(tmp_path / "w.pth")])
    assert raised.value is error


def test_memory_that_runs_out_as_the_system_says_it_is_the_memory_line(tmp_path, monkeypatch):
    """ENOMEM, as read() can fail: not a file to fix, nor another --data-dir."""
    data_dir = write_cifar(tmp_path / "datasets")
    own_checksums(monkeypatch.setattr, data_dir)
    batch = data_dir / "cifar-10-batches-py" / "data_batch_2"
    failing_at_the_second_pickle(monkeypatch, OSError(errno.ENOMEM, "Cannot allocate memory", str(batch)))
    code, _, err = run_step1(["--data-dir", str(data_dir), "--output", str(tmp_path / "w.pth")])
    assert code == 1
    assert err.startswith("error: not enough memory to read CIFAR-10: ")


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


# The archive unpacked over the batches there: only those that fail their checksums replaced, never through a link


def test_unpacking_over_the_batches_says_which_it_replaced_and_leaves_the_rest_alone(tmp_path, monkeypatch, offline):
    """A batch edited since: it fails its checksum, so torchvision unpacks the archive over the batches. CIFAR-10's
    batches are fixed files: that one is replaced, and a line says so; files of other names stay as they are."""
    data_dir = write_cifar(tmp_path / "datasets")
    tiny_archive(data_dir / "cifar-10-python.tar.gz", data_dir)
    own_checksums(monkeypatch.setattr, data_dir, archive=data_dir / "cifar-10-python.tar.gz")
    batches = data_dir / "cifar-10-batches-py"
    original = (batches / "data_batch_2").read_bytes()
    (batches / "data_batch_2").write_bytes(original[:-4] + b"mine")
    (batches / "notes.txt").write_text("mine")
    os.symlink("user@host.1234:1700000000", batches / ".#readme.html")  # an editor's lock, leading nowhere
    code, lines, err = run_step1(["--data-dir", str(data_dir), "--output", str(tmp_path / "w.pth"), "--device", "cpu",
                                  "--epochs", "1", "--limit", "10"])
    assert code == 0, err
    assert err.splitlines() == [f"warning: the archive replaced data_batch_2 in {batches}, which held other bytes "
                                f"than CIFAR-10's own"]
    assert (batches / "data_batch_2").read_bytes() == original
    assert (batches / "notes.txt").read_text() == "mine"
    assert os.readlink(batches / ".#readme.html") == "user@host.1234:1700000000"


def test_unpacking_never_writes_through_a_link_to_outside_the_data_folder(tmp_path, monkeypatch, offline):
    data_dir = write_cifar(tmp_path / "datasets")
    tiny_archive(data_dir / "cifar-10-python.tar.gz", data_dir)
    own_checksums(monkeypatch.setattr, data_dir, archive=data_dir / "cifar-10-python.tar.gz")
    batch = data_dir / "cifar-10-batches-py" / "data_batch_4"
    outside = tmp_path / "my data"
    outside.write_bytes(b"my own data, not CIFAR-10's")  # fails the checksum: the archive is unpacked
    batch.unlink()
    os.symlink(outside, batch)
    code, lines, err = run_step1(["--data-dir", str(data_dir), "--output", str(tmp_path / "w.pth")])
    assert code == 1
    assert err.splitlines() == [f"error: {batch} is a link to {outside}, outside {data_dir}: torchvision would write "
                                f"the archive's data_batch_4 through it. Remove the link, or give another --data-dir."]
    assert outside.read_bytes() == b"my own data, not CIFAR-10's"
    assert os.readlink(batch) == str(outside)


def test_unpacking_names_every_file_of_cifar10s_that_it_wrote_over(tmp_path, monkeypatch, offline):
    """readme.html is part of the archive, with no checksum in torchvision's lists: edited, it is named too."""
    data_dir = write_cifar(tmp_path / "datasets")
    batches = data_dir / "cifar-10-batches-py"
    (batches / "readme.html").write_text("<p>CIFAR-10</p>")
    tiny_archive(data_dir / "cifar-10-python.tar.gz", data_dir)
    own_checksums(monkeypatch.setattr, data_dir, archive=data_dir / "cifar-10-python.tar.gz")
    (batches / "readme.html").write_text("<p>CIFAR-10, with my notes</p>")
    (batches / "data_batch_2").write_bytes((batches / "data_batch_2").read_bytes()[:-4] + b"mine")
    code, lines, err = run_step1(["--data-dir", str(data_dir), "--output", str(tmp_path / "w.pth"), "--device", "cpu",
                                  "--epochs", "1", "--limit", "10"])
    assert code == 0, err
    assert err.splitlines() == [f"warning: the archive replaced data_batch_2, readme.html in {batches}, which held "
                                f"other bytes than CIFAR-10's own"]
    assert (batches / "readme.html").read_text() == "<p>CIFAR-10</p>"


@pytest.mark.parametrize("ending", ["a full disk", "Ctrl-C"])
def test_unpacking_that_fails_midway_still_names_what_it_wrote_over(tmp_path, monkeypatch, offline, ending):
    data_dir = tmp_path / "datasets"
    batches = damaged_beside_an_archive(data_dir, monkeypatch)
    (batches / "data_batch_2").write_bytes(b"my own edited batch")
    real = tarfile.copyfileobj
    third = the_nth_call(3)

    def then_the_ending(*args, **kwargs):  # the archive's files in order: batches.meta, data_batch_1, data_batch_2...
        real(*args, **kwargs)
        if third():
            if ending == "Ctrl-C":
                send_here(signal.SIGINT)
            else:
                raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tarfile, "copyfileobj", then_the_ending)
    code, lines, err = run_step1(["--data-dir", str(data_dir), "--output", str(tmp_path / "w.pth")])
    assert code == (-signal.SIGINT if ending == "Ctrl-C" else 1)
    assert err.splitlines()[0] == (f"warning: the archive replaced data_batch_1, data_batch_2 in {batches}, which held "
                                   f"other bytes than CIFAR-10's own")


def damaged_beside_an_archive(data_dir, monkeypatch, per_batch=24):
    """The tiny data set in data_dir, its archive beside it with CIFAR-10's checksums, and data_batch_1 damaged since:
    torchvision unpacks the archive over the batches. Returns the batches' folder."""
    write_cifar(data_dir, per_batch=per_batch)
    batches = data_dir / "cifar-10-batches-py"
    tiny_archive(data_dir / "cifar-10-python.tar.gz", data_dir)
    own_checksums(monkeypatch.setattr, data_dir, archive=data_dir / "cifar-10-python.tar.gz")
    (batches / "data_batch_1").write_bytes(b"damaged")
    return batches


def test_unpacking_never_writes_into_a_hard_link(tmp_path, monkeypatch, offline):
    """A batch that is another name of a file outside the data folder: the archive would write that file."""
    data_dir = tmp_path / "datasets"
    batch = damaged_beside_an_archive(data_dir, monkeypatch) / "data_batch_4"
    outside = tmp_path / "my data"
    outside.write_bytes(b"my own data, not CIFAR-10's")
    batch.unlink()
    os.link(outside, batch)
    code, lines, err = run_step1(["--data-dir", str(data_dir), "--output", str(tmp_path / "w.pth")])
    assert code == 1
    assert err.splitlines() == [f"error: {batch} is a hard link, one of 2 names of the same file: torchvision would "
                                f"write the archive's data_batch_4 into it, under every name. Remove this name (the "
                                f"others keep the file), or give another --data-dir."]
    assert outside.read_bytes() == b"my own data, not CIFAR-10's"
    assert os.path.samefile(batch, outside)


def test_unpacking_never_writes_through_a_link_to_another_file_in_the_data_folder(tmp_path, monkeypatch, offline):
    data_dir = tmp_path / "datasets"
    batch = damaged_beside_an_archive(data_dir, monkeypatch) / "data_batch_3"
    (data_dir / "notes.txt").write_text("mine")
    batch.unlink()
    os.symlink("../notes.txt", batch)
    code, lines, err = run_step1(["--data-dir", str(data_dir), "--output", str(tmp_path / "w.pth")])
    assert code == 1
    assert err.splitlines() == [f"error: {batch} is a link to {data_dir / 'notes.txt'}, not CIFAR-10's own "
                                f"data_batch_3: torchvision would write the archive's data_batch_3 through it. Remove "
                                f"the link, or give another --data-dir."]
    assert (data_dir / "notes.txt").read_text() == "mine"
    assert os.readlink(batch) == "../notes.txt"


@pytest.mark.parametrize("where", ["outside the data folder", "in the data folder"])
def test_unpacking_never_writes_through_a_linked_batches_folder_and_names_that_link(tmp_path, monkeypatch, offline,
                                                                                    where):
    data_dir = tmp_path / "datasets"
    if where == "outside the data folder":  # a shared copy
        mine = damaged_beside_an_archive(tmp_path / "shared", monkeypatch)
        data_dir.mkdir()
        os.replace(tmp_path / "shared" / "cifar-10-python.tar.gz", data_dir / "cifar-10-python.tar.gz")
        os.symlink(mine, data_dir / "cifar-10-batches-py")
        why = f"outside {data_dir}"
    else:  # a copy of the user's, edited
        mine = data_dir / "my edited cifar"
        os.rename(damaged_beside_an_archive(data_dir, monkeypatch), mine)
        os.symlink("my edited cifar", data_dir / "cifar-10-batches-py")
        why = "not CIFAR-10's own cifar-10-batches-py"
    before = folder_contents(mine)
    code, lines, err = run_step1(["--data-dir", str(data_dir), "--output", str(tmp_path / "w.pth")])
    assert code == 1
    assert err.splitlines() == [f"error: {data_dir / 'cifar-10-batches-py'} is a link to {mine}, {why}: torchvision "
                                f"would write the archive's files through it. Remove the link, or give another "
                                f"--data-dir."]
    assert folder_contents(mine) == before


@pytest.mark.parametrize("link", ["os.symlink", "os.link"])
def test_a_whole_archive_linked_into_the_data_folder_is_unpacked(tmp_path, monkeypatch, offline, link):
    """torchvision only reads a whole archive: a link to the one in your downloads is no reason to refuse."""
    downloads = tmp_path / "downloads"
    write_cifar(downloads)
    tiny_archive(downloads / "cifar-10-python.tar.gz", downloads)
    own_checksums(monkeypatch.setattr, downloads, archive=downloads / "cifar-10-python.tar.gz")
    data_dir = tmp_path / "datasets"
    data_dir.mkdir()
    getattr(os, link.split(".")[1])(downloads / "cifar-10-python.tar.gz", data_dir / "cifar-10-python.tar.gz")
    archive = (downloads / "cifar-10-python.tar.gz").read_bytes()
    code, lines, err = run_step1(["--data-dir", str(data_dir), "--output", str(tmp_path / "w.pth"), "--device", "cpu",
                                  "--epochs", "1", "--limit", "10"])
    assert (code, err) == (0, "")
    assert (downloads / "cifar-10-python.tar.gz").read_bytes() == archive
    assert sorted(os.listdir(data_dir / "cifar-10-batches-py")) == sorted(os.listdir(downloads / "cifar-10-batches-py"))


@pytest.mark.parametrize("shared", ["a link to a shared folder", "hard links to a shared copy"])
def test_sound_data_shared_through_links_is_read_as_it_is(tmp_path, monkeypatch, offline, shared):
    """Links are refused only where torchvision would write through them: sound data is only read."""
    source = write_cifar(tmp_path / "shared") / "cifar-10-batches-py"
    own_checksums(monkeypatch.setattr, tmp_path / "shared")
    data_dir = tmp_path / "datasets"
    data_dir.mkdir()
    if shared == "a link to a shared folder":
        os.symlink(source, data_dir / "cifar-10-batches-py")
    else:
        (data_dir / "cifar-10-batches-py").mkdir()
        for name in os.listdir(source):
            os.link(source / name, data_dir / "cifar-10-batches-py" / name)
    before = folder_contents(source)
    code, lines, err = run_step1(["--data-dir", str(data_dir), "--output", str(tmp_path / "w.pth"), "--device", "cpu",
                                  "--epochs", "1", "--limit", "10"])
    assert (code, err) == (0, "")
    assert folder_contents(source) == before


# What is not a file at CIFAR-10's name: refused before anything is opened there (a named pipe would hang the run)


@pytest.mark.parametrize("kind", ["a named pipe", "a folder", "a socket"])
def test_what_is_not_a_file_at_a_batchs_name_is_refused_before_anything_is_written(tmp_path, monkeypatch, offline,
                                                                                   kind):
    data_dir = tmp_path / "datasets"
    batches = damaged_beside_an_archive(data_dir, monkeypatch, per_batch=4)  # a batch fits in a pipe: no hang
    batch = batches / "data_batch_3"
    batch.unlink()
    reader = None
    if kind == "a named pipe":
        os.mkfifo(batch)
        reader = os.open(batch, os.O_RDONLY | os.O_NONBLOCK)  # a write into it then fails the test, never hangs
    elif kind == "a folder":
        batch.mkdir()
        (batch / "mine.txt").write_text("mine")
    else:
        os.mknod(batch, stat.S_IFSOCK | 0o600)  # as a program that listens there makes it (a user may, as root)
    before = folder_contents(data_dir)
    try:
        code, lines, err = run_step1(["--data-dir", str(data_dir), "--output", str(tmp_path / "w.pth")])
        written = reader is not None and os.read(reader, 1 << 16)
    finally:
        if reader is not None:
            os.close(reader)
    assert code == 1
    assert err.splitlines() == [f"error: {batch} is {kind}, not a file: torchvision would write the archive's "
                                f"data_batch_3 into it. Move it away, or give another --data-dir."]
    assert not written
    assert folder_contents(data_dir) == before
    assert stat.S_IFMT(os.lstat(batch).st_mode) == {"a named pipe": stat.S_IFIFO, "a folder": stat.S_IFDIR,
                                                    "a socket": stat.S_IFSOCK}[kind]


@pytest.mark.parametrize("name", ["cifar-10-batches-py/data_batch_3", "cifar-10-python.tar.gz"])
def test_a_named_pipe_at_cifar10s_name_offline_is_named_not_a_fresh_archive(tmp_path, offline, name):
    """Without an archive, and offline: not "put a fresh archive there", which would then hang on the pipe."""
    data_dir = write_cifar(tmp_path / "datasets")  # not CIFAR-10's checksums: torchvision tries to download it
    pipe = data_dir / name
    with contextlib.suppress(FileNotFoundError):
        pipe.unlink()
    os.mkfifo(pipe)
    code, lines, err = run_step1(["--data-dir", str(data_dir), "--output", str(tmp_path / "w.pth")])
    assert code == 1
    what = "the download" if name.endswith(".gz") else "the archive's data_batch_3"
    assert err.splitlines() == [f"error: {pipe} is a named pipe, not a file: torchvision would write {what} into it. "
                                f"Move it away, or give another --data-dir."]


# A failed download removes what it wrote (Writes), where the system put it


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


def serving(data):
    """urlopen's stand-in: a response that sends data, as CIFAR-10's server sends its archive."""
    class Response(io.BytesIO):
        length = len(data)
        url = None

        def __init__(self, *args, **kwargs):
            super().__init__(data)

    return Response


def test_a_full_disk_while_unpacking_a_download_says_so_and_keeps_the_archive(tmp_path, small_disk, monkeypatch):
    source = write_cifar(tmp_path / "source")
    packed = tiny_archive(tmp_path / "cifar-10-python.tar.gz", source)
    own_checksums(monkeypatch.setattr, source, archive=tmp_path / "cifar-10-python.tar.gz")
    monkeypatch.setattr(urllib.request, "urlopen", serving(packed))
    disk = small_disk(len(packed) // 1024 + 100)  # room for the archive and 100 KiB, not for the 500 KB unpacked
    code, lines, err = run_step1(["--data-dir", str(disk), "--output", str(tmp_path / "w.pth")])
    assert code == 1
    [error] = [line for line in err.splitlines() if line.startswith("error")]  # torchvision's progress bar aside
    assert error.startswith("error: could not read or write ")
    assert error.endswith(" (No space left on device: free some space), or give another --data-dir")
    assert os.listdir(disk) == ["cifar-10-python.tar.gz"]  # a whole archive is kept, the half-unpacked folder not
    assert (disk / "cifar-10-python.tar.gz").read_bytes() == packed


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


def meanwhile(action):
    """Do action as another program would, beside this run: in a thread of its own, which step1.py does not watch."""
    thread = threading.Thread(target=action)
    thread.start()
    thread.join()


def test_a_failed_download_keeps_what_others_put_in_the_folder_it_created(tmp_path, monkeypatch):
    data_dir = tmp_path / "datasets"

    def another_program_writes_then_the_network_fails(*args, **kwargs):
        meanwhile(lambda: (data_dir / "notes.txt").write_text("mine"))  # torchvision has created the folder by now
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setattr(urllib.request, "urlopen", another_program_writes_then_the_network_fails)
    code, _, err = run_step1(["--data-dir", str(data_dir), "--output", str(tmp_path / "w.pth")])
    assert code == 1
    assert "could not be downloaded" in err
    assert os.listdir(data_dir) == ["notes.txt"]
    assert (data_dir / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("saved", ["as a browser saves it", "in place"])
def test_a_stop_during_a_stalled_download_keeps_what_you_put_there_meanwhile(tmp_path, monkeypatch, saved):
    """The README's advice for a download that hangs: fetch the archive with a browser, put it (or the folder it
    unpacks to) in the data folder. A Ctrl-C then removes only what this run wrote: the partial archive it began,
    which a browser's save has replaced by a new file of that name. curl -o, wget -O and cp write into the run's own
    file instead (the same inode): a whole archive, one that passes torchvision's check, is kept whoever wrote it."""
    data_dir = tmp_path / "datasets"
    source = write_cifar(tmp_path / "browser")
    packed = tiny_archive(source / "cifar-10-python.tar.gz", source)
    own_checksums(monkeypatch.setattr, source, archive=source / "cifar-10-python.tar.gz")

    def the_user_puts_the_data_there():
        if saved == "in place":
            (data_dir / "cifar-10-python.tar.gz").write_bytes(packed)  # as curl -o, wget -O or cp write it
        else:
            partial = data_dir / "cifar-10-python.tar.gz.crdownload"
            partial.write_bytes(packed)
            os.replace(partial, data_dir / "cifar-10-python.tar.gz")  # as a browser saves a download
        shutil.copytree(source / "cifar-10-batches-py", data_dir / "cifar-10-batches-py")

    def the_user_puts_the_data_there_then_ctrl_c():  # as the download hangs
        meanwhile(the_user_puts_the_data_there)
        send_here(signal.SIGINT)

    monkeypatch.setattr(urllib.request, "urlopen", cut_off_midway(the_user_puts_the_data_there_then_ctrl_c))
    code, _, err = run_step1(["--data-dir", str(data_dir), "--output", str(tmp_path / "w.pth")])
    assert code == -signal.SIGINT
    assert err.endswith("\ninterrupted: no weights were saved\n")  # after torchvision's progress bar
    assert sorted(os.listdir(data_dir)) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    assert (data_dir / "cifar-10-python.tar.gz").read_bytes() == packed
    assert folder_contents(data_dir / "cifar-10-batches-py") == folder_contents(source / "cifar-10-batches-py")


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


def test_ctrl_c_during_the_clean_up_lets_it_finish_then_stops(tmp_path, monkeypatch, offline):
    """A stop that comes while a failed download's clean-up removes what the run created waits for the clean-up to
    end: then it stops the run, with its usual line."""
    data_dir = tmp_path / "new" / "datasets"
    signalled(monkeypatch, "os.rmdir", signal.SIGINT, before=True, only_if=the_nth_call(1))
    code, _, err = run_step1(["--data-dir", str(data_dir), "--output", str(tmp_path / "w.pth")])
    assert code == -signal.SIGINT
    assert err.endswith("\ninterrupted: no weights were saved\n")
    assert os.listdir(tmp_path) == []  # nor new/datasets, nor new/
