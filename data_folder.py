"""The folder that torchvision reads CIFAR-10 from, or downloads it into: one line when that fails, nothing left of
what a failed download wrote, and nothing of the user's written over.

torchvision's own errors name a file deep inside, or a checksum, and a failed download leaves empty or half-unpacked
folders behind. A user needs to know instead whether the data is missing, damaged, or unreadable, and what to do.
Within checked(root), torchvision's CIFAR10 runs as usual; a failure is raised as Failure, whose line says which,
with the system's reason (its errno), and what this run wrote is removed (a stop meanwhile waits for that, then stops
the run). The data already there is never removed.

What this run writes is seen as it writes it, through Python's audit events (open, os.mkdir), the one moment that
knows which files and folders this run creates: each is removed after a failure only if it is still the one it
created (the same inode), never a file that the user put there meanwhile, such as an archive fetched by a browser
while the download hung, and never a whole archive (one that passes torchvision's check): curl -o, wget -O and cp
write it into the run's own file.

torchvision unpacks the archive over the batches there when one does not match its checksum. CIFAR-10's files are
fixed files, so each may be replaced: a line names those that held other bytes. Before the first write, each of
CIFAR-10's files must be one that a write lands in as a file of its own in the folder, or the run is refused in one
line that names what the system says is there: a link to outside the folder or to another file, a file with other
names (a hard link), or what is not a file (a named pipe would hang the run). Only CIFAR-10's own file names are the
data set: anything else in the folder is left alone.
"""
import argparse
import contextlib
import errno
import http.client
import os
import stat
import sys
import threading

from torchvision.datasets import cifar
from torchvision.datasets.utils import calculate_md5

import stop_signals
from failures import ADVICE, Failure, kind_of, quoted, why

BATCHES = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
UNPACKED = ("batches.meta", *(f"data_batch_{n}" for n in range(1, 6)), "readme.html", "test_batch")  # in BATCHES
CIFAR10_FILES = {ARCHIVE, *UNPACKED}


def cifar10_paths(root):
    """Where a download writes the archive, and where its unpacking writes each of its files: it writes them all."""
    return [os.path.join(root, ARCHIVE), *(os.path.join(root, BATCHES, name) for name in UNPACKED)]


def path_option(text):
    """argparse's type for --data-dir (and the start of --output's): a path, with ~ for the home folder."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return os.path.expanduser(text)


@contextlib.contextmanager
def checked(root):
    """Within: torchvision.datasets.CIFAR10(root, ..., download=True). A failure becomes a Failure, one line."""
    batches = os.path.join(root, BATCHES)
    archive = os.path.join(root, ARCHIVE)
    there = None  # whether CIFAR-10 is there, once the system has said
    writes = None
    try:
        if os.path.exists(root) and not os.path.isdir(root):
            raise Failure(f"error: --data-dir {quoted(root)} is not a folder; give the folder that holds {BATCHES}/")
        # What a download would create, resolved as the system resolves it
        places = set()
        for path in (batches, os.path.join(batches, "batches.meta"), archive):
            places.update(missing_places(path))
        there = any(is_there(path) for path in (batches, archive))
        check_folder(root, batches, there)
        with Writes(root, places) as writes:
            yield
        warn_of_what_was_replaced(writes, batches)
    except BaseException as error:  # Ctrl-C too: leave nothing behind that this run wrote, no half-unpacked folder
        if writes is not None:
            with stop_signals.deferred():  # a stop meanwhile would leave half of it: it waits, then stops the run
                writes.remove_what_this_run_made()
            warn_of_what_was_replaced(writes, batches)  # written over before the failure, all the same
        line = failure(error, root, there)
        if line is error:
            raise
        raise line from error


def warn_of_what_was_replaced(writes, batches):
    replaced = writes.replaced()
    if replaced:
        print(f"warning: the archive replaced {', '.join(replaced)} in {quoted(batches)}, which held other bytes than "
              f"CIFAR-10's own", file=sys.stderr)


def failure(error, root, there):
    """The Failure whose line says what went wrong with CIFAR-10 in root; error itself if it is not about the data."""
    if isinstance(error, MemoryError) or isinstance(error, OSError) and error.errno == errno.ENOMEM:
        return Failure("error: not enough memory to read CIFAR-10: torchvision needs about 310 MB at once to read its "
                       "60000 images (184 MB once read), and --limit cannot lower that, as torchvision reads them all. "
                       "Free some memory, or raise the limit (ulimit -v).")
    if not isinstance(error, (OSError, RuntimeError, http.client.HTTPException)) or isinstance(error, Failure):
        return error
    # A full disk, while downloading or unpacking: that is what the line must say, as the disk's reason below
    full = isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    if there is False and not full:  # nothing was there: a download was tried, and failed
        reason = f"{quoted(error.filename)}: {error.strerror}" if isinstance(error, OSError) and error.filename else (
            error)
        return Failure(f"error: CIFAR-10 is not in {quoted(root)} and could not be downloaded ({reason}). Put "
                       f"{ARCHIVE} or its {BATCHES}/ folder there, or give the folder that holds them with "
                       f"--data-dir.")
    if isinstance(error, OSError) and (error.filename or error.errno in ADVICE):  # the system's reason, on disk
        return Failure(f"error: could not read or write {quoted(error.filename or root)} ({why(error)}), or give "
                       f"another --data-dir")
    meta = cifar.CIFAR10.meta["filename"]
    sound = {name: cifar.check_integrity(os.path.join(root, BATCHES, name), md5) for name, md5 in
             [*cifar.CIFAR10.train_list, *cifar.CIFAR10.test_list, (meta, cifar.CIFAR10.meta["md5"])]}
    if all(sound.values()):
        return error  # the data is sound: what failed is not about it (a bug, memory run out), and is seen whole
    if not sound.pop(meta) and all(sound.values()):
        # torchvision's download() looks at the batches only: with those sound, it neither downloads nor unpacks
        meta = os.path.join(root, BATCHES, meta)
        return Failure(f"error: {quoted(meta)} is missing or damaged (it does not match its checksum), and torchvision "
                       f"gets it again only with a batch that is damaged too. Move {BATCHES}/ away, then run again: "
                       f"online, or with a fresh {ARCHIVE} there.")
    # A download was tried because what is there does not match torchvision's checksums: a fresh archive put there
    # would meet what the download did not get to
    try:
        refuse_what_a_download_would_write_through(root)
    except Failure as refusal:
        return refusal
    return Failure(f"error: CIFAR-10 in {quoted(root)} is incomplete or damaged (it does not match its checksums), "
                   f"and could not be downloaded again ({error}). Run again online, or put a fresh {ARCHIVE} there.")


def is_there(path):
    """Whether path is there, as the system says: a folder that cannot be read is an error, not a no."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    return True


def check_folder(root, batches, there):
    """Refuse, before anything is read or created, a root that cannot be right."""
    if os.path.basename(os.path.normpath(root)) == BATCHES and not there:
        raise Failure(f"error: --data-dir {quoted(root)} is the {BATCHES} folder itself; give the folder that holds "
                      f"it: --data-dir {quoted(os.path.dirname(os.path.abspath(root)))}")
    with contextlib.suppress(OSError), os.scandir(batches) as entries:  # unreadable: torchvision's read says so
        for entry in entries:
            if entry.name in CIFAR10_FILES:  # the data set's own files: anything else there is not the data's
                refuse_a_link_that_leads_nowhere(entry.path)


def missing_places(path):
    """Each folder or file on the way to path that is not there yet, where creating it would put it: what os.makedirs
    creates, step by step, as the system resolves each step (links, then ..). The outermost first."""
    steps = [path]
    while os.path.dirname(steps[-1]) != steps[-1]:
        steps.append(os.path.dirname(steps[-1]))
    places = []
    for step in reversed(steps):
        if os.path.basename(step) in ("", ".", ".."):  # os.makedirs creates no . or ..
            continue
        refuse_a_link_that_leads_nowhere(step)
        place = os.path.realpath(step)
        if not is_there(place):  # a folder that cannot be read fails here, with the system's reason
            places.append(place)
    return places


def refuse_a_link_that_leads_nowhere(path):
    """A link that the system cannot follow: to nothing, or round in a loop (ELOOP), named with the system's reason."""
    if not os.path.islink(path):
        return
    try:
        os.stat(path)
    except FileNotFoundError:
        raise Failure(f"error: {quoted(path)} is a link that leads nowhere; fix or remove it, or give another "
                      f"--data-dir") from None
    except OSError as error:
        raise Failure(f"error: could not follow the link {quoted(path)} ({why(error)}), or give another "
                      f"--data-dir") from None


def inside(path, folder):
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def refuse_what_a_download_would_write_through(root):
    """Refuse the first of CIFAR-10's files in root that a download and its unpacking, which write each of them,
    would not write as a file of its own (refuse_a_write_through)."""
    for path in cifar10_paths(root):
        if os.path.basename(path) == ARCHIVE and a_whole_archive(path):
            continue  # torchvision only reads a whole archive, through a link as well
        with contextlib.suppress(OSError):  # what the system cannot say here, it says to the write itself
            refuse_a_write_through(root, path)


def refuse_a_write_through(root, path):
    """Refuse a write at path in root that would not land in a regular file of its own there: through a link (to
    outside root, or to what the user keeps in it, a file or a folder); into what is not a regular file (a named pipe
    would hang the run: the write waits for a reader); or into a file with other names (a hard link: each name would
    show what is written)."""
    name = os.path.basename(path)
    link = first_link(root, path)
    if link is not None:
        target = os.path.realpath(link)
        what = written_as(name) if os.path.abspath(link) == os.path.abspath(path) else "the archive's files"
        where = (f"outside {quoted(os.path.abspath(root))}" if not inside(target, os.path.realpath(root))
                 else f"not CIFAR-10's own {os.path.basename(link)}")
        raise Failure(f"error: {quoted(link)} is a link to {quoted(target)}, {where}: torchvision would write {what} "
                      f"through it. Remove the link, or give another --data-dir.")
    try:
        status = os.lstat(path)
    except FileNotFoundError:  # a new file
        return
    if not stat.S_ISREG(status.st_mode):
        raise Failure(f"error: {quoted(path)} is {kind_of(status.st_mode)}, not a file: torchvision would write "
                      f"{written_as(name)} into it. Move it away, or give another --data-dir.")
    if status.st_nlink > 1:
        raise Failure(f"error: {quoted(path)} is a hard link, one of {status.st_nlink} names of the same file: "
                      f"torchvision would write {written_as(name)} into it, under every name. Remove this name (the "
                      f"others keep the file), or give another --data-dir.")


def a_whole_archive(path):
    """Whether the archive at path is whole: it passes torchvision's own check, and then torchvision only reads it."""
    return cifar.check_integrity(path, cifar.CIFAR10.tgz_md5)


def written_as(name):
    return "the download" if name == ARCHIVE else f"the archive's {name}"


def first_link(root, path):
    """The first folder or file on the way from root (itself aside) to path that is a link, or None."""
    step = root
    for part in os.path.relpath(os.path.abspath(path), os.path.abspath(root)).split(os.sep):
        step = os.path.join(step, part)
        if os.path.islink(step):
            return step
    return None


IN_PROGRESS = []  # the Writes blocks open now: the audit hook has work only while there is one
HOOKED = []  # whether this process's audit hook is added (it cannot be removed)


def audit(event, args):
    """Python's audit hook: called for every event of the process, so it returns at once unless it has work."""
    if IN_PROGRESS and event in ("open", "os.mkdir"):
        for writes in IN_PROGRESS:
            writes.seen(event, args)


class Writes:
    """Within, in this thread: what is written in the data folder, seen through Python's audit events as it happens.
    A file or folder created in places (those that were missing) is this run's own, by its identity (device and
    inode); a write that would not land in a regular file of its own in root is refused (refuse_a_write_through), each
    of CIFAR-10's files before the first write; an existing CIFAR-10 file written over is noted, for replaced() to
    name it if the archive held other bytes."""

    def __init__(self, root, places):
        self.given = root  # as torchvision names the paths in it
        self.root = os.path.abspath(root)
        self.real_root = os.path.realpath(root)
        self.places = places
        self.made = {}  # path: (st_dev, st_ino), or None until it is there
        self.before = {}  # place: (the name of a CIFAR-10 file written over, the md5 of what it held)
        self.first = True
        self.thread = threading.get_ident()
        self.busy = False  # what seen() does raises events of its own

    def __enter__(self):
        if not HOOKED:
            sys.addaudithook(audit)
            HOOKED.append(audit)
        IN_PROGRESS.append(self)
        return self

    def __exit__(self, *exception):
        IN_PROGRESS.remove(self)

    def seen(self, event, args):
        if self.busy or threading.get_ident() != self.thread:
            return
        self.busy = True
        try:
            self.identify()  # what the events before created is there by now
            path, flags = args[0], args[2]  # os.mkdir: (path, mode, dir_fd); open: (path, mode, flags)
            if isinstance(path, int) or (event == "os.mkdir" and flags not in (None, -1)):  # no path, or one in a
                return  # folder given by its descriptor
            path = os.fsdecode(path)
            place = os.path.realpath(path)  # where the system puts it: links resolved, then ..
            if event == "os.mkdir":
                if self.ours(place) and not os.path.lexists(place):
                    self.made[place] = None
            elif flags & (os.O_WRONLY | os.O_RDWR) and inside(os.path.abspath(path), self.root):
                self.written(path, place, flags)
        except OSError:  # what the system cannot say here, it says to the open or mkdir itself
            pass
        finally:
            self.busy = False

    def written(self, path, place, flags):
        """A file opened for writing in the data folder, just before it is opened; place: where the system puts it."""
        if self.first:  # a download and its unpacking write each of CIFAR-10's files: none begun if one is refused
            self.first = False
            refuse_what_a_download_would_write_through(self.given)
        refuse_a_write_through(self.given, path)
        if os.path.lexists(place):
            name = os.path.basename(path)
            if name in UNPACKED and os.path.dirname(os.path.abspath(path)) == os.path.join(self.root, BATCHES):
                self.before.setdefault(place, (name, calculate_md5(place)))
        elif self.ours(place) and flags & os.O_EXCL:  # created by the open itself: identified by the next event
            self.made[place] = None
        elif self.ours(place) and flags & os.O_CREAT:  # created here, as the open would create it, which then
            descriptor = os.open(place, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # empties it: the same file
            status = os.fstat(descriptor)
            os.close(descriptor)
            self.made[place] = (status.st_dev, status.st_ino)

    def replaced(self):
        """The names of CIFAR-10's files that were there and now hold other bytes: CIFAR-10's own, from the archive."""
        names = []
        for place, (name, md5) in self.before.items():
            try:
                changed = calculate_md5(place) != md5
            except OSError:  # gone: written over all the same
                changed = True
            if changed:
                names.append(name)
        return sorted(names)

    def ours(self, place):
        return any(inside(place, created) for created in self.places)

    def identify(self):
        for place, identity in self.made.items():
            if identity is None:
                with contextlib.suppress(OSError):
                    status = os.lstat(place)
                    self.made[place] = (status.st_dev, status.st_ino)

    def remove_what_this_run_made(self):
        """Each file and folder this run created that is still the one it created, the innermost first; a folder
        only if nothing else is left in it. A whole archive stays, though: curl -o, wget -O and cp write into the
        file that the run began (the same inode), and a whole archive is what the data folder is to hold, whoever
        wrote it."""
        self.identify()
        for place, identity in sorted(self.made.items(), key=lambda item: len(item[0]), reverse=True):
            with contextlib.suppress(OSError):
                status = os.lstat(place)
                if (status.st_dev, status.st_ino) != identity or self.a_whole_archive(place):
                    continue
                (os.rmdir if stat.S_ISDIR(status.st_mode) else os.remove)(place)

    def a_whole_archive(self, place):
        """Whether place is the archive, and whole."""
        return place == os.path.join(self.real_root, ARCHIVE) and a_whole_archive(place)
