"""Checkpoints: a run stopped at any moment, however it stops, loses at most the epoch in progress.

Ten epochs take minutes to an hour, and a Ctrl-C, a kill, the out-of-memory killer or a power cut would lose them all.
So each epoch ends with a checkpoint: the weights, the optimizer's state (its momentum), the epoch, the options that
decide the training, and every random state that the rest of the run draws from. `python step1.py --resume`, with
the same options, goes on from the last one, and on a CPU ends with the very weights of a run that was never stopped.

- The checkpoint is --output's name with .checkpoint added: two runs with different outputs never share one.
- It is written as the weights are (safe_saving.write_then_rename): a new file, synced, then renamed, so it is
  never half-written, and stop signals wait until it is. A file already at its name is replaced only if it is a
  checkpoint of this script.
- It is read with torch.load(..., weights_only=True): dicts, tensors, numbers and strings, never code. Anything
  wrong with it (missing, damaged, another network's, other options) is one line, before the data is read.
- It is kept after a run that finishes: --resume with a higher --epochs then trains longer.

main() seeds torch's random numbers, so a notebook that calls it would then draw the same numbers whatever seed it had
set: random_numbers_given_back gives a caller its own random states back, however main() ends.
"""
import contextlib
import functools
import io
import os
import shlex
import shutil
import sys
import warnings
import zipfile
from collections.abc import Mapping

import torch
import torch.optim as optim

import safe_saving
import stop_signals
from failures import Failure, add_line, quoted, why
from model import MyNet

FORMAT = "step1.py checkpoint, version 1"  # what marks a checkpoint of this script, and of which contents
TRAINING_OPTIONS = ("seed", "batch_size", "lr", "momentum", "limit")  # those that decide the weights, epoch by epoch


class Checkpoints:
    """A run's checkpoint: checked, and read with --resume, when made (before the data is read); resume() after the
    network and the optimizer are made; save() at the end of each epoch. Within, a stop during training ends with a
    line that names the last finished epoch and the command that goes on from it."""

    def __init__(self, args, argv):
        self.path = args.output + ".checkpoint"
        self.options = {name: getattr(args, name) for name in TRAINING_OPTIONS}
        self.command = resume_command(argv)
        self.epochs = args.epochs
        self.last_epoch = None  # the last finished epoch whose checkpoint is on the disk
        self.resumed = read(self.path, self.options, args.epochs) if args.resume else None
        # As --output is checked, now rather than at the end of the first epoch. A checkpoint is about twice the
        # weights' size, and the next is written before the last is replaced: room for two.
        try:
            safe_saving.check_output(self.path, what_it_holds_unless_a_checkpoint,
                                     probe=4 * safe_saving.weights_of_a_new_mynet())
        except Failure as failure:
            raise Failure(f"error: the checkpoint of --output: {failure}") from failure

    def resume(self, model, optimizer):
        """With --resume: the weights, the optimizer's state and the random states of the checkpoint, and the epoch
        after its own. Without: 0, the first epoch."""
        if self.resumed is None:
            return 0
        model.load_state_dict(self.resumed["model"])
        optimizer.load_state_dict(self.resumed["optimizer"])
        set_random_states(self.resumed["random"], next(model.parameters()).device)
        self.last_epoch = self.resumed["epoch"]
        return self.last_epoch + 1

    def save(self, model, optimizer, epoch):
        """The checkpoint of a finished epoch. One that cannot be written (a disk filled up meanwhile) is a warning:
        training goes on, and its weights are still saved at the end, or kept elsewhere."""
        device = next(model.parameters()).device
        checkpoint = {"format": FORMAT, "epoch": epoch, "options": self.options, "model": model.state_dict(),
                      "optimizer": optimizer.state_dict(), "random": random_states(device)}
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        with stop_signals.deferred():
            try:
                safe_saving.write_then_rename(buffer.getvalue(), self.path,
                                              holds_something_else=what_it_holds_unless_a_checkpoint)
            except (OSError, Failure) as error:
                reason = why(error) if isinstance(error, OSError) else str(error)
                warning = (f"warning: could not save the checkpoint of epoch {epoch} to {quoted(self.path)} "
                           f"({reason}); training goes on")
                with contextlib.suppress(OSError):  # error output on a full disk too: the warning is lost, not the run
                    print(warning, file=sys.stderr)
                return
            self.last_epoch = epoch  # before a stop that waited is passed on: the line names this epoch

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        # Once every epoch's checkpoint is saved, there is nothing to go on from: the ending is the weights' concern.
        if self.last_epoch is None or self.last_epoch + 1 >= self.epochs:
            return False
        where = f"{quoted(self.path)}. To go on from it: {self.command}"
        if isinstance(error, KeyboardInterrupt):
            raise stop_signals.stopped_again(
                error, f"\ninterrupted during epoch {self.last_epoch + 1}; the checkpoint of epoch {self.last_epoch} "
                       f"is in {where}") from None
        if isinstance(error, Exception) and not isinstance(error, Failure):  # a bug, memory run out: seen whole
            add_line(error, f"The checkpoint of epoch {self.last_epoch} is in {where}")
        return False


def resume_command(argv):
    """The command that resumes this run, as a shell takes it: this Python (by its name where the shell finds it so),
    step1.py and the same options, each quoted."""
    python = os.path.basename(sys.executable)
    if shutil.which(python) != sys.executable:
        python = sys.executable
    step1 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "step1.py")
    try:
        step1 = os.path.relpath(step1)
    except ValueError:  # Windows: on another drive than the current folder
        pass
    options = list(argv) if "--resume" in argv else [*argv, "--resume"]
    return " ".join(shell_quoted(word) for word in [python, step1, *options])


def shell_quoted(word):
    """word as bash and zsh read it back: in single quotes where needed; a line break, a tab or a byte that is not
    text in $'...', with escapes, so that the command stays one line and means the same name."""
    if word.isprintable():
        return shlex.quote(word)
    escaped = "".join(chr(byte) if 32 <= byte < 127 and chr(byte) not in "\\'" else f"\\x{byte:02x}"
                      for byte in os.fsencode(word))
    return f"$'{escaped}'"


def random_states(device):
    """Every random state that the rest of the run draws from: the CPU's (the order of the images, and dropout on
    the CPU), and the GPU's where the run trains on one (dropout there)."""
    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    if device.type == "mps":
        states["mps"] = torch.mps.get_rng_state()
    return states


def random_numbers_given_back(main):
    """main(), giving back the random states that it found: the CPU's and those of the GPUs already started (CUDA's,
    Apple's MPS). A GPU that main() starts had drawn nothing for the caller: it is seeded again as it would have been,
    with the caller's last torch.manual_seed (lazily, if main() did not start it)."""
    @functools.wraps(main)
    def given_back(*args, **kwargs):
        seed = torch.initial_seed()  # what the caller's last torch.manual_seed set, on every device
        cpu = torch.get_rng_state()
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        mps = torch.mps.get_rng_state() if torch.backends.mps.is_built() and torch.backends.mps.is_available() else None
        try:
            return main(*args, **kwargs)
        finally:
            torch.set_rng_state(cpu)
            if cuda is None:
                torch.cuda.manual_seed_all(seed)
            else:
                torch.cuda.set_rng_state_all(cuda)
            if mps is not None:
                torch.mps.set_rng_state(mps)
    return given_back


def set_random_states(states, device):
    """Give back the states of random_states(); a GPU's only where the run trains on that kind of GPU again."""
    torch.set_rng_state(states["cpu"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)
    if device.type == "mps" and "mps" in states:
        torch.mps.set_rng_state(states["mps"])


def read(path, options, epochs):
    """The checkpoint at path, if it is one of this script, of MyNet, trained with the same options, with epochs
    left to train. Otherwise raises Failure, whose line says what is wrong and what to do."""
    try:
        with open(path, "rb") as file:
            checkpoint = checkpoint_in(file)
    except FileNotFoundError:
        raise Failure(f"error: --resume: there is no checkpoint {quoted(path)}; a run with the same --output "
                      f"writes it at the end of its first epoch. Run without --resume to start from the first "
                      f"epoch.") from None
    except OSError as error:
        raise Failure(f"error: --resume: could not read the checkpoint {quoted(path)} ({why(error)})") from error
    if isinstance(checkpoint, str):
        raise Failure(f"error: --resume: {quoted(path)} holds {checkpoint}, not a checkpoint that can resume this run. "
                      f"Run without --resume to start from the first epoch (it replaces only a checkpoint).")
    for name, value in options.items():
        if checkpoint["options"][name] != value:
            option = "--" + name.replace("_", "-")
            raise Failure(f"error: --resume: the checkpoint {quoted(path)} was trained with {option} "
                          f"{checkpoint['options'][name]}, not {value}; resume with {option} "
                          f"{checkpoint['options'][name]}, or start from the first epoch without --resume")
    if checkpoint["epoch"] + 1 >= epochs:
        raise Failure(f"error: --resume: the checkpoint {quoted(path)} has done all {checkpoint['epoch'] + 1} epochs "
                      f"of --epochs {epochs}; to train longer, give a higher --epochs (its weights, those of the run, "
                      f"are torch.load(path, weights_only=True)['model'])")
    return checkpoint


def what_it_holds_unless_a_checkpoint(file):
    """None if file holds a checkpoint of this script; otherwise what it holds, in a few words."""
    checkpoint = checkpoint_in(file)
    return checkpoint if isinstance(checkpoint, str) else None


def checkpoint_in(file):
    """The checkpoint in an open file, checked against MyNet and SGD without using any memory; or, if the file
    holds something else, what it holds, in a few words."""
    try:
        # torch.save writes a zip, whose every part has a checksum that torch.load does not check: a flipped bit
        # would resume a damaged run.
        if zipfile.ZipFile(file).testzip() is not None:
            raise ValueError("a part that does not match its checksum")
        file.seek(0)
        with warnings.catch_warnings():  # torch.load's warnings about what it reads: the line says enough
            warnings.simplefilter("ignore")
            checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception:  # damaged, or not a checkpoint: each kind of file fails in its own way
        return "nothing that torch.load can read as a checkpoint (a damaged or cut-off file, or another kind)"
    if not isinstance(checkpoint, Mapping) or not str(checkpoint.get("format", "")).startswith("step1.py checkpoint"):
        return "something other than a checkpoint of step1.py"
    if checkpoint["format"] != FORMAT:
        return f"a checkpoint of another version of step1.py ({checkpoint['format']})"
    try:
        check_contents(checkpoint)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError):
        return "a checkpoint of another network, or a damaged one"
    return checkpoint


def check_contents(checkpoint):
    """Raise an error unless the checkpoint's parts fit MyNet, SGD, the options and the random states."""
    with torch.device("meta"):  # no memory, no random numbers drawn: only the names and shapes matter
        model = MyNet()
    # Strict: the same names, with the same shapes. A copy: assign=True would also mark the checkpoint's own
    # metadata, and resume() would then put its tensors in place of the network's, which the optimizer updates.
    model.load_state_dict(dict(checkpoint["model"]), assign=True)
    parameters = list(model.parameters())
    optim.SGD(parameters, lr=1).load_state_dict(checkpoint["optimizer"])  # the same groups, of the same sizes
    state = checkpoint["optimizer"]["state"]
    if checkpoint["options"]["momentum"] and len(state) != len(parameters):  # SGD keeps a momentum for each
        raise ValueError("a momentum missing")
    for index, parameter_state in state.items():
        if parameter_state["momentum_buffer"].shape != parameters[index].shape:
            raise ValueError("a momentum of another shape than its weights")
    if not all(tensor.isfinite().all() for tensor in checkpoint["model"].values()):
        raise ValueError("weights that are no longer numbers")
    if set(checkpoint["options"]) != set(TRAINING_OPTIONS) or type(checkpoint["epoch"]) is not int \
            or checkpoint["epoch"] < 0:
        raise ValueError("other options, or no epoch")
    with torch.random.fork_rng(devices=[]):  # the run's own random numbers stay as they are
        torch.set_rng_state(checkpoint["random"]["cpu"])  # refuses a state of another size or type
