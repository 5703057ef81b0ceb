"""The one line that every failure gets: what went wrong, in the system's words, and what to do next.

A user who gives a wrong path or runs out of disk space should read one line that says so, not a traceback. Each
module raises Failure where the failure happens, with that line as its message; step1.py turns it into the line and
exit status 1 in one place, one_line_for_failures(). The reasons come from the system (an OSError's errno, a file's
type from lstat), never from a guess at the cause.
"""
import contextlib
import errno
import os
import stat
import sys


class Failure(Exception):
    """A failure the user can act on. Its message is the whole line to print."""


# What to do next, by errno: for each that saving the weights or reading the data can meet.
ADVICE = {
    errno.ENOSPC: "free some space",
    errno.EDQUOT: "free some space",
    errno.EFBIG: "the file is larger than a limit allows (ulimit -f, or the disk's format): choose another disk",
    errno.EACCES: "fix the permissions",
    errno.EPERM: "fix the permissions",
    errno.EROFS: "the disk is read-only: choose a writable one",
    errno.EBUSY: "it is in use, or mounted there: choose another path",
    errno.ETXTBSY: "it is in use: choose another path",
    errno.ENAMETOOLONG: "use a shorter name",
    errno.ENOTDIR: "a part of the path is a file, not a folder: fix the path",
    errno.EISDIR: "it is a folder: give a file name",
    errno.ELOOP: "a link leads back to itself: fix the links",
    errno.EXDEV: "choose a path on the same disk",
    errno.EIO: "the disk failed to read or write: check it, or choose another",
    errno.EINVAL: "this place does not take files: choose another path",
    errno.EMFILE: "this program has as many files open as its limit allows: raise the limit (ulimit -n)",
    errno.ENFILE: "the system has too many files open: close some programs",
}


def why(error):
    """The system's reason for an OSError, and what to do about it."""
    reason = (error.strerror or os.strerror(error.errno)) if error.errno else str(error)
    if error.errno == errno.ENOENT:
        folder = os.path.dirname(error.filename) if isinstance(error.filename, str) else None
        there = folder is not None and os.path.isdir(folder or ".")
        return f"{reason}: " + ("this folder takes no new files" if there else "check that the folder is there")
    advice = ADVICE.get(error.errno, "choose another path")
    return f"{reason}: {advice}"


def quoted(path):
    """path as it is, or in Python's quotes if it holds a newline or another control character: one line stays one. A
    byte that the system's encoding could not read (Python keeps it as a lone surrogate, '\\udcff') is shown as the
    byte the user typed, '\\xff'."""
    text = os.fsdecode(path)
    if text.isprintable():  # not printable: C0 and C1 controls, line and page breaks, bytes that are not text
        return text
    return "'" + "".join(escaped(character) for character in text) + "'"


def escaped(character):
    """One character of a name, as in Python's quotes."""
    if "\udc80" <= character <= "\udcff":  # the byte 0x80 to 0xff, as os.fsdecode keeps one that is not text
        return f"\\x{ord(character) - 0xDC00:02x}"
    if character in "'\\":
        return "\\" + character
    return character if character.isprintable() else repr(character)[1:-1]


def kind_of(mode):
    """What a file that is not a regular file is, by its lstat mode."""
    kinds = [(stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a link"), (stat.S_ISFIFO, "a named pipe"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")]
    return next((name for test, name in kinds if test(mode)), "not a regular file")


class StandardOutput:
    """sys.stdout, whose failures (a closed pipe, a full disk) raise Failure: one line, not a traceback."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        with self.failure_if_it_fails():
            try:
                return self.stream.write(text)
            except UnicodeEncodeError:  # a name that the output's encoding cannot show: shown with escapes
                encoding = self.stream.encoding or "ascii"
                return self.stream.write(text.encode(encoding, "backslashreplace").decode(encoding))

    def flush(self):
        with self.failure_if_it_fails():
            self.stream.flush()

    @contextlib.contextmanager
    def failure_if_it_fails(self):
        try:
            yield
        except OSError as error:
            reason = (f"{error.strerror}: the program reading the output has stopped; send it to a file instead"
                      if error.errno == errno.EPIPE else why(error))
            raise Failure(f"error: could not print to the standard output ({reason})") from error

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextlib.contextmanager
def one_line_for_failures():
    """Within: a Failure ends the program with its one line on standard error and exit status 1; a stop
    (KeyboardInterrupt) prints its line there, then goes on, for the program to end as its signal would. Standard
    output is checked too: a closed pipe or a full disk is a Failure."""
    output = sys.stdout
    if output is not None:  # None: started with standard output closed, and print() prints nothing
        sys.stdout = StandardOutput(output)
    try:
        yield
        if output is not None:
            sys.stdout.flush()  # what is still buffered: a full disk shows here, not in Python's own ending
    except Failure as failure:
        end_with(str(failure), output)
    except KeyboardInterrupt as stop:
        with contextlib.suppress(KeyboardInterrupt):  # another stop while the program ends: this one's line stands
            silence(output)
            print(str(stop) or "\ninterrupted", file=sys.stderr)
        raise
    finally:
        sys.stdout = output


def add_line(error, line):
    """line under error's traceback (Python 3.11 and later; before, above it): an error that is no failure the user
    can act on (a bug, memory that ran out) is shown whole, with what was kept despite it."""
    if hasattr(error, "add_note"):
        error.add_note(line)
    else:
        print(line, file=sys.stderr)


def end_with(line, output):
    """Exit with line on standard error and status 1, whatever output still holds."""
    with contextlib.suppress(KeyboardInterrupt):  # another stop while the program ends: the line says what happened
        silence(output)
    sys.exit(line)


def silence(output):
    """Throw away what output still holds, if it cannot be written: Python's ending would print an error for it."""
    if output is None:
        return
    try:
        output.flush()
    except (OSError, ValueError):
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), output.fileno())
