"""failures.py: the one line that each failure gets, with the system's reason and the advice for its errno (why);
names quoted when they hold a control character (quoted); standard output that cannot be written (StandardOutput): a
closed pipe or a full disk is one line, the trained weights saved first, and output closed from the start is no
error; one_line_for_failures puts sys.stdout back however it ends, and a stop while it ends keeps its one line."""
import contextlib
import errno
import io
import os
import resource
import shutil
import signal
import subprocess
import sys

import pytest
import torch

import failures
import step1
import stop_signals
from helpers import (
    AS_ROOT,
    ONE_EPOCH,
    ROOT,
    a_new_python,
    as_a_user,
    at_low_priority,
    earlier_weights,
    kept_instead,
    listing,
    python_command,
    refused_output,
    run_on_the_tiny_data,
    run_step1,
    run_until_the_save,
    same_weights,
    signalled,
    train,
)
from model import MyNet

# The system's reason, and what to do (why)


def test_a_folder_that_takes_no_new_files_is_not_called_missing(cifar_dir):
    error = refused_output(cifar_dir, "/proc/new.pth")
    assert error.endswith("argument --output: /proc/new.pth cannot be written (No such file or directory: this folder "
                          "takes no new files); choose another path")  # the next step once


def test_as_a_user_a_read_only_disk_is_named_as_one(cifar_dir, tmp_path):
    if not AS_ROOT:  # a user cannot mount: the advice is checked on the errno itself
        assert "the disk is read-only" in failures.why(OSError(errno.EROFS, "Read-only file system"))
        return
    folder = tmp_path / "disk"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(folder)], check=True)
    try:
        with as_a_user():
            error = refused_output(cifar_dir, folder / "w.pth")
    finally:
        subprocess.run(["umount", str(folder)], check=True)
    assert error.endswith("cannot be written (Read-only file system: the disk is read-only: choose a writable one); "
                          "choose another path")


@pytest.mark.parametrize("case, reason", [
    ("a file on the way", "Not a directory: a part of the path is a file, not a folder: fix the path"),
    ("a loop of links on the way", "Too many levels of symbolic links: a link leads back to itself: fix the links"),
])
def test_a_path_that_cannot_lead_anywhere_gets_its_own_advice(cifar_dir, tmp_path, case, reason):
    if case == "a file on the way":
        (tmp_path / "notes").write_text("mine")
        output = tmp_path / "notes" / "w.pth"
    else:
        os.symlink(tmp_path / "b", tmp_path / "a")
        os.symlink(tmp_path / "a", tmp_path / "b")
        output = tmp_path / "a" / "w.pth"
    before = listing(tmp_path)
    error = refused_output(cifar_dir, output)
    assert error.endswith(f"argument --output: {output} cannot be written ({reason}); choose another path")
    assert listing(tmp_path) == before


@pytest.mark.parametrize("number, reason", [(errno.ENOSPC, "No space left on device"),
                                            (errno.EDQUOT, "Disk quota exceeded")])
def test_a_full_disk_and_a_full_quota_both_say_to_free_some_space(number, reason):
    assert failures.why(OSError(number, reason)) == f"{reason}: free some space"


def test_too_many_open_files_says_whose_limit_to_raise(cifar_dir, tmp_path):
    """prlimit --nofile, or ulimit -n: the limit is this program's own (EMFILE), the system's is another (ENFILE)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    open_now = len(os.listdir("/dev/fd")) - 1  # less the listing's own, closed by then
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_now, hard))  # no more than those
    try:
        error = refused_output(cifar_dir, tmp_path / "w.pth")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert error.endswith("cannot be written (Too many open files: this program has as many files open as its limit "
                          "allows: raise the limit (ulimit -n)); choose another path")
    assert failures.why(OSError(errno.ENFILE, "Too many open files in system")) == (
        "Too many open files in system: the system has too many files open: close some programs")


# Names with control characters (quoted)


def test_a_name_with_a_newline_stays_one_line(cifar_dir, tmp_path):
    output = tmp_path / "missing\nfolder" / "w.pth"
    error = refused_output(cifar_dir, output)
    assert error.endswith(f"argument --output: {str(output)!r} cannot be written (No such file or directory: check "
                          f"that the folder is there); choose another path")


def test_the_saved_line_quotes_a_name_with_a_newline(cifar_dir, tmp_path):
    """The last line, "Saved the weights to", names --output by failures.quoted: one line, in Python's quotes."""
    output = tmp_path / "my\nnetwork.pth"
    lines = train(cifar_dir, output, "--epochs", "1", "--limit", "10")
    assert lines[-1].startswith(f"Saved the weights to {str(output)!r} (training and testing took ")
    assert lines[-2] == ""


def test_data_that_is_not_in_a_folder_with_a_newline_is_one_line(tmp_path, offline):
    """data_folder.checked's line for missing data names --data-dir by failures.quoted."""
    data_dir = tmp_path / "data\nsets"
    code, _, err = run_step1(["--data-dir", str(data_dir), "--output", str(tmp_path / "w.pth")])
    assert code == 1
    [line] = err.splitlines()
    assert line.startswith(f"error: CIFAR-10 is not in {str(data_dir)!r} and could not be downloaded (")


@pytest.mark.parametrize("name", ["a\u2028b.pth", "a\x85b.pth", "a\x1b[2Jb.pth", "a\tb.pth"])
def test_a_name_with_any_unprintable_character_is_quoted(name):
    assert failures.quoted(name) == repr(name)
    assert len(f"error: {failures.quoted(name)}".splitlines()) == 1
    assert failures.quoted("mon réseau ✓.pth") == "mon réseau ✓.pth"


def test_a_name_that_is_not_text_shows_the_bytes_the_user_typed(cifar_dir, tmp_path):
    """A Latin-1 name on a UTF-8 system: Python keeps its byte 0xe9 as '\\udce9', which no user typed."""
    output = os.path.join(str(tmp_path), "missing", os.fsdecode(b"r\xe9seau.pth"))
    error = refused_output(cifar_dir, output)
    assert error.endswith(f"argument --output: '{tmp_path}/missing/r\\xe9seau.pth' cannot be written (No such file or "
                          f"directory: check that the folder is there); choose another path")
    assert failures.quoted(os.fsdecode(b"it's\n\xff")) == "'it\\'s\\n\\xff'"


# Standard output (StandardOutput, one_line_for_failures)


def a_run_whose_standard_output_is_a_closed_pipe(cifar_dir, folder):
    """For the new_python marker (conftest.new_pythons): `python -u step1.py | head -0` (the reader gone before the
    first line) over earlier weights. Yields the run, its output file and that file's earlier bytes."""
    output = folder / "my_network.pth"
    earlier = earlier_weights(output)
    command = python_command("step1.py", "--data-dir", cifar_dir, "--output", output, "--device", "cpu", *ONE_EPOCH)
    read, written = os.pipe()
    os.close(read)
    with open(written, "w") as stdout, subprocess.Popen(at_low_priority(command), cwd=ROOT, stdout=stdout,
                                                         stderr=subprocess.PIPE, text=True,
                                                         env=dict(os.environ, PYTHONUNBUFFERED="1")) as run:
        yield run, output, earlier
        run.kill()  # if no test waited for it


@pytest.mark.new_python(start=a_run_whose_standard_output_is_a_closed_pipe)
def test_unbuffered_standard_output_that_cannot_be_written_is_one_line_before_any_training(started):
    """python -u, or PYTHONUNBUFFERED=1 as in containers: the first line fails."""
    run, output, earlier = started
    _, err = run.communicate(timeout=120)
    assert run.returncode == 1
    assert err.splitlines() == ["error: could not print to the standard output (Broken pipe: the program reading the "
                                "output has stopped; send it to a file instead)"]
    assert output.read_bytes() == earlier
    assert os.listdir(output.parent) == ["my_network.pth"]


@pytest.mark.new_python(start=a_new_python)
def test_buffered_standard_output_that_cannot_be_written_is_one_line_after_the_save(started):
    """To a file, here on a full disk, or a pipe: the lines go out at the end, after the save, as Python ends."""
    code, err, output, earlier = started.full_disk_run()
    assert code == 1
    assert err.splitlines() == [f"error: could not print to the standard output (No space left on device: free some "
                                f"space); the weights were saved to {output}"]
    assert output.read_bytes() != earlier
    assert list(torch.load(output, weights_only=True)) == list(MyNet().state_dict())
    assert sorted(os.listdir(output.parent)) == ["err", "my_network.pth", "my_network.pth.checkpoint"]


class ClosedAfter(io.StringIO):
    """Standard output that a reader stops reading once a line with the given text has come, as `head` does."""

    def __init__(self, text):
        super().__init__()
        self.text = text

    def write(self, text):
        if self.text in self.getvalue():
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
        return super().write(text)


def test_standard_output_closed_after_the_last_update_saves_first(cifar_dir, tmp_path, one_epoch_weights):
    output = tmp_path / "my_network.pth"
    earlier_weights(output)
    code, _, err = run_on_the_tiny_data(cifar_dir, output, *ONE_EPOCH, out=ClosedAfter("mini-batch :    2"))
    assert code == 1
    assert err.splitlines() == [
        "error: could not print to the standard output (Broken pipe: the program reading the output has stopped; "
        f"send it to a file instead); the weights were saved to {output} first"]
    assert same_weights(output, one_epoch_weights)


class AsciiOutput(io.TextIOWrapper):
    """Standard output whose encoding is ASCII (LANG=C, or an old terminal): it cannot show a name's é."""

    def __init__(self):
        super().__init__(io.BytesIO(), encoding="ascii")

    def getvalue(self):
        self.flush()
        return self.buffer.getvalue().decode("ascii")


def test_a_name_that_the_outputs_encoding_cannot_show_is_printed_with_escapes(cifar_dir, tmp_path):
    """StandardOutput.write: what the encoding cannot show is written as backslash escapes, not a failure."""
    output = tmp_path / "réseau.pth"
    code, lines, err = run_on_the_tiny_data(cifar_dir, output, "--epochs", "1", "--limit", "10", out=AsciiOutput())
    assert code == 0, err
    escaped = str(output).replace("é", "\\xe9")
    assert lines[-1].startswith(f"Saved the weights to {escaped} (training and testing took ")
    assert list(torch.load(output, weights_only=True)) == list(MyNet().state_dict())


class Buffered(io.TextIOWrapper):
    """Standard output to a file or a pipe, buffered as Python buffers it there: the lines wait, and are written only
    when the buffer is flushed. No lines to give back: getvalue() is for run_step1."""

    def getvalue(self):
        return ""


@pytest.mark.parametrize("where", ["/dev/full", "a pipe whose reader has ended"])
def test_output_that_fails_at_the_last_flush_says_that_the_weights_were_saved(cifar_dir, tmp_path, one_epoch_weights,
                                                                           where):
    """`python step1.py > /dev/full`, or `| true`: every line waits in the buffer, and the writing fails only at the
    end, once the weights are saved. The line says both."""
    output = tmp_path / "my_network.pth"
    if where == "/dev/full":
        out = Buffered(open("/dev/full", "wb"))
    else:
        read, written = os.pipe()
        os.close(read)
        out = Buffered(open(written, "wb"))
    try:
        code, _, err = run_on_the_tiny_data(cifar_dir, output, *ONE_EPOCH, out=out)
    finally:
        with contextlib.suppress(OSError):
            out.close()
    assert code == 1
    reason = "No space left on device: free some space" if where == "/dev/full" else (
        "Broken pipe: the program reading the output has stopped; send it to a file instead")
    assert err.splitlines() == [f"error: could not print to the standard output ({reason}); the weights were saved "
                                f"to {output}"]
    assert same_weights(output, one_epoch_weights)


def test_standard_output_closed_from_the_start_is_no_error(cifar_dir, tmp_path, monkeypatch, skip_md5_check):
    """`python step1.py >&-`: Python then has no sys.stdout, and print() prints nothing."""
    monkeypatch.setattr(sys, "stdout", None)
    with stop_signals.StopSignals(), failures.one_line_for_failures():
        step1.main(["--data-dir", cifar_dir, "--output", str(tmp_path / "w.pth"), "--epochs", "1", "--limit", "20"])
    assert sys.stdout is None
    assert list(torch.load(tmp_path / "w.pth", weights_only=True)) == list(MyNet().state_dict())


@pytest.mark.parametrize("ending", ["done", "a failure", "a stop"])
def test_standard_output_is_put_back_however_the_block_ends(ending):
    """Within, print() goes through a checking wrapper; after, as before: a caller that goes on (a notebook, the
    tests) must not print through a wrapper of a stream that it may have replaced or closed since."""
    found = sys.stdout
    with contextlib.suppress(SystemExit, KeyboardInterrupt):  # a stop goes on, for python step1.py to end by it
        with failures.one_line_for_failures():
            assert isinstance(sys.stdout, failures.StandardOutput)
            if ending == "a failure":
                raise failures.Failure("error: something")
            if ending == "a stop":
                raise KeyboardInterrupt
    assert sys.stdout is found


def test_a_failure_after_standard_output_was_closed_is_still_its_one_line():
    """end_with(): flushing a closed stream raises ValueError, which silence() sets aside as it does an OSError."""
    closed = io.TextIOWrapper(io.BytesIO())
    closed.close()
    with pytest.raises(SystemExit) as exit:
        failures.end_with("error: something", closed)
    assert exit.value.code == "error: something"


# A stop while a failure ends the run (end_with)


def test_a_stop_while_a_failure_ends_the_run_keeps_its_one_line(cifar_dir, tmp_path, monkeypatch, temporary_folder,
                                                                one_epoch_weights):
    output = tmp_path / "run" / "my_network.pth"
    output.parent.mkdir()
    signalled(monkeypatch, "failures.silence", signal.SIGTERM, before=True)
    code, _, err = run_until_the_save(cifar_dir, output, lambda: shutil.rmtree(output.parent))
    assert code == 1
    kept = kept_instead(err, output, "No such file or directory: check that the folder is there", temporary_folder)
    assert same_weights(kept, one_epoch_weights)
