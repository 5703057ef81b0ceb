"""Ctrl-C, a kill or a closed terminal: a stop that the program sees as an exception, so that it can end cleanly.

Python's default for SIGTERM and SIGHUP (what `timeout`, Slurm, `docker stop` and a closed ssh session send) ends the
process on the spot, whatever it was writing, and Ctrl-C's KeyboardInterrupt can come a second time while the first
is being handled. Within StopSignals, the first stop signal raises Stopped where the program is, so that code that
must run before the end (saving trained weights: safe_saving.py) gets to run; later ones are ignored, since the
program is already ending. Only the main thread may handle signals (Python's rule): elsewhere these do nothing.
"""
import contextlib
import signal
import threading

# Ctrl-C; the kill that timeout, Slurm and docker stop send; a closed terminal or ssh session (not on Windows).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Stopped(KeyboardInterrupt):
    """A stop signal came: the program is to end. A KeyboardInterrupt, so that code that handles Ctrl-C handles it."""


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
    """Within: the first stop signal raises Stopped; later ones do nothing. The handlers found are put back after."""

    def __enter__(self):
        self.found = handlers_found() if in_the_main_thread() else {}
        set_handlers(self.found, self.stop)
        return self

    def stop(self, signal_number, frame):
        set_handlers(self.found, do_nothing)
        raise Stopped(signal.Signals(signal_number).name)

    def __exit__(self, *exception):
        for number, handler in self.found.items():
            signal.signal(number, handler)


@contextlib.contextmanager
def deferred():
    """Within: a stop signal waits, so that what runs here (a save) is not cut short; after, each that came goes to
    the handler found, as if it came then. Blocking the signal instead would not do: another thread could take it.
    If the handler found is StopSignals' own and all went well, the program has done its work: a stop that came, or
    comes later, has nothing left to stop, and does nothing."""
    found = handlers_found() if in_the_main_thread() else {}
    came = []
    set_handlers(found, lambda signal_number, frame: came.append(signal_number))
    went_well = False
    try:
        yield
        went_well = True
    finally:
        done = {number for number, handler in found.items() if went_well and isinstance(
            getattr(handler, "__self__", None), StopSignals)}
        for number, handler in found.items():
            signal.signal(number, do_nothing if number in done else handler)
        for number in came:
            if number not in done:
                signal.raise_signal(number)


def ignored_from_now_on():
    """The program has done its work: a stop signal during Python's own ending (a moment) would only add a traceback."""
    if in_the_main_thread():
        set_handlers(handlers_found(), signal.SIG_IGN)
