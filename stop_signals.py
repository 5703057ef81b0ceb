"""Ctrl-C, a kill or a closed terminal: a stop that the program sees as an exception, so that it can end cleanly,
and then ends as the signal would have ended it.

Python's default for SIGTERM and SIGHUP (what `timeout`, Slurm, `docker stop` and a closed ssh session send) ends the
process on the spot, whatever it was writing, and Ctrl-C's KeyboardInterrupt can come a second time while the first
is being handled. Within StopSignals, the first stop signal raises Stopped where the program is, so that code that
must run before the end (saving trained weights: safe_saving.py; saving a checkpoint: checkpoints.py) gets to run;
later ones are ignored, since the program is already ending. Only the main thread may handle signals (Python's rule):
elsewhere these do nothing.

Once its one line is printed, end_as_the_signal_would() ends the process by the same signal, with the system's
default action: a shell sees 130 for Ctrl-C, 143 for a kill, and a shell loop stops instead of going on to its next
command. SIGQUIT (Ctrl-\\) is left alone, on purpose: it asks for a hard quit, like kill -9, and gets one.
"""
import contextlib
import os
import signal
import sys
import threading

# Ctrl-C; the kill that timeout, Slurm and docker stop send; a closed terminal or ssh session; Slurm's --signal
# warning before a time limit (USR1, USR2); a CPU-time limit (XCPU); an alarm. Each ends the process by default.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2",
                                                        "SIGXCPU", "SIGALRM") if hasattr(signal, name))
NO_WEIGHTS_SAVED = "\ninterrupted: no weights were saved"


class Stopped(KeyboardInterrupt):
    """A stop signal came: the program is to end. A KeyboardInterrupt, so that code that handles Ctrl-C handles it.
    Its message is the line to end with; signal_number, the signal to end by."""

    def __init__(self, line=NO_WEIGHTS_SAVED, signal_number=signal.SIGINT):
        super().__init__(line)
        self.signal_number = signal_number


def stopped_again(stop, line):
    """The same stop, with another line to end with: what was done before the program ends."""
    return Stopped(line, signal_number_of(stop))


def signal_number_of(stop):
    """The signal that stop came by: Python's own KeyboardInterrupt comes by Ctrl-C's SIGINT."""
    return getattr(stop, "signal_number", signal.SIGINT)


def in_the_main_thread():
    return threading.current_thread() is threading.main_thread()


def handlers_found():
    """The handler of each stop signal that this program may handle: not one ignored as it started (nohup ignores
    SIGHUP, a shell ignores Ctrl-C for a job in the background): the user chose to have those ignored."""
    found = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    return {number: handler for number, handler in found.items() if handler is not signal.SIG_IGN}


def set_handlers(numbers, handler):
    for number in numbers:
        signal.signal(number, handler)


def do_nothing(signal_number, frame):
    """A stop signal while the program already ends. (Not SIG_IGN: with it, a signal that came just before would make
    Python print an error.)"""


class StopSignals:
    """Within: the first stop signal raises Stopped; later ones do nothing. The handlers found are put back after.
    Once the program's work is done (deferred(the_end=True)), a stop lets it end as it would, then raises Stopped
    as the block ends, for the program to end by that signal."""

    def __enter__(self):
        self.found = handlers_found() if in_the_main_thread() else {}
        self.came_at_the_end = None
        set_handlers(self.found, self.stop)
        return self

    def stop(self, signal_number, frame):
        set_handlers(self.found, do_nothing)
        raise Stopped(signal_number=signal_number)

    def at_the_end(self, signal_number, frame):
        if self.came_at_the_end is None:
            self.came_at_the_end = signal_number

    def __exit__(self, kind, error, traceback):
        for number, handler in self.found.items():
            signal.signal(number, handler)
        if error is None and self.came_at_the_end is not None:  # nothing more to say: the run said how it ended
            raise Stopped("", self.came_at_the_end)


@contextlib.contextmanager
def deferred(the_end=False):
    """Within: a stop signal waits, so that what runs here (a save) is not cut short; after, each that came goes to
    the handler found, as if it came then. Blocking the signal instead would not do: another thread could take it.
    the_end: what runs here is the program's last work. If the handler found is StopSignals' own and all went well,
    the program has then done its work: a stop that came, or comes later, has nothing left to stop; the program ends
    as it would, then by that signal (StopSignals.at_the_end), so that a shell loop stops."""
    found = handlers_found() if in_the_main_thread() else {}
    came = []
    set_handlers(found, lambda signal_number, frame: came.append(signal_number))
    went_well = False
    try:
        yield
        went_well = True
    finally:
        done = {number for number, handler in found.items() if the_end and went_well and isinstance(
            getattr(handler, "__self__", None), StopSignals)}
        for number, handler in found.items():
            signal.signal(number, handler.__self__.at_the_end if number in done else handler)
        for number in came:
            if number in done:
                found[number].__self__.at_the_end(number, None)
            else:
                signal.raise_signal(number)


def ignored_from_now_on():
    """The program has done its work: a stop signal during Python's own ending (a moment) would only add a traceback."""
    if in_the_main_thread():
        set_handlers(handlers_found(), signal.SIG_IGN)


def end_as_the_signal_would(stop):
    """End the process by stop's signal, with the system's default action, once its line is printed: a shell then
    knows that its child was stopped (status 128 + the signal's number) and stops a loop."""
    number = signal_number_of(stop)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # closed, or its reader gone: nothing more can be shown there
            stream.flush()
    signal.signal(number, signal.SIG_DFL)
    signal.raise_signal(number)
    os._exit(128 + number)  # only where the default action does not end the process (not on Linux or macOS)
