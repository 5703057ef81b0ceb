"""safe_saving.py's promises where a run of step1.py cannot show them by itself: what reaches the disk and in which
order, weights from a GPU on a machine without one, setuid and setgid bits, a disk that is full only at fsync, stop
signals at the moments that matter, and a file replaced between two looks. (The runs that save: test_safeguards.py.)"""
import contextlib
import errno
import os
import signal
import stat

import pytest
import torch

import safe_saving
import step1
from failures import Failure
from helpers import AS_ROOT, earlier_weights, run_on_the_tiny_data, run_step1, without_capabilities
from model import MyNet


def some_weights():
    """MyNet's state_dict, with every value changed from a new MyNet's: floats, and batch norm's int64 counters."""
    torch.manual_seed(0)
    weights = MyNet().state_dict()
    return {name: tensor + torch.ones_like(tensor) for name, tensor in weights.items()}


def test_the_new_file_is_on_the_disk_with_all_its_data_before_it_takes_the_name(tmp_path, monkeypatch):
    """Without the fsync, a power cut soon after the rename can leave an empty file under the name."""
    events = []
    real_fsync = os.fsync
    real_replace = os.replace

    def recording_fsync(fd):
        status = os.fstat(fd)
        events.append(("fsync", status.st_ino, status.st_size))
        return real_fsync(fd)

    def recording_replace(source, target, **dir_fds):
        status = os.stat(source, dir_fd=dir_fds.get("src_dir_fd"))
        events.append(("replace", status.st_ino, status.st_size))
        return real_replace(source, target, **dir_fds)

    monkeypatch.setattr(safe_saving.os, "fsync", recording_fsync)  # safe_saving.os is os: undone after the test
    monkeypatch.setattr(safe_saving.os, "replace", recording_replace)
    output = tmp_path / "my_network.pth"
    safe_saving.save_weights(some_weights(), str(output))
    saved = os.stat(output)
    [rename] = [event for event in events if event[0] == "replace"]
    assert rename == ("replace", saved.st_ino, saved.st_size)
    # Its fsync: once every byte was written (the size it has now), and before the rename.
    assert ("fsync", saved.st_ino, saved.st_size) in events[:events.index(rename)]


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


def test_ctrl_c_then_a_kill_after_the_last_update_still_saves_the_weights_first(cifar_dir, tmp_path, monkeypatch):
    """The first stop signal ends the run; the ones after it must not cut short what it does before it ends."""
    output = tmp_path / "my_network.pth"
    earlier = earlier_weights(output)
    real_accuracy = step1.accuracy

    def two_stops_then_accuracy(*args):  # the last update is done: the keeper holds the weights
        both = {signal.SIGINT, signal.SIGTERM}  # of two kinds: the system does not merge them into one
        signal.pthread_sigmask(signal.SIG_BLOCK, both)
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, both)  # both come now: the second while the first ends the run
        return real_accuracy(*args)

    monkeypatch.setattr(step1, "accuracy", two_stops_then_accuracy)
    code, lines, err = run_on_the_tiny_data(cifar_dir, output, "--epochs", "1", "--limit", "10")
    assert code == 1
    assert err == f"\ninterrupted: the weights were saved to {output} first; the rest was skipped\n"
    assert output.read_bytes() != earlier
    assert list(torch.load(output, weights_only=True)) == list(MyNet().state_dict())
    assert os.listdir(tmp_path) == ["my_network.pth"]


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
