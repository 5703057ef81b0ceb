"""failures.py: the one line that each failure gets, with the system's reason and the advice for its errno (why);
names quoted when they hold a control character (quoted); standard output that cannot be written (StandardOutput): a
closed pipe or a full disk is one line, the trained weights saved first, and output closed from the start is no
error; one_line_for_failures puts sys.stdout back however it ends, and a stop while it ends keeps its one line."""
import contextlib
import errno
import io
import os
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
    ROOT,
    as_a_user,
    earlier_weights,
    kept_instead,
    listing,
    python_command,
    refused_output,
    run_on_the_tiny_data,
    run_until_the_save,
    same_weights,
    signalled,
)
from model import MyNet

# The system's reason, and what to do (why)


def test_a_folder_that_takes_no_new_files_is_not_called_missing(cifar_dir):
    error = refused_output(cifar_dir, "/proc/new.pth")
    assert error.endswith("argument --output: /proc/new.pth cannot be written (No such file or directory: this folder "
                          "takes no new files, choose another); choose another path")


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


# Names with control characters (quoted)


def test_a_name_with_a_newline_stays_one_line(cifar_dir, tmp_path):
    output = tmp_path / "missing\nfolder" / "w.pth"
    error = refused_output(cifar_dir, output)
    assert error.endswith(f"argument --output: {str(output)!r} cannot be written (No such file or directory: check "
                          f"that the folder is there); choose another path")


@pytest.mark.parametrize("name", ["a\u2028b.pth", "a\x85b.pth", "a\x1b[2Jb.pth", "a\tb.pth"])
def test_a_name_with_any_unprintable_character_is_quoted(name):
    assert failures.quoted(name) == repr(name)
    assert len(f"error: {failures.quoted(name)}".splitlines()) == 1
    assert failures.quoted("mon réseau ✓.pth") == "mon réseau ✓.pth"


# Standard output (StandardOutput, one_line_for_failures)


def runs_whose_standard_output_fails(cifar_dir, folder):
    """For the new_python marker (conftest.new_pythons): two runs of `python step1.py`, side by side, each over
    earlier weights in a folder of its own, whose standard output cannot be written: a closed pipe, unbuffered, and
    /dev/full, buffered. Yields {where: (the run, its output file, that file's earlier bytes)}."""
    runs = {}
    with contextlib.ExitStack() as stack:
        for where in ("a closed pipe, unbuffered", "/dev/full"):
            place = folder / ("pipe" if where.endswith("unbuffered") else "full")
            place.mkdir()
            output = place / "my_network.pth"
            earlier = earlier_weights(output)
            command = python_command("step1.py", "--data-dir", cifar_dir, "--output", output, "--device", "cpu",
                                     "--epochs", "1", "--limit", "20")
            if where == "/dev/full":
                stdout = open("/dev/full", "w")
            else:  # as `python step1.py | head -0`: the reader is gone before the first line
                read, written = os.pipe()
                os.close(read)
                stdout = open(written, "w")
            with stdout:
                env = dict(os.environ, PYTHONUNBUFFERED="1" if where.endswith("unbuffered") else "")
                process = stack.enter_context(subprocess.Popen(command, cwd=ROOT, stdout=stdout,
                                                               stderr=subprocess.PIPE, text=True, env=env))
            runs[where] = (process, output, earlier)
        yield runs
        for process, _, _ in runs.values():
            process.kill()  # if no test waited for it


@pytest.mark.new_python(start=runs_whose_standard_output_fails)
def test_standard_output_that_cannot_be_written_is_one_line(started):
    """Unbuffered (python -u, PYTHONUNBUFFERED=1 as in containers), the first line fails, before any training;
    buffered (to a file, here a full one, or a pipe), the lines go out at the end, after the save."""
    for where, (process, output, earlier) in started.items():
        _, err = process.communicate(timeout=120)
        assert process.returncode == 1, where
        reason = "No space left on device: free some space" if where == "/dev/full" else (
            "Broken pipe: the program reading the output has stopped; send it to a file instead")
        assert err.splitlines() == [f"error: could not print to the standard output ({reason})"]
        if where.endswith("unbuffered"):
            assert output.read_bytes() == earlier
        else:
            assert output.read_bytes() != earlier
            assert list(torch.load(output, weights_only=True)) == list(MyNet().state_dict())
        assert os.listdir(output.parent) == ["my_network.pth"]


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
    code, _, err = run_on_the_tiny_data(cifar_dir, output, "--epochs", "1", out=ClosedAfter("mini-batch :   12"))
    assert code == 1
    assert err.splitlines() == [
        "error: could not print to the standard output (Broken pipe: the program reading the output has stopped; "
        f"send it to a file instead); the weights were saved to {output} first"]
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
    with contextlib.suppress(SystemExit):
        with failures.one_line_for_failures():
            assert isinstance(sys.stdout, failures.StandardOutput)
            if ending == "a failure":
                raise failures.Failure("error: something")
            if ending == "a stop":
                raise KeyboardInterrupt
    assert sys.stdout is found


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
