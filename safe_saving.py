"""Saving the trained weights so that they are never lost, and no file of the user's is destroyed.

Minutes of training are lost if the save fails, and a user's file is lost if the save overwrites it. So:

- An earlier file at --output is replaced only if it holds MyNet's weights (what `MyNet().load_state_dict` takes,
  strict): an earlier result of step1.py or of the guide's code. This is checked before training (check_output, with
  a nameless file of the weights' size written in the folder, so that a full disk or a size limit shows then) and
  again right before the rename, since the file may have changed meanwhile.
- The weights go to a new file beside --output, which takes its name only when complete: a crash or a power cut
  midway leaves the earlier file whole. It gets the earlier file's permission bits, owner and group.
- If that fails, for whatever reason, the same bytes go to a new file in the temporary folder, else the current
  folder, else the home folder, and one line names it. Stop signals wait until the save is done.
- KeepTrainedWeights: once the last update is done, however the run ends (a stop signal, an error), the weights
  are saved first.
"""
import argparse
import contextlib
import functools
import io
import os
import stat
import tempfile
import uuid
import warnings
from collections.abc import Mapping

import torch

import data_folder
import stop_signals
from failures import Failure, kind_of, quoted, why
from model import MyNet


def output_option(text):
    """argparse's type for --output: the path, ~ expanded, if the weights can be saved there; else argparse's error."""
    path = data_folder.path_option(text)
    try:
        check_output(path)
    except Failure as failure:
        raise argparse.ArgumentTypeError(str(failure)) from None
    return path


def check_output(path, holds_something_else=None, probe=None):
    """Before training: raise Failure unless the weights can be saved at path as save_weights() saves them.
    For another kind of file, a checkpoint: holds_something_else, its rule (see replaceable), and probe, bytes of its
    size."""
    if not os.path.basename(path):
        raise Failure(f"{quoted(path)} is not a file name; give one such as my_network.pth")
    try:
        with in_folder(path) as (folder, name):
            earlier = replaceable(folder, name, path, holds_something_else)
            with tempfile.TemporaryFile(dir=os.path.dirname(path) or ".") as file:  # nameless: never left behind
                file.write(probe or weights_of_a_new_mynet())  # the weights' size, whatever their values
                file.flush()
                os.fsync(file.fileno())  # some disks say they are full only now
                take_mode_and_owner(file.fileno(), earlier)
    except OSError as error:
        raise Failure(f"{quoted(path)} cannot be written ({why(error)}); choose another path") from error


@contextlib.contextmanager
def in_folder(path):
    """The folder of path, open, and the file's name in it: files are then found relative to the folder, so that
    no temporary name is too long for the system, and the folder is the same one from the check to the rename."""
    if os.open not in os.supports_dir_fd:  # Windows: by full path
        yield None, path
        return
    try:
        folder = os.open(os.path.dirname(path) or ".", getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY)
    except FileNotFoundError as error:  # named by the file's path: its folder is what is missing
        raise FileNotFoundError(error.errno, error.strerror, path) from None
    try:
        yield folder, os.path.basename(path)
    finally:
        os.close(folder)


def replaceable(folder, name, path, holds_something_else=None):
    """The lstat of the earlier file that the weights may replace, or None if there is none. Raises Failure for one
    that must be kept, and the system's OSError for one that cannot be replaced. holds_something_else(file): None if
    the open file may be replaced, else what it holds; by default, what_it_holds_unless_mynet_weights."""
    try:
        earlier = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(earlier.st_mode):
        raise Failure(f"{quoted(path)} is {kind_of(earlier.st_mode)}, not a file; give a file name such as "
                      f"my_network.pth")
    if not earlier.st_mode & stat.S_IWUSR:
        raise Failure(f"{quoted(path)} is write-protected; choose another path, or make it writable (chmod u+w)")
    # Opened for writing, though only read: refused for an immutable or append-only file, even to root.
    flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    with open(os.open(name, flags, dir_fd=folder), "rb") as file:
        opened = os.fstat(file.fileno())
        if (opened.st_dev, opened.st_ino) != (earlier.st_dev, earlier.st_ino):  # replaced between the two looks
            raise Failure(f"{quoted(path)} changed while it was checked; run again")
        if opened.st_size > 10 * len(weights_of_a_new_mynet()):  # not read into memory: it may be gigabytes
            what = f"{opened.st_size / 1e6:.0f} MB, far more than MyNet's weights"
        else:
            what = (holds_something_else or what_it_holds_unless_mynet_weights)(file)
    if what:
        raise Failure(f"{quoted(path)} holds {what}; choose another path, to keep it")
    return earlier


def what_it_holds_unless_mynet_weights(file):
    """None if file holds weights that MyNet takes (torch.load reads them as tensors only, never code); otherwise
    what it holds, in a few words."""
    try:
        with warnings.catch_warnings():  # torch.load's warnings about what it reads: the line says enough
            warnings.simplefilter("ignore")
            content = torch.load(file, map_location="cpu", weights_only=True)
    except Exception:  # damaged, or not weights: each kind of file fails in its own way
        return ("no weights that torch.load can read (a damaged file, or another kind: a whole model, "
                "a TorchScript model, a data set...)")
    if not isinstance(content, Mapping):
        return f"a {type(content).__name__}, not weights"
    more = [repr(name) for name, value in content.items() if not (isinstance(name, str) and torch.is_tensor(value))]
    if more:
        return f"more than weights ({', '.join(more[:3])})"
    with torch.device("meta"):  # no memory, no random numbers drawn: only the names and shapes matter
        reference = MyNet()
    try:
        reference.load_state_dict(content, assign=True)  # strict: the same names, with the same shapes
    except RuntimeError:
        return "the weights of another network, not MyNet's"
    return None


def take_mode_and_owner(file, earlier):
    """Give a new file the permission bits, owner and group of the earlier regular file it is to replace (if any): a
    private file stays private, and a user's file stays theirs when root replaces it. Owner first: Linux clears the
    setuid and setgid bits on a chown."""
    if earlier is None:
        return
    new = os.fstat(file)
    if (new.st_uid, new.st_gid) != (earlier.st_uid, earlier.st_gid):
        os.fchown(file, earlier.st_uid, earlier.st_gid)  # refused unless root, or a group you are in
    os.fchmod(file, stat.S_IMODE(earlier.st_mode))


@functools.lru_cache(maxsize=1)  # the same bytes each time: made once
def weights_of_a_new_mynet():
    """What save_weights() will write, in size: the file of a new MyNet's weights. The random numbers that making it
    draws are given back, so that the run's seed alone decides its own."""
    with torch.random.fork_rng(devices=[]):
        return as_bytes(MyNet().state_dict())


def as_bytes(weights):
    """The file that torch.save writes for weights, made in memory, of CPU tensors that load on any machine."""
    buffer = io.BytesIO()
    torch.save({name: tensor.cpu() for name, tensor in weights.items()}, buffer)
    return buffer.getvalue()


def save_weights(weights, path):
    """Save weights (a state_dict) to path, or, if that fails whatever the cause, where they can be kept: then
    raise Failure, whose line names the file that holds them, or each reason why none could."""
    data = as_bytes(weights)  # in memory first: then only writing a file can fail
    try:
        write_then_rename(data, path)
        return
    except (OSError, Failure) as error:
        reasons = [f"to {quoted(path)} ({reason(error)})"]
    for folder in places_to_keep_them():
        kept = os.path.join(folder, f"my_network-{uuid.uuid4().hex}.pth")  # a new name: nothing replaced
        try:
            write_then_rename(data, kept, new_mode=0o600)  # private, in a folder that others share
        except (OSError, Failure) as error:
            reasons.append(f"to {quoted(folder)} ({reason(error)})")
            continue
        raise Failure(f"error: could not save the weights {reasons[0]}; they are in {quoted(kept)} instead")
    raise Failure(f"error: could not save the weights {', nor '.join(reasons)}: they are lost")


def reason(error):
    return why(error) if isinstance(error, OSError) else str(error)


def places_to_keep_them():
    """The temporary folder, the current folder, the home folder: each once, in that order."""
    places = []
    for find in (tempfile.gettempdir, os.getcwd, lambda: os.path.expanduser("~")):
        with contextlib.suppress(OSError):  # no usable temporary folder, or the current one removed
            place = os.path.abspath(find())
            if place not in places:
                places.append(place)
    return places


def write_then_rename(data, path, new_mode=0o666, holds_something_else=None):
    """Write data to a new file in path's folder, then give it path's name, if path may be replaced then: path is
    never half-written, and the check holds up to the very moment of replacing. new_mode: a new file's permission
    bits, less the umask; holds_something_else: the rule of replaceable()."""
    with in_folder(path) as (folder, name):
        # A short name, whatever path's length; x: never a file that exists.
        temporary = f"step1-{uuid.uuid4().hex[:8]}.tmp"
        if folder is None:
            temporary = os.path.join(os.path.dirname(path), temporary)
        file = open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), new_mode,
                            dir_fd=folder), "wb")
        try:
            with file:
                file.write(data)
                file.flush()
                earlier = replaceable(folder, name, path, holds_something_else)  # again: it may have changed
                take_mode_and_owner(file.fileno(), earlier)  # after the data: a write clears setuid and setgid
                os.fsync(file.fileno())  # on the disk before the rename, so a power cut cannot leave it empty
            if not unchanged(folder, name, earlier):  # during the sync, which can take long on a network disk
                raise Failure(f"{quoted(path)} changed while the weights were saved; choose another path")
            os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
            sync_the_folder(folder, path)  # the new name on the disk too, not only the new file
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(temporary, dir_fd=folder)
            raise


def sync_the_folder(folder, path):
    """Put the folder's list of names on the disk, where the system allows it (not every one does)."""
    with contextlib.suppress(OSError):
        if folder is None:
            descriptor = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        else:
            descriptor = os.open(".", os.O_RDONLY, dir_fd=folder)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def unchanged(folder, name, earlier):
    """Whether the file at name is the one the check found, as it was (or still nothing, if there was none)."""
    try:
        now = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return earlier is None
    return earlier is not None and ((now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns)
                                    == (earlier.st_dev, earlier.st_ino, earlier.st_size, earlier.st_mtime_ns))


class KeepTrainedWeights:
    """Within: once hold(model) has been called, the last update done, any ending of the block saves the weights
    first: a stop signal (Ctrl-C, a kill, a closed terminal), an error, or standard output that cannot be written.
    save() saves them at the end of a run that went well; a stop signal waits until it is done."""

    def __init__(self, path):
        self.path = path
        self.model = None
        self.ending = None  # of the save: "saved", or the Failure whose line says where the weights are instead

    def __enter__(self):
        return self

    def hold(self, model):
        self.model = model

    def save(self, weights):
        with stop_signals.deferred(the_end=True):
            try:
                save_weights(weights, self.path)
            except Failure as failure:
                self.ending = failure
                raise
            self.ending = "saved"

    def __exit__(self, kind, error, traceback):
        if error is None or self.model is None:
            return False
        saved_now = self.ending is None
        if saved_now:
            with contextlib.suppress(Failure, KeyboardInterrupt):  # self.ending says how it went
                self.save(self.model.state_dict())
        if isinstance(self.ending, Failure):  # kept elsewhere, or lost: that line, whatever else came
            if error is self.ending:
                return False
            raise self.ending from None
        if self.ending is None:  # the save itself was cut short: nothing saved, and the ending says so
            return False
        if not saved_now:  # a stop once the weights were saved: passed on as it came (the caller's, from Python)
            return False
        if isinstance(error, KeyboardInterrupt):  # still a stop: it ends the program as its signal would
            raise stop_signals.stopped_again(
                error, f"\ninterrupted: the weights were saved to {quoted(self.path)} first; the rest was skipped"
            ) from None
        if isinstance(error, Failure):
            raise Failure(f"{error}; the weights were saved to {quoted(self.path)} first") from error
        return False  # anything else is a bug to see whole: its traceback, the weights saved
