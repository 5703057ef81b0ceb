"""safe_saving.py: the check of --output before training (check_output: what kind of file is there, what an
earlier file holds, whether it may be replaced, room for the weights), the save (write_then_rename: the new file on
the disk before it takes the name, the rule checked again, mode and owner kept), where the weights go when the save
fails (save_weights, places_to_keep_them), and KeepTrainedWeights, which saves them first when an error ends a run
after its last update.

Made real where root can (as CI runs): a small tmpfs for a full disk, chown, chattr, a bind mount, a file size limit,
a vanishing folder, and root's powers set aside (helpers.as_a_user) for what permissions refuse a user. Simulated only
where that cannot be done, as on a machine where the tests do not run as root."""
import contextlib
import errno
import os
import resource
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import threading
import uuid
import warnings
import zipfile

import pytest
import torch
import torchvision

import safe_saving
import step1
from failures import Failure
from helpers import (
    AS_ROOT,
    ONE_EPOCH,
    ROOT,
    an_error_in_a_run,
    as_a_user,
    earlier_weights,
    kept_instead,
    listing,
    refused_output,
    run_on_the_tiny_data,
    run_step1,
    run_until_the_save,
    same_weights,
    send_here,
    signalled,
    train,
    without_capabilities,
)
from model import MyNet


def some_weights():
    """MyNet's state_dict, with every value changed from a new MyNet's: floats, and batch norm's int64 counters."""
    torch.manual_seed(0)
    weights = MyNet().state_dict()
    return {name: tensor + torch.ones_like(tensor) for name, tensor in weights.items()}


@contextlib.contextmanager
def chattr(flag, path, monkeypatch):
    """chattr +flag on path (i: immutable, a: append-only), taken off again after. A user cannot chattr: what the
    system then says is simulated (lsattr's flag read, a file's opening for writing refused)."""
    if not AS_ROOT:
        pretend_chattr(flag, path, monkeypatch)
        yield
        return
    subprocess.run(["chattr", f"+{flag}", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", f"-{flag}", str(path)], check=True)


def pretend_chattr(flag, path, monkeypatch):
    inode = path.stat().st_ino
    real_unchangeable = safe_saving.unchangeable
    real_open = os.open

    def unchangeable(descriptor, close=False):
        if os.fstat(descriptor).st_ino != inode:
            return real_unchangeable(descriptor, close)
        if close:
            os.close(descriptor)
        return {"i": "immutable (lsattr shows i)", "a": "append-only (lsattr shows a)"}[flag]

    def refusing_open(name, flags, *args, dir_fd=None, **kwargs):
        if flags & os.O_RDWR and os.stat(name, dir_fd=dir_fd).st_ino == inode:
            raise PermissionError(errno.EPERM, "Operation not permitted", name)
        return real_open(name, flags, *args, dir_fd=dir_fd, **kwargs)

    monkeypatch.setattr(safe_saving, "unchangeable", unchangeable)
    monkeypatch.setattr(os, "open", refusing_open)
    monkeypatch.setattr(os, "supports_dir_fd", {refusing_open, *os.supports_dir_fd})  # as os.open


# Before training: what --output may be (check_output)


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
    too_long_for_its_checkpoint = tmp_path / ("w" * 241 + ".pth")  # 245, and 11 more for .checkpoint
    code, lines, err = run_on_the_tiny_data(cifar_dir, too_long_for_its_checkpoint)
    assert (code, lines) == (1, [])
    assert err == (f"error: the checkpoint of --output: {too_long_for_its_checkpoint}.checkpoint cannot be written "
                   f"(File name too long: use a shorter name); choose another path\n")
    longest = tmp_path / ("w" * 240 + ".pth")  # 244, and 255 with .checkpoint: too long for a temporary name
    train(cifar_dir, longest, *ONE_EPOCH)
    assert list(torch.load(longest, weights_only=True)) == list(MyNet().state_dict())
    assert sorted(os.listdir(tmp_path)) == [longest.name, f"{longest.name}.checkpoint"]


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


@pytest.mark.parametrize("kind, holds", [
    ("another network's weights", "the weights of another network, not MyNet's"),
    ("a large network's weights", "47 MB, far more than MyNet's weights"),  # refused unread: it could be gigabytes
    ("a dict of data tensors", "the weights of another network, not MyNet's"),
    ("MyNet's weights with a layer missing", "the weights of another network, not MyNet's"),
    ("MyNet's weights saved from nn.DataParallel", "MyNet's weights saved from nn.DataParallel, each name starting "
                                                   "with module. (the README's Troubleshooting strips it)"),
    ("MyNet's weights and another tensor", "MyNet's weights and more ('temperature')"),
    ("MyNet's weights, then notes", "MyNet's weights and 15 bytes of something else"),
    ("MyNet's weights in the format before PyTorch 1.6, then notes", "MyNet's weights and 15 bytes of something else"),
    ("two files of MyNet's weights joined", "MyNet's weights and {one file} bytes of something else"),
])
def test_only_mynets_weights_are_replaced(cifar_dir, tmp_path, kind, holds):
    """Nothing more, nothing less: the file holds what MyNet().load_state_dict takes, and ends where its format ends
    (torch.load ignores what comes after a zip's end record)."""
    output = tmp_path / "w.pth"
    if kind == "MyNet's weights saved from nn.DataParallel":
        torch.save(torch.nn.DataParallel(MyNet()).state_dict(), output)
    elif kind == "MyNet's weights and another tensor":
        torch.save({**MyNet().state_dict(), "temperature": torch.tensor(1.5)}, output)
    elif kind == "two files of MyNet's weights joined":  # cat a.pth b.pth > w.pth
        torch.save(MyNet().state_dict(), output)
        holds = holds.replace("{one file}", str(output.stat().st_size))
        output.write_bytes(output.read_bytes() * 2)
    elif kind.endswith("then notes"):
        torch.save(MyNet().state_dict(), output, _use_new_zipfile_serialization="before" not in kind)
        with open(output, "a") as file:
            file.write("my notes, mine\n")
    elif kind == "another network's weights":
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


@pytest.mark.parametrize("format", ["zip (PyTorch 1.6 and later)", "legacy (before PyTorch 1.6)"])
def test_earlier_weights_in_either_format_are_replaced(cifar_dir, tmp_path, format):
    output = tmp_path / "my_network.pth"
    torch.save(MyNet().state_dict(), output, _use_new_zipfile_serialization=format.startswith("zip"))
    earlier = output.read_bytes()
    train(cifar_dir, output, *ONE_EPOCH)
    assert output.read_bytes() != earlier
    assert list(torch.load(output, weights_only=True)) == list(MyNet().state_dict())
    assert sorted(os.listdir(tmp_path)) == ["my_network.pth", "my_network.pth.checkpoint"]


OTHER = 65534 if AS_ROOT else os.getuid() + 1  # nobody, or a user whose file a user's process can only pretend to see


@pytest.mark.parametrize("case, why", [
    ("write-protected", "is write-protected; choose another path, or make it writable (chmod u+w)"),
    ("immutable", "is immutable (lsattr shows i); choose another path"),
    ("append-only", "is append-only (lsattr shows a); choose another path"),
    ("another user's, in a shared folder", f"is another user's (user {OTHER}), and a new file cannot keep that "
                                           f"(Operation not permitted); choose another path"),
    ("writable, in a group that is not yours", f"is in a group that you are not in (group {OTHER}), and a new file "
                                               f"cannot keep that (Operation not permitted); choose another path"),
    ("write-only (0200)", "cannot be read (Permission denied: fix the permissions), so what it holds cannot be "
                          "checked; choose another path"),
])
def test_an_earlier_file_that_cannot_be_replaced_is_refused_and_kept(cifar_dir, tmp_path, case, why, monkeypatch):
    folder = tmp_path / "runs"
    folder.mkdir()
    output = folder / "my_network.pth"
    earlier_weights(output)
    as_user = contextlib.nullcontext()
    with contextlib.ExitStack() as stack:
        if case == "write-protected":
            output.chmod(0o444)
        elif case in ("immutable", "append-only"):
            stack.enter_context(chattr(case[0], output, monkeypatch))
        elif case == "write-only (0200)":
            output.chmod(0o200)
            as_user = as_a_user()
        else:
            if case.startswith("another user's"):
                folder.chmod(0o1777)  # as /tmp: anyone may add files, only a file's owner may replace it
                output.chmod(0o666)  # writable by all, yet not to be replaced by others there
            if AS_ROOT:
                os.chown(output, *((OTHER, OTHER) if case.startswith("another user's") else (0, OTHER)))  # for real
                as_user = as_a_user()
            else:  # a user cannot give a file away: it looks like another user's, and taking it on fails as it would
                real_stat = os.stat
                field = 4 if case.startswith("another user's") else 5  # st_uid, st_gid

                def seen(path, *args, **kwargs):
                    status = real_stat(path, *args, **kwargs)
                    if path != output.name or kwargs.get("dir_fd") is None:
                        return status
                    return os.stat_result((*status[:field], OTHER, *status[field + 1:]))

                monkeypatch.setattr(os, "stat", seen)
        before = listing(folder)
        with as_user:
            error = refused_output(cifar_dir, output)
        assert error.endswith(f"argument --output: {output} {why}")
        assert listing(folder) == before


@pytest.mark.parametrize("flag, named", [("a", "append-only (lsattr shows a)"), ("i", "immutable (lsattr shows i)")])
def test_a_folder_that_the_system_keeps_from_changing_is_refused_before_training(cifar_dir, tmp_path, monkeypatch,
                                                                                 flag, named):
    """Even root cannot rename over a file in an append-only folder, nor remove the new file that the save leaves
    there: found by the check, from lsattr's flags, not at the save."""
    folder = tmp_path / "runs"
    folder.mkdir()
    output = folder / "my_network.pth"
    earlier = earlier_weights(output)
    with chattr(flag, folder, monkeypatch):
        error = refused_output(cifar_dir, output)
    assert error.endswith(f"argument --output: {output} cannot be written: its folder is {named}; choose another path")
    assert os.listdir(folder) == ["my_network.pth"]
    assert output.read_bytes() == earlier


def test_an_output_replaced_between_its_two_looks_is_refused(tmp_path, monkeypatch):
    """The check looks at the file (lstat), then opens it: if another file took its name meanwhile, what was looked
    at is not what was read, and its permission bits and owner would not be the ones kept. Run again, then."""
    output = tmp_path / "my_network.pth"
    earlier_weights(output)
    real_stat = os.stat
    looks = []

    def replaced_right_after_the_first_look(path, *args, **kwargs):
        status = real_stat(path, *args, **kwargs)
        if path == output.name and not looks:  # the check's lstat, by name in the folder
            looks.append(status)
            earlier_weights(tmp_path / "another run's.pth")
            os.replace(tmp_path / "another run's.pth", output)
        return status

    monkeypatch.setattr(safe_saving.os, "stat", replaced_right_after_the_first_look)
    with pytest.raises(Failure) as failure:
        safe_saving.check_output(str(output))
    assert looks
    assert str(failure.value) == f"{output} changed while it was checked; run again"
    assert os.listdir(tmp_path) == ["my_network.pth"]


# Before training: room for the weights, found by a nameless file of their size


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


def test_a_disk_that_says_it_is_full_only_at_fsync_is_refused_before_training(cifar_dir, tmp_path, monkeypatch):
    """NFS, or a disk over quota with delayed allocation, takes the writes and fails the fsync: simulated here, as the
    check's probe file must find it then, not the save after the training."""
    def full_at_fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safe_saving.os, "fsync", full_at_fsync)
    output = tmp_path / "my_network.pth"
    code, lines, err = run_step1(["--data-dir", cifar_dir, "--output", str(output), "--device", "cpu"])
    assert code == 2
    assert lines == []
    assert err.splitlines()[-1].endswith(f"argument --output: {output} cannot be written (No space left on device: "
                                         f"free some space); choose another path")
    assert os.listdir(tmp_path) == []


# The save: a new file beside --output that takes its name when complete (write_then_rename)


def test_the_file_is_synced_whole_before_the_rename_and_the_folder_after_it(tmp_path, monkeypatch):
    """write_then_rename: the file written and synced (without it, a power cut soon after the rename can leave an
    empty file under the name), renamed, then its folder synced (sync_the_folder), so that the new name too is on
    the disk."""
    events = []
    real_fsync = os.fsync
    real_replace = os.replace

    def recording_fsync(fd):
        status = os.fstat(fd)
        events.append(("fsync", status.st_ino, status.st_size if stat.S_ISREG(status.st_mode) else "a folder"))
        return real_fsync(fd)

    def recording_replace(source, target, **dir_fds):
        events.append(("replace", os.stat(source, dir_fd=dir_fds.get("src_dir_fd")).st_ino))
        return real_replace(source, target, **dir_fds)

    monkeypatch.setattr(safe_saving.os, "fsync", recording_fsync)  # safe_saving.os is os: undone after the test
    monkeypatch.setattr(safe_saving.os, "replace", recording_replace)
    output = tmp_path / "my_network.pth"
    safe_saving.save_weights(some_weights(), str(output))
    saved = os.stat(output)
    assert events == [("fsync", saved.st_ino, saved.st_size), ("replace", saved.st_ino),
                      ("fsync", os.stat(tmp_path).st_ino, "a folder")]


def test_a_file_of_yours_with_the_temporary_files_name_is_left_alone(tmp_path, monkeypatch):
    """write_then_rename creates its temporary file only where no file has that name (O_EXCL): a file of yours that
    has it is neither overwritten nor renamed, and the save fails with the system's reason."""
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID("abcdef12" + 24 * "0"))
    yours = tmp_path / "step1-abcdef12.tmp"
    yours.write_text("yours")
    with pytest.raises(FileExistsError):
        safe_saving.write_then_rename(safe_saving.as_bytes(some_weights()), str(tmp_path / "my_network.pth"))
    assert os.listdir(tmp_path) == ["step1-abcdef12.tmp"]
    assert yours.read_text() == "yours"

class OnTheGpu(torch.Tensor):
    """A tensor that says it lives on CUDA, as a GPU run's weights do; its values are on the CPU, and .cpu() is
    all it can do. torch.save would record it as CUDA's, and torch.load refuses it with weights_only."""

    @staticmethod
    def __new__(cls, values):
        return torch.Tensor._make_wrapper_subclass(cls, values.shape, dtype=values.dtype, device="cuda")

    def __init__(self, values):
        self.values = values

    @classmethod
    def __torch_dispatch__(cls, function, types, args=(), kwargs=None):
        if function is torch.ops.aten._to_copy.default and (kwargs or {}).get("device") == torch.device("cpu"):
            return args[0].values.clone()
        raise NotImplementedError(f"{function} on a tensor that is on the GPU")


def test_weights_on_a_gpu_are_saved_as_cpu_tensors_that_load_without_map_location(tmp_path):
    weights = some_weights()
    on_the_gpu = {name: OnTheGpu(tensor) for name, tensor in weights.items()}
    assert all(tensor.device.type == "cuda" for tensor in on_the_gpu.values())
    output = tmp_path / "my_network.pth"
    safe_saving.save_weights(on_the_gpu, str(output))
    loaded = torch.load(output, weights_only=True)  # no map_location: each tensor where it was saved from
    assert list(loaded) == list(weights)
    for name, tensor in weights.items():
        assert type(loaded[name]) is torch.Tensor, name
        assert loaded[name].device == torch.device("cpu"), name
        assert loaded[name].dtype == tensor.dtype, name
        assert torch.equal(loaded[name], tensor), name


@pytest.mark.gpu
def test_weights_trained_on_cuda_load_on_the_cpu_without_map_location(tmp_path):
    weights = {name: tensor.cuda() for name, tensor in some_weights().items()}
    output = tmp_path / "my_network.pth"
    safe_saving.save_weights(weights, str(output))
    loaded = torch.load(output, weights_only=True)
    assert list(loaded) == list(weights)
    for name, tensor in weights.items():
        assert loaded[name].device == torch.device("cpu"), name
        assert torch.equal(loaded[name], tensor.cpu()), name


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
    assert sorted(os.listdir(folder)) == ["w.pth", "w.pth.checkpoint"]
    assert list(torch.load(folder / "w.pth", weights_only=True)) == list(MyNet().state_dict())


def test_files_beside_the_output_are_left_alone(cifar_dir, tmp_path):
    beside = {"my_network.pth.tmp": b"a run of mine", "step1-0123abcd.tmp": b"notes", "results.tmp": b"results"}
    for name, content in beside.items():
        (tmp_path / name).write_bytes(content)
    train(cifar_dir, tmp_path / "my_network.pth", *ONE_EPOCH)
    assert sorted(os.listdir(tmp_path)) == sorted([*beside, "my_network.pth", "my_network.pth.checkpoint"])
    assert all((tmp_path / name).read_bytes() == content for name, content in beside.items())


def test_a_new_file_gets_the_usual_permission_bits(cifar_dir, tmp_path):
    umask = os.umask(0o027)
    try:
        train(cifar_dir, tmp_path / "my_network.pth", *ONE_EPOCH)
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "my_network.pth").st_mode) == 0o640  # 0o666 less the umask


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o664])
def test_a_replaced_file_keeps_its_permission_bits(cifar_dir, tmp_path, mode):
    output = tmp_path / "my_network.pth"
    earlier = earlier_weights(output)
    output.chmod(mode)
    train(cifar_dir, output, *ONE_EPOCH)
    assert stat.S_IMODE(os.stat(output).st_mode) == mode
    assert output.read_bytes() != earlier
    assert list(torch.load(output, weights_only=True)) == list(MyNet().state_dict())
    assert sorted(os.listdir(tmp_path)) == ["my_network.pth", "my_network.pth.checkpoint"]


@pytest.mark.parametrize("earlier", ["a private file (0600)", "no file"])
def test_the_new_file_is_private_until_it_takes_its_permissions(cifar_dir, tmp_path, monkeypatch, earlier):
    """Made with the usual 0644, the new file beside a private --output could be opened by others before its chmod,
    and read once the weights are in it. The umask is never changed, not even to read it: another thread may make
    files meanwhile."""
    output = tmp_path / "my_network.pth"
    if earlier != "no file":
        earlier_weights(output)
        output.chmod(0o600)
    made = []
    real_open = os.open

    def recording_open(path, flags, *args, **kwargs):
        descriptor = real_open(path, flags, *args, **kwargs)
        if str(path).startswith("step1-") and str(path).endswith(".tmp"):  # the checkpoint's, the weights'
            made.append(stat.S_IMODE(os.fstat(descriptor).st_mode))
        return descriptor

    umasks = []
    real_umask = os.umask
    monkeypatch.setattr(os, "open", recording_open)
    monkeypatch.setattr(os, "supports_dir_fd", {recording_open, *os.supports_dir_fd})  # as os.open
    umask = os.umask(0o022)
    monkeypatch.setattr(os, "umask", lambda mask: umasks.append(mask) or real_umask(mask))
    try:
        train(cifar_dir, output, *ONE_EPOCH)
    finally:
        real_umask(umask)
    assert [oct(mode) for mode in made] == [oct(0o600)] * 2
    assert oct(stat.S_IMODE(output.stat().st_mode)) == oct(0o600 if earlier != "no file" else 0o644)
    assert umasks == []


def access_control_list(*entries):
    """An ACL as Linux keeps it in system.posix_acl_access: version 2, then each entry's tag, permissions and id."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *entry) for entry in entries)


def test_a_replaced_file_keeps_its_acl_and_extended_attributes(cifar_dir, tmp_path):
    output = tmp_path / "my_network.pth"
    earlier_weights(output)
    output.chmod(0o640)
    anyone = 0xFFFFFFFF
    # As `setfacl -m u:nobody:r` leaves it: owner rw, nobody r, group r, mask r, others nothing
    os.setxattr(output, "system.posix_acl_access", access_control_list(
        (0x01, 6, anyone), (0x02, 4, 65534), (0x04, 4, anyone), (0x10, 4, anyone), (0x20, 0, anyone)))
    os.setxattr(output, "user.note", b"the run of Monday")
    before = {name: os.getxattr(output, name) for name in os.listxattr(output)}
    train(cifar_dir, output, *ONE_EPOCH)
    assert {name: os.getxattr(output, name) for name in os.listxattr(output)} == before
    assert oct(stat.S_IMODE(output.stat().st_mode)) == oct(0o640)
    assert list(torch.load(output, weights_only=True)) == list(MyNet().state_dict())


def who_may_read(path):
    """What decides who may read a file: its permission bits, owner and group, and extended attributes (its ACL)."""
    status = os.stat(path)
    return (oct(stat.S_IMODE(status.st_mode)), status.st_uid, status.st_gid,
            {name: os.getxattr(path, name) for name in os.listxattr(path)})


def test_a_new_file_under_a_default_acl_gets_what_any_new_file_gets_there(cifar_dir, tmp_path):
    """Under a folder's default ACL the umask does not apply: a new file takes the default ACL, masked by the mode
    that its open() asks for. The weights and the checkpoint get what `touch` gives there, not the umask's 0644."""
    folder = tmp_path / "shared"
    folder.mkdir()
    anyone = 0xFFFFFFFF
    # As `setfacl -d -m u::rw,g::---,o::---,u:nobody:rw` leaves it: owner rw, nobody rw, group nothing, mask rw,
    # others nothing
    os.setxattr(folder, "system.posix_acl_default", access_control_list(
        (0x01, 6, anyone), (0x02, 6, 65534), (0x04, 0, anyone), (0x10, 6, anyone), (0x20, 0, anyone)))
    train(cifar_dir, folder / "w.pth", *ONE_EPOCH)
    (folder / "touched").touch()  # open() with 0666, as touch
    usual = who_may_read(folder / "touched")
    assert usual[0] == oct(0o660) and "system.posix_acl_access" in usual[3]
    assert {name: who_may_read(folder / name) for name in ("w.pth", "w.pth.checkpoint")} == {
        "w.pth": usual, "w.pth.checkpoint": usual}
    assert sorted(os.listdir(folder)) == ["touched", "w.pth", "w.pth.checkpoint"]


def test_the_empty_file_that_shows_what_a_new_file_gets_is_removed_even_on_an_error(tmp_path, monkeypatch):
    def failing(descriptor):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(safe_saving, "extended_attributes", failing)  # as the empty file's are read
    with pytest.raises(OSError, match="Input/output error"):
        safe_saving.write_then_rename(safe_saving.as_bytes(some_weights()), str(tmp_path / "my_network.pth"))
    assert os.listdir(tmp_path) == []


def test_a_stop_as_the_empty_file_is_made_waits_until_it_is_removed(cifar_dir, tmp_path, monkeypatch):
    real = os.open

    def open_then_ctrl_c(path, *args, **kwargs):
        descriptor = real(path, *args, **kwargs)
        if str(path).endswith(".new"):
            send_here(signal.SIGINT)
        return descriptor

    monkeypatch.setattr(os, "open", open_then_ctrl_c)
    code, _, err = run_on_the_tiny_data(cifar_dir, tmp_path / "w.pth", *ONE_EPOCH)
    assert (code, err) == (-signal.SIGINT, "\ninterrupted: no weights were saved\n")
    assert os.listdir(tmp_path) == []


def test_a_replaced_file_without_an_acl_takes_none_from_the_folders_default_acl(cifar_dir, tmp_path):
    """The new file beside it inherits the folder's default ACL; the earlier file had none, so no one else may read
    the new one either."""
    output = tmp_path / "w.pth"
    train(cifar_dir, output, *ONE_EPOCH)  # earlier weights and an earlier checkpoint, neither with an ACL
    earlier = {}
    for path in (output, tmp_path / "w.pth.checkpoint"):
        path.chmod(0o640)
        earlier[path.name] = who_may_read(path)
        assert earlier[path.name][3] == {}
    anyone = 0xFFFFFFFF
    # As `setfacl -d -m u:nobody:rw` leaves it on a folder of mode 0755: owner rwx, nobody rw, group r-x, mask rwx,
    # others r-x
    os.setxattr(tmp_path, "system.posix_acl_default", access_control_list(
        (0x01, 7, anyone), (0x02, 6, 65534), (0x04, 5, anyone), (0x10, 7, anyone), (0x20, 5, anyone)))
    train(cifar_dir, output, *ONE_EPOCH)
    assert {name: who_may_read(tmp_path / name) for name in earlier} == earlier
    assert sorted(os.listdir(tmp_path)) == ["w.pth", "w.pth.checkpoint"]


def test_root_replacing_a_users_file_keeps_its_owner_and_group(cifar_dir, tmp_path):
    output = tmp_path / "my_network.pth"
    earlier_weights(output)
    output.chmod(0o600)
    owner = (65534, 65534) if AS_ROOT else (os.getuid(), os.getgid())  # as sudo, or Docker on a mounted folder
    os.chown(output, *owner)
    train(cifar_dir, output, *ONE_EPOCH)
    saved = os.stat(output)
    assert (saved.st_uid, saved.st_gid, stat.S_IMODE(saved.st_mode)) == (*owner, 0o600)
    assert list(torch.load(output, weights_only=True)) == list(MyNet().state_dict())


def without_fsetid():
    """Within: without CAP_FSETID, as a user's process is, so that a write to a file clears its setuid and setgid
    bits as it does for a user."""
    return without_capabilities(1 << 4)


@pytest.mark.parametrize("mode", [0o4755, 0o6750], ids=oct)
@pytest.mark.parametrize("owner", ["the user's own", "another user's, replaced by root"])
def test_a_replaced_file_keeps_its_setuid_and_setgid_bits(tmp_path, mode, owner):
    """Linux clears these bits on a chown, and on a write by a user: the bits are set after both."""
    output = tmp_path / "my_network.pth"
    earlier_weights(output)
    other = owner.startswith("another") and AS_ROOT
    owner_and_group = (65534, 65534) if other else (os.getuid(), os.getgid())
    os.chown(output, *owner_and_group)
    output.chmod(mode)
    # Root keeps CAP_FSETID to give a file another group's setgid bit; for its own file it writes as a user does.
    with contextlib.nullcontext() if other else without_fsetid():
        safe_saving.save_weights(some_weights(), str(output))
    saved = os.stat(output)
    assert (saved.st_uid, saved.st_gid) == owner_and_group
    assert oct(stat.S_IMODE(saved.st_mode)) == oct(mode)
    assert torch.equal(torch.load(output, weights_only=True)["fc_layers.5.bias"], some_weights()["fc_layers.5.bias"])
    assert os.listdir(tmp_path) == ["my_network.pth"]


def test_a_replaced_file_takes_mode_and_owner_after_the_data_so_setgid_stays(cifar_dir, tmp_path):
    output = tmp_path / "my_network.pth"
    earlier_weights(output)
    group = os.getgid()
    output.chmod(0o2640)  # setgid: Linux clears it on a write or a chown that comes after the chmod
    train(cifar_dir, output, "--epochs", "1", "--limit", "10")
    assert oct(output.stat().st_mode & 0o7777) == oct(0o2640)
    assert output.stat().st_gid == group


def test_the_save_in_a_thread_still_keeps_the_weights(tmp_path):
    """stop_signals.deferred() works only in the main thread: elsewhere the save runs as it is."""
    weights = MyNet().state_dict()
    results = []
    thread = threading.Thread(target=lambda: results.append(safe_saving.save_weights(weights, tmp_path / "w.pth")))
    thread.start()
    thread.join(timeout=60)
    assert results == [None]
    assert same_weights(tmp_path / "w.pth", weights)


# At the save: the rule again, as --output may have changed during training


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
    after = listing(output.parent)
    after.pop("my_network.pth.checkpoint")  # the last epoch's, saved before the weights
    assert after == before  # nothing there replaced, nothing left beside it
    assert target.read_text() == "my notes"
    assert oct(target.stat().st_mode & 0o777) == oct(0o600)  # the link's target untouched, not made world-writable


def test_a_file_saved_at_output_during_the_sync_is_kept(cifar_dir, tmp_path, temporary_folder, monkeypatch,
                                                        one_epoch_weights):
    """As an editor saves (a new file renamed over the old), while the weights are synced to the disk."""
    output = tmp_path / "run" / "my_network.pth"
    output.parent.mkdir()
    earlier_weights(output)
    real_fsync = os.fsync
    real_save_weights = safe_saving.save_weights
    syncs = []

    def fsync_while_the_user_saves(descriptor):
        if saving:
            syncs.append(descriptor)
        if len(syncs) == 1:  # the weights' file, before its rename
            (tmp_path / "notes").write_text("my notes")
            os.replace(tmp_path / "notes", output)
        return real_fsync(descriptor)

    def save_weights(*args):
        nonlocal saving
        saving = True
        return real_save_weights(*args)

    saving = False
    monkeypatch.setattr(os, "fsync", fsync_while_the_user_saves)
    monkeypatch.setattr(safe_saving, "save_weights", save_weights)
    code, _, err = run_until_the_save(cifar_dir, output, lambda: None)
    assert code == 1
    kept_instead(err, output, f"{output} changed while the weights were saved; choose another path", temporary_folder)
    assert output.read_text() == "my notes"


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
        code, _, err = run_on_the_tiny_data(cifar_dir, output, *ONE_EPOCH)
    finally:
        for path in mounted:
            subprocess.run(["umount", str(path)], check=True)
    assert code == 1
    kept = kept_instead(err, output, "Device or resource busy: it is in use, or mounted there: choose another path",
                        temporary_folder)
    assert same_weights(kept, one_epoch_weights)
    assert output.read_bytes() == earlier


# A save that fails: the weights kept in the temporary, the current or the home folder (save_weights)


@pytest.mark.parametrize("cause", ["a full disk", "the folder removed", "the folder made read-only",
                                   "the folder made append-only", "the output made immutable"])
def test_a_save_that_fails_keeps_the_weights_in_the_temporary_folder(cifar_dir, tmp_path, small_disk, cause,
                                                                      temporary_folder, one_epoch_weights, monkeypatch):
    folder = small_disk(2048) if cause == "a full disk" else tmp_path / "run"  # room for the checks, then filled
    folder.mkdir(exist_ok=True)
    output = folder / "my_network.pth"
    earlier = earlier_weights(output)
    reason = {"a full disk": "No space left on device: free some space",
              "the folder removed": "No such file or directory: check that the folder is there",
              "the folder made read-only": "Permission denied: fix the permissions",
              "the folder made append-only": f"{output} cannot be written: its folder is append-only (lsattr shows "
                                             f"a); choose another path",
              "the output made immutable": f"{output} is immutable (lsattr shows i); choose another path"}[cause]
    with contextlib.ExitStack() as stack:
        def before_the_save():
            if cause == "a full disk":
                fill(folder / "filler")
            elif cause == "the folder removed":
                shutil.rmtree(folder)
            elif cause == "the folder made read-only":
                folder.chmod(0o555)
                stack.enter_context(as_a_user())
            else:
                stack.enter_context(chattr("a" if "append" in cause else "i", folder if "folder" in cause else output,
                                           monkeypatch))

        code, lines, err = run_until_the_save(cifar_dir, output, before_the_save)
    assert code == 1
    assert not any(line.startswith("Saved") for line in lines)
    kept = kept_instead(err, output, reason, temporary_folder)
    assert same_weights(kept, one_epoch_weights)  # the trained weights, complete
    assert sorted(os.listdir(temporary_folder)) == [os.path.basename(kept)]  # nothing half-written beside it
    if cause != "the folder removed":
        assert output.read_bytes() == earlier
        # The checkpoint where its own save could go on; nothing else (in an append-only folder, no file that only
        # root could remove: refused before any is made)
        assert sorted(os.listdir(folder)) == sorted(["my_network.pth", *(["filler"] if cause == "a full disk" else []),
                                                     *(["my_network.pth.checkpoint"]
                                                       if cause == "the output made immutable" else [])])


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
    assert err.splitlines() == [f"warning: could not save the checkpoint of epoch 0 to {output}.checkpoint ({missing});"
                                f" training goes on",
                                f"error: could not save the weights to {output} ({missing}), nor to "
                                f"{temporary_folder} ({missing}), nor to {tmp_path / 'home'} ({missing}): "
                                f"they are lost"]
    assert os.listdir(tmp_path) == []


def test_a_save_that_fails_tries_each_temporary_folder_that_python_would(cifar_dir, tmp_path, small_disk, monkeypatch,
                                                                         one_epoch_weights):
    """$TMPDIR nearly full: tempfile.gettempdir() chooses it (its test file of a few bytes fits), the weights do not.
    The next folder that tempfile would take, $TMP, has room."""
    disk = small_disk(512)
    fill(disk / "filler")
    os.truncate(disk / "filler", (disk / "filler").stat().st_size - 64 * 1024)
    for folder in ("tmp", "work", "home", "run"):
        (tmp_path / folder).mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)  # not chosen yet
    monkeypatch.setenv("TMPDIR", str(disk))
    monkeypatch.delenv("TEMP", raising=False)
    monkeypatch.setenv("TMP", str(tmp_path / "tmp"))
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert tempfile.gettempdir() == str(disk)
    output = tmp_path / "run" / "my_network.pth"
    code, _, err = run_until_the_save(cifar_dir, output, lambda: shutil.rmtree(output.parent))
    assert code == 1
    kept = kept_instead(err, output, "No such file or directory: check that the folder is there", tmp_path / "tmp")
    assert same_weights(kept, one_epoch_weights)
    assert os.listdir(disk) == ["filler"]
    assert os.listdir(tmp_path / "work") == os.listdir(tmp_path / "home") == []


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
    missing = "No such file or directory: check that the folder is there"
    assert err.splitlines() == [f"warning: could not save the checkpoint of epoch 0 to {output}.checkpoint ({missing});"
                                f" training goes on",
                                f"error: could not save the weights to {output} ({missing}); they are in "
                                f"{place / kept} instead"]
    assert same_weights(place / kept, one_epoch_weights)
    assert os.listdir(tmp_path / ("home" if place.name == "work" else "work")) == []


# KeepTrainedWeights: an error after the last update (stop signals: test_stop_signals.py)


def test_an_error_after_the_last_update_saves_first(cifar_dir, tmp_path, monkeypatch, one_epoch_weights):
    output = tmp_path / "my_network.pth"
    earlier_weights(output)

    def broken(*args):
        raise RuntimeError("a bug in the accuracy pass")

    monkeypatch.setattr(step1, "accuracy", broken)
    error, shown = an_error_in_a_run(cifar_dir, output, *ONE_EPOCH)
    assert str(error) == "a bug in the accuracy pass"  # a bug shows whole: its traceback
    assert shown == [f"The weights were saved to {output} before this error ended the run."]
    assert same_weights(output, one_epoch_weights)


def test_an_error_that_the_save_meets_again_is_shown_once_with_a_line(cifar_dir, tmp_path, monkeypatch):
    """Memory that runs out after the last update, and again as the weights are saved: one traceback, the first."""
    output = tmp_path / "my_network.pth"

    def out_of_memory(*args, **kwargs):
        raise MemoryError("no memory left")

    monkeypatch.setattr(step1, "accuracy", out_of_memory)
    monkeypatch.setattr(safe_saving, "save_weights", out_of_memory)
    error, shown = an_error_in_a_run(cifar_dir, output, *ONE_EPOCH)
    assert isinstance(error, MemoryError) and error.__context__ is None
    assert shown == ["The weights could not be saved either (MemoryError: no memory left)."]
    assert os.listdir(tmp_path) == []


def test_a_stop_after_the_last_update_whose_save_meets_an_error_ends_as_the_stop_with_its_line(cifar_dir, tmp_path,
                                                                                              monkeypatch):
    output = tmp_path / "my_network.pth"

    def out_of_memory(*args, **kwargs):
        raise MemoryError()

    signalled(monkeypatch, "step1.accuracy", signal.SIGINT, before=True)  # training is over
    monkeypatch.setattr(safe_saving, "save_weights", out_of_memory)
    code, _, err = run_on_the_tiny_data(cifar_dir, output, *ONE_EPOCH)
    assert (code, err) == (-signal.SIGINT, "\ninterrupted: the weights could not be saved (MemoryError)\n")


def test_an_error_once_the_weights_are_saved_names_them(cifar_dir, tmp_path, monkeypatch, one_epoch_weights):
    output = tmp_path / "my_network.pth"
    real = step1.failures.quoted

    def broken(path):
        if str(path) == str(output):  # in the last line: "Saved the weights to"
            raise RuntimeError("a bug in the last line")
        return real(path)

    monkeypatch.setattr(step1.failures, "quoted", broken)
    error, shown = an_error_in_a_run(cifar_dir, output, *ONE_EPOCH)
    assert str(error) == "a bug in the last line"
    assert shown == [f"The weights were saved to {output} before this error ended the run."]
    assert same_weights(output, one_epoch_weights)
