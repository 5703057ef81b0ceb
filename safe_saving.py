"""Saving the trained weights so that they are never lost, and no file of the user's is destroyed.

Minutes of training are lost if the save fails, and a user's file is lost if the save overwrites it. So:

- An earlier file at --output is replaced only if it holds MyNet's weights (what `MyNet().load_state_dict` takes,
  strict): an earlier result of step1.py or of the guide's code. This is checked before training (check_output, with
  a nameless file of the weights' size written in the folder, so that a full disk or a size limit shows then) and
  again right before the rename, since the file may have changed meanwhile.
- The weights go to a new file beside --output, which takes its name only when complete: a crash or a power cut
  midway leaves the earlier file whole. It is private (0600) until it holds them, then gets everything that decided
  who may read the earlier file: owner and group, exactly its ACL and other extended attributes (none inherited from
  the folder's default ACL), permission bits. With no earlier file, it gets what the system gives a plain new file
  there (the umask, or the folder's default ACL), read from an empty one made beside it and removed at once.
- A folder that the system keeps from changing (append-only or immutable, even to root: chattr) is refused, before
  training and at the save: there the rename would fail, and leave a file that only root could remove.
- If that fails, for whatever reason, the same bytes go to a new file in a temporary folder (each that Python's
  tempfile would take), else the current folder, else the home folder, and one line names it. Stop signals wait until
  the save is done.
- KeepTrainedWeights: once the last update is done, however the run ends (a stop signal, an error), the weights
  are saved first.
"""
import argparse
import collections
import contextlib
import errno
import functools
import io
import os
import stat
import struct
import sys
import tempfile
import uuid
import warnings
import zipfile
from collections.abc import Mapping

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

import torch

import data_folder
import stop_signals
from failures import Failure, add_line, kind_of, quoted, why
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
                take_permissions(file.fileno(), folder, path, earlier)
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
        with contextlib.suppress(OSError):  # a folder that cannot be read: the system says why later, if it matters
            attribute = unchangeable(os.open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=folder), close=True)
            if attribute:
                raise Failure(f"{quoted(path)} cannot be written: its folder is {attribute}; choose another path")
        yield folder, os.path.basename(path)
    finally:
        os.close(folder)


# What lsattr shows: Linux's inode flags (FS_IOC_GETFLAGS, _IOR('f', 1, long)), or BSD's and macOS's st_flags.
FS_IOC_GETFLAGS = 0x80006601 | struct.calcsize("l") << 16
LINUX_FLAGS = {0x10: "immutable (lsattr shows i)", 0x20: "append-only (lsattr shows a)"}
BSD_FLAGS = {getattr(stat, "UF_IMMUTABLE", 0) | getattr(stat, "SF_IMMUTABLE", 0): "immutable (ls -lO shows uchg)",
             getattr(stat, "UF_APPEND", 0) | getattr(stat, "SF_APPEND", 0): "append-only (ls -lO shows uappnd)"}


def unchangeable(descriptor, close=False):
    """What keeps an open file or folder from being changed, even by root, as the system says it: "immutable (lsattr
    shows i)" or "append-only (lsattr shows a)"; None if nothing does, or the system keeps no such attribute."""
    try:
        flags = getattr(os.fstat(descriptor), "st_flags", None)
        if flags is not None:
            return next((name for mask, name in BSD_FLAGS.items() if flags & mask), None)
        if fcntl is None:
            return None
        try:
            flags = struct.unpack("i", fcntl.ioctl(descriptor, FS_IOC_GETFLAGS, bytes(8))[:4])[0]
        except OSError:  # a file system without such flags (ENOTTY, EINVAL, EOPNOTSUPP)
            return None
        return next((name for mask, name in LINUX_FLAGS.items() if flags & mask), None)
    finally:
        if close:
            os.close(descriptor)


# An earlier file at --output: its lstat, and its extended attributes by name (its ACL among them, on Linux).
Earlier = collections.namedtuple("Earlier", "status attributes")


def replaceable(folder, name, path, holds_something_else=None):
    """The earlier file that the weights may replace (Earlier), or None if there is none. Raises Failure for one that
    must be kept, and the system's OSError for one that cannot be replaced. holds_something_else(file): None if the
    open file may be replaced, else what it holds; by default, what_it_holds_unless_mynet_weights."""
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
    flags = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        descriptor = os.open(name, os.O_RDWR | flags, dir_fd=folder)
    except PermissionError as error:
        failure = refused(folder, name, path, flags)
        if failure is None:
            raise
        raise failure from error
    with open(descriptor, "rb") as file:
        opened = os.fstat(file.fileno())
        if (opened.st_dev, opened.st_ino) != (earlier.st_dev, earlier.st_ino):  # replaced between the two looks
            raise Failure(f"{quoted(path)} changed while it was checked; run again")
        if opened.st_size > 10 * len(weights_of_a_new_mynet()):  # not read into memory: it may be gigabytes
            what = f"{opened.st_size / 1e6:.0f} MB, far more than MyNet's weights"
        else:
            what = (holds_something_else or what_it_holds_unless_mynet_weights)(file)
        attributes = extended_attributes(file.fileno())
    if what:
        raise Failure(f"{quoted(path)} holds {what}; choose another path, to keep it")
    return Earlier(earlier, attributes)


def refused(folder, name, path, flags):
    """Why the system refused to open a file for reading and writing, when it says more than its errno: the file
    cannot be read, so what it holds cannot be checked; or it is immutable or append-only. None otherwise."""
    try:
        descriptor = os.open(name, os.O_RDONLY | flags, dir_fd=folder)
    except OSError as error:
        return Failure(f"{quoted(path)} cannot be read ({why(error)}), so what it holds cannot be checked; choose "
                       f"another path")
    attribute = unchangeable(descriptor, close=True)
    return Failure(f"{quoted(path)} is {attribute}; choose another path") if attribute else None


def extended_attributes(descriptor):
    """An open file's extended attributes, by name: its ACL (system.posix_acl_access on Linux), its SELinux label,
    the user's own. Empty where the system or the file system keeps none."""
    if not hasattr(os, "listxattr"):  # not Linux
        return {}
    try:
        names = os.listxattr(descriptor)
    except OSError as error:
        if error.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    return {name: os.getxattr(descriptor, name) for name in names}


def what_it_holds_unless_mynet_weights(file):
    """None if file holds weights that MyNet takes (torch.load reads them as tensors only, never code); otherwise
    what it holds, in a few words."""
    try:
        with warnings.catch_warnings():  # torch.load's warnings about what it reads: the line says enough
            warnings.simplefilter("ignore")
            content = torch.load(file, map_location="cpu", weights_only=True)
        loaded_up_to = file.tell()
    except Exception:  # damaged, or not weights: each kind of file fails in its own way
        return ("no weights that torch.load can read (a damaged file, or another kind: a whole model, "
                "a TorchScript model, a data set...)")
    if not isinstance(content, Mapping):
        return f"a {type(content).__name__}, not weights"
    more = [repr(name) for name, value in content.items() if not (isinstance(name, str) and torch.is_tensor(value))]
    if more:
        return f"more than weights ({', '.join(more[:3])})"
    if all(name.startswith("module.") for name in content) and fits_mynet(
            {name.removeprefix("module."): tensor for name, tensor in content.items()}) == []:
        return ("MyNet's weights saved from nn.DataParallel, each name starting with module. (the README's "
                "Troubleshooting strips it)")
    unexpected = fits_mynet(content)
    if unexpected is None:
        return "the weights of another network, not MyNet's"
    if unexpected:
        return f"MyNet's weights and more ({', '.join(map(repr, unexpected[:3]))})"
    beside = bytes_beside_the_weights(file, loaded_up_to)
    if beside:
        return f"MyNet's weights and {beside} bytes of something else"
    return None


def fits_mynet(weights):
    """The names in weights that MyNet has no place for, if it takes the rest as they are (the same names, with the
    same shapes, none missing); None if it does not."""
    with torch.device("meta"):  # no memory, no random numbers drawn: only the names and shapes matter
        reference = MyNet()
    try:
        missing, unexpected = reference.load_state_dict(weights, strict=False, assign=True)
    except RuntimeError:  # a shape that differs
        return None
    return None if missing else unexpected


ZIP_END = b"PK\x05\x06"  # the signature of a zip's end record, 22 bytes and a comment, which ends the file


def bytes_beside_the_weights(file, loaded_up_to):
    """How many bytes of file are not the weights, which torch.load ignores: before and after the zip that torch.save
    writes (since PyTorch 1.6), as when notes are added or two files joined; in the format before, after what
    torch.load read (loaded_up_to)."""
    size = os.fstat(file.fileno()).st_size
    file.seek(0)
    if file.read(4) != b"PK\x03\x04":  # not a zip
        return size - loaded_up_to
    file.seek(max(0, size - 22 - 0xFFFF))  # the end record and its longest comment
    tail = file.read()
    end = tail.rfind(ZIP_END)
    if end < 0 or len(tail) < end + 22:
        return 0  # no end record: torch.load could not have read it
    (comment_length,) = struct.unpack("<H", tail[end + 20:end + 22])
    after = max(0, len(tail) - (end + 22 + comment_length))
    with zipfile.ZipFile(file) as weights:  # it finds where the zip of that end record begins
        before = min((member.header_offset for member in weights.infolist()), default=0)
    return before + after


def take_permissions(file, folder, path, earlier, new_mode=0o666):
    """Give a new file, made private (0600), everything that decided who may read the earlier file it is to replace
    (an Earlier): a private file stays private, and a user's file stays theirs when root replaces it. Owner first
    (Linux clears the setuid and setgid bits on a chown), then the extended attributes (the ACL), then the permission
    bits. With no earlier file: what the system gives a new file made with new_mode in that folder (new_file_there)."""
    model = earlier or new_file_there(folder, path, new_mode)
    take_owner(file, path, model.status)
    take_extended_attributes(file, model.attributes)
    os.fchmod(file, stat.S_IMODE(model.status.st_mode))


def new_file_there(folder, path, mode):
    """What the system gives a plain new file made with mode in path's folder (an Earlier), asked of it: an empty file
    made there now, under a name of its own, and removed at once. Not computed: under a default ACL the umask does not
    apply, and the new file takes that ACL masked by mode."""
    name = a_name_beside(folder, path, ".new")
    with stop_signals.deferred(), contextlib.ExitStack() as cleanup:  # a stop waits: the file never stays
        descriptor = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode,
                             dir_fd=folder)
        cleanup.callback(os.remove, name, dir_fd=folder)  # after the close (Windows removes no open file)
        cleanup.callback(os.close, descriptor)
        return Earlier(os.fstat(descriptor), extended_attributes(descriptor))


def a_name_beside(folder, path, ending):
    """A name of its own for a new file in path's folder: short, whatever path's length (opened with O_EXCL: never a
    file that exists). Relative to folder, the folder's descriptor, or a whole path where there is none (Windows)."""
    name = f"step1-{uuid.uuid4().hex[:8]}{ending}"
    return name if folder is not None else os.path.join(os.path.dirname(path), name)


def take_owner(file, path, status):
    """Give an open file the owner and group of status; Failure if the system refuses."""
    new = os.fstat(file)
    if (new.st_uid, new.st_gid) != (status.st_uid, status.st_gid):
        try:
            os.fchown(file, status.st_uid, status.st_gid)  # refused unless root, or a group you are in
        except PermissionError as error:
            whose = (f"another user's (user {status.st_uid})" if new.st_uid != status.st_uid
                     else f"in a group that you are not in (group {status.st_gid})")
            raise Failure(f"{quoted(path)} is {whose}, and a new file cannot keep that ({error.strerror}); choose "
                          f"another path") from error


def take_extended_attributes(file, attributes):
    """Give an open file exactly these extended attributes (by name): those it has and they lack are removed, such
    as an ACL inherited from the folder's default ACL, and the others set where they differ."""
    has = extended_attributes(file)
    for name in sorted(has.keys() - attributes.keys()):
        os.removexattr(file, name)
    for name, value in attributes.items():
        if has.get(name) != value:
            os.setxattr(file, name, value)


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
    """Each temporary folder that Python's tempfile would consider (the one it has chosen, then $TMPDIR, $TEMP, $TMP,
    then the system's: /tmp, /var/tmp...), the current folder, the home folder: each once, in that order. Not only
    the one that tempfile.gettempdir() chose: it chose by a file of a few bytes, which fits where the weights may not.
    """
    places = []
    candidates = getattr(tempfile, "_candidate_tempdir_list", list)  # tempfile's own list: private, but in every Python
    for find in (lambda: [tempfile.tempdir or tempfile.gettempdir()], candidates, lambda: [os.getcwd()],
                 lambda: [os.path.expanduser("~")]):
        with contextlib.suppress(OSError):  # no usable temporary folder, or the current one removed
            for place in map(os.path.abspath, find()):
                if place not in places:
                    places.append(place)
    return places


def write_then_rename(data, path, new_mode=0o666, holds_something_else=None):
    """Write data to a new file in path's folder, then give it path's name, if path may be replaced then: path is
    never half-written, and the check holds up to the very moment of replacing. new_mode: the mode that a new file is
    made with (the umask or a default ACL then applies); holds_something_else: the rule of replaceable()."""
    with in_folder(path) as (folder, name):
        temporary = a_name_beside(folder, path, ".tmp")
        # Private until it takes its permissions: no one else opens it meanwhile.
        file = open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600,
                            dir_fd=folder), "wb")
        try:
            with file:
                file.write(data)
                file.flush()
                earlier = replaceable(folder, name, path, holds_something_else)  # again: it may have changed
                # After the data: a write clears setuid.
                take_permissions(file.fileno(), folder, path, earlier, new_mode)
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
    before = earlier and earlier.status
    return before is not None and ((now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns)
                                   == (before.st_dev, before.st_ino, before.st_size, before.st_mtime_ns))


class KeepTrainedWeights:
    """Within: once hold(model) has been called, the last update done, any ending of the block saves the weights
    first: a stop signal (Ctrl-C, a kill, a closed terminal), an error, or standard output that cannot be written.
    save() saves them at the end of a run that went well; a stop signal waits until it is done. Standard output is
    flushed as the block ends, so that a failure to print the last lines also says that the weights were saved."""

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
        if self.ending == "saved":  # by save(): a failure after it, such as the last lines' printing, says so too
            if error is None and sys.stdout is not None:
                try:
                    sys.stdout.flush()  # what is still buffered: a full disk or a closed pipe shows now
                except Failure as failure:
                    error = failure
            if isinstance(error, Failure):
                raise Failure(f"{error}; the weights were saved to {quoted(self.path)}") from error
            if isinstance(error, Exception):
                self.name_the_weights_under(error)
            return False  # a stop once the weights were saved: passed on as it came (the caller's, from Python)
        if error is None or self.model is None:
            return False
        if self.ending is None:
            try:
                self.save(self.model.state_dict())
            except (Failure, KeyboardInterrupt):
                pass  # self.ending says how it went
            except Exception as failed:  # a bug, or memory run out, in the save too
                what = f"{type(failed).__name__}: {failed}" if str(failed) else type(failed).__name__
                if isinstance(error, KeyboardInterrupt):  # still a stop, which ends the program as its signal would
                    raise stop_signals.stopped_again(
                        error, f"\ninterrupted: the weights could not be saved ({what})") from None
                add_line(error, f"The weights could not be saved either ({what}).")
                return False  # the first error is the one to see
        if isinstance(self.ending, Failure):  # kept elsewhere, or lost: that line, whatever else came
            if error is self.ending:
                return False
            raise self.ending from None
        if self.ending is None:  # the save itself was cut short: nothing saved, and the ending says so
            return False
        if isinstance(error, KeyboardInterrupt):  # still a stop: it ends the program as its signal would
            raise stop_signals.stopped_again(
                error, f"\ninterrupted: the weights were saved to {quoted(self.path)} first; the rest was skipped"
            ) from None
        if isinstance(error, Failure):
            raise Failure(f"{error}; the weights were saved to {quoted(self.path)} first") from error
        self.name_the_weights_under(error)
        return False

    def name_the_weights_under(self, error):
        """An error that is no failure the user can act on (a bug, memory run out) is seen whole, as a bug is: its
        traceback, with where the weights are."""
        add_line(error, f"The weights were saved to {quoted(self.path)} before this error ended the run.")
