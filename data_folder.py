"""The folder that torchvision reads CIFAR-10 from, or downloads it into: one line when that fails, and nothing left
of what a failed download created.

torchvision's own errors name a file deep inside, or a checksum, and a failed download leaves empty or half-unpacked
folders behind. A user needs to know instead whether the data is missing, damaged, or unreadable, and what to do.
Within checked(root), torchvision's CIFAR10 runs as usual; a failure is raised as Failure, whose line says which,
with the system's reason (its errno), and what this run created is removed. The data already there is never touched.
"""
import argparse
import contextlib
import http.client
import os

from failures import ADVICE, Failure, quoted, why

BATCHES = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FILES = {ARCHIVE, "batches.meta", "readme.html", "test_batch", *(f"data_batch_{n}" for n in range(1, 6))}


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
    there = any(os.path.lexists(path) for path in (batches, archive))
    check_folder(root, batches, there)
    # What a download would create, resolved as the system resolves it, to remove if the download fails.
    created = set()
    try:
        for path in (batches, os.path.join(batches, "batches.meta"), archive):
            created.update(missing_places(path))
        yield
    except BaseException as error:  # Ctrl-C too: leave nothing behind that this run created, no half-unpacked folder
        for place in sorted(created, key=len, reverse=True):
            remove_what_a_download_made(place)
        if isinstance(error, OSError) and (error.filename or error.errno in ADVICE):  # the system's reason, on disk
            raise Failure(f"error: could not read or write {quoted(error.filename or root)} ({why(error)}), "
                          f"or give another --data-dir") from error
        if not isinstance(error, (OSError, RuntimeError, http.client.HTTPException)):  # not about the data
            raise
        if there:  # a download was tried because what is there does not match torchvision's checksums
            raise Failure(f"error: CIFAR-10 in {quoted(root)} is incomplete or damaged (it does not match its "
                          f"checksums), and could not be downloaded again ({error}). Run again online, or put a "
                          f"fresh {ARCHIVE} there.") from error
        raise Failure(f"error: CIFAR-10 is not in {quoted(root)} and could not be downloaded ({error}). Put {ARCHIVE} "
                      f"or its {BATCHES}/ folder there, or give the folder that holds them with --data-dir.") from error


def check_folder(root, batches, there):
    """Refuse, before anything is read or created, a root that cannot be right."""
    if os.path.basename(os.path.normpath(root)) == BATCHES and not there:
        raise Failure(f"error: --data-dir {quoted(root)} is the {BATCHES} folder itself; give the folder that holds "
                      f"it: --data-dir {quoted(os.path.dirname(os.path.abspath(root)))}")
    if os.path.exists(root) and not os.path.isdir(root):
        raise Failure(f"error: --data-dir {quoted(root)} is not a folder; give the folder that holds {BATCHES}/")
    with contextlib.suppress(OSError), os.scandir(batches) as entries:  # unreadable: torchvision's read says so
        for entry in entries:
            refuse_a_link_to_nothing(entry.path)


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
        refuse_a_link_to_nothing(step)
        place = os.path.realpath(step)
        try:
            os.lstat(place)  # a folder that cannot be read fails here, with the system's reason
        except FileNotFoundError:
            places.append(place)
    return places


def refuse_a_link_to_nothing(path):
    if os.path.islink(path) and not os.path.exists(path):
        raise Failure(f"error: {quoted(path)} is a link that leads nowhere; fix or remove it, or give another "
                      f"--data-dir")


def remove_what_a_download_made(place):
    """Remove place, created by this run: CIFAR-10's own files in it, then each folder left empty. Anything else put
    there meanwhile (by you, or another program) stays, with the folders that hold it."""
    if os.path.isdir(place) and not os.path.islink(place):
        for folder, _, names in os.walk(place, topdown=False):
            for name in set(names) & CIFAR10_FILES:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(folder, name))
            with contextlib.suppress(OSError):  # not empty: something else is there
                os.rmdir(folder)
    elif os.path.basename(place) in CIFAR10_FILES:
        with contextlib.suppress(OSError):
            os.remove(place)
