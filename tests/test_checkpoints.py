"""checkpoints.py: a checkpoint at the end of each epoch, and --resume from it to the very weights and lines of a run
that was never stopped; the refused resumes, each with its one line; a stop that names the command that goes on, and
ends the process by its own signal.

Stops come at four places of epoch 1 of 3 (during its training, in its accuracy pass, during its checkpoint's save,
after it), by each stop signal in this process, and by SIGKILL in a process forked for it."""
import contextlib
import errno
import io
import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import traceback

import pytest
import torch

import checkpoints
import safe_saving
import step1
from helpers import (
    ROOT,
    a_new_python,
    an_error_in_a_run,
    earlier_weights,
    run_on_the_tiny_data,
    same_weights,
    send_here,
    signalled,
    skip_md5,
    train,
)
from model import MyNet

RUN = ["--epochs", "3", "--limit", "40"]  # 4 mini-batches an epoch: 40 training and 40 test images
PHASES = ["during its training", "in its accuracy pass", "during its checkpoint's save", "after its checkpoint"]
# The checkpoint that a stop in epoch 1 leaves: epoch 1's once its save has begun (a stop waits for it to end).
LAST_EPOCH_KEPT = {"during its training": 0, "in its accuracy pass": 0, "during its checkpoint's save": 1,
                   "after its checkpoint": 1}


@pytest.fixture(scope="module")
def uninterrupted(cifar_dir, tmp_path_factory):
    """The lines and weights of a run of 3 epochs that nothing stops."""
    output = tmp_path_factory.mktemp("uninterrupted") / "my_network.pth"
    lines = train(cifar_dir, output, *RUN)
    return lines, torch.load(output, weights_only=True)


def epoch_lines(lines, first_epoch=0):
    return [line for line in lines if line.startswith("Epoch : ") and int(line.split(",")[0][8:]) >= first_epoch]


def stop_in_epoch_1(patch, phase, stop):
    """Have stop() called at the given place of epoch 1 (the second of 3)."""
    calls = {"to_float": 0, "accuracy": 0, "replace": 0}

    def counted(module, name, real, call_number, before):
        def call(*args, **kwargs):
            calls[name] += 1
            if before and calls[name] == call_number:
                stop()
            returned = real(*args, **kwargs)
            if not before and calls[name] == call_number:
                stop()
            return returned
        patch.setattr(module, name, call)

    # to_float: 6 calls an epoch, 4 mini-batches, then 2 accuracy passes; one rename for each epoch's checkpoint.
    if phase == "during its training":
        counted(step1, "to_float", step1.to_float, 6 + 2, before=True)
    elif phase == "in its accuracy pass":
        counted(step1, "accuracy", step1.accuracy, 2 + 2, before=True)
    elif phase == "during its checkpoint's save":  # written and synced, not yet renamed
        counted(os, "replace", os.replace, 2, before=True)
    else:
        counted(os, "replace", os.replace, 2, before=False)


def where_to_go_on(output, last_epoch, cifar_dir):
    """The checkpoint of a run with RUN's options, and the command that goes on from it."""
    python = os.path.basename(sys.executable)  # as a shell finds it, if it does
    if shutil.which(python) != sys.executable:
        python = sys.executable
    command = shlex.join([python, os.path.relpath(os.path.join(ROOT, "step1.py")),
                          "--data-dir", cifar_dir, "--output", str(output), "--device", "cpu", *RUN, "--resume"])
    return f"the checkpoint of epoch {last_epoch} is in {output}.checkpoint. To go on from it: {command}"


def resume_line(output, last_epoch, cifar_dir):
    return f"\ninterrupted during epoch {last_epoch + 1}; {where_to_go_on(output, last_epoch, cifar_dir)}\n"


def assert_resumed_as_uninterrupted(cifar_dir, output, last_epoch, uninterrupted):
    lines = train(cifar_dir, output, *RUN, "--resume")
    expected_lines, expected_weights = uninterrupted
    assert f"Resumed after epoch {last_epoch}, from {output}.checkpoint" in lines
    assert epoch_lines(lines) == epoch_lines(expected_lines, first_epoch=last_epoch + 1)
    assert same_weights(output, expected_weights)  # bitwise


# Each phase with Ctrl-C; the other stop signals, which step1.py handles as it handles Ctrl-C, in one phase each: a
# kill, a closed terminal, Slurm's warnings before a time limit (USR1, USR2), a CPU-time limit (XCPU), an alarm.
@pytest.mark.parametrize("phase, number", [(phase, signal.SIGINT) for phase in PHASES]
                         + [(PHASES[0], signal.SIGTERM), (PHASES[2], signal.SIGHUP)]
                         + [(PHASES[0], number) for number in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGXCPU,
                                                               signal.SIGALRM)])
def test_a_run_stopped_in_any_phase_resumes_to_the_uninterrupted_runs_weights(cifar_dir, tmp_path, uninterrupted,
                                                                              phase, number):
    output = tmp_path / "my_network.pth"
    with pytest.MonkeyPatch.context() as patch:
        stop_in_epoch_1(patch, phase, lambda: send_here(number))
        code, lines, err = run_on_the_tiny_data(cifar_dir, output, *RUN)
    assert code == -number  # python step1.py ends by the signal
    last_epoch = LAST_EPOCH_KEPT[phase]
    assert err == resume_line(output, last_epoch, cifar_dir)
    assert sorted(os.listdir(tmp_path)) == ["my_network.pth.checkpoint"]  # nothing half-written
    assert_resumed_as_uninterrupted(cifar_dir, output, last_epoch, uninterrupted)


def killed_in_epoch_1(cifar_dir, output, phase):
    """In a process of its own: step1.py as `python step1.py` runs it, killed (SIGKILL) at the given place."""
    skip_md5()
    with pytest.MonkeyPatch.context() as patch:
        stop_in_epoch_1(patch, phase, lambda: os.kill(os.getpid(), signal.SIGKILL))
        run_on_the_tiny_data(cifar_dir, output, *RUN)


def killed_in_each_phase(cifar_dir, folder):
    """Called by helpers.NewPython in a new Python, which has imported torch and step1.py but run nothing: for each
    phase, a fork of that Python runs step1.py, killed there, in folder/phaseN/. Writes {phase: exit code} to
    folder/killed.json."""
    exit_codes = {}
    for number, phase in enumerate(PHASES):
        output = pathlib.Path(folder, f"phase{number}", "my_network.pth")
        output.parent.mkdir()
        pid = os.fork()
        if pid == 0:  # the fork: it must never come back into this loop
            try:
                killed_in_epoch_1(cifar_dir, output, phase)
            except BaseException:
                traceback.print_exc()  # for the test to show
            os._exit(0)  # not killed: the test says so
        _, status = os.waitpid(pid, 0)
        exit_codes[phase] = os.waitstatus_to_exitcode(status)
    pathlib.Path(folder, "killed.json").write_text(json.dumps(exit_codes))


@pytest.mark.new_python(start=a_new_python)
@pytest.mark.parametrize("phase", PHASES)
def test_a_run_killed_in_any_phase_resumes_to_the_uninterrupted_runs_weights(cifar_dir, uninterrupted, started,
                                                                             phase):
    assert started.killed_runs()[phase] == -signal.SIGKILL
    output = started.folder / f"phase{PHASES.index(phase)}" / "my_network.pth"
    # The checkpoint as it was before epoch 1's took its name; a killed save leaves its temporary file.
    last_epoch = 1 if phase == "after its checkpoint" else 0
    left = sorted(os.listdir(output.parent))
    assert left[0] == "my_network.pth.checkpoint"
    assert len(left) == (2 if phase == "during its checkpoint's save" else 1)
    assert_resumed_as_uninterrupted(cifar_dir, output, last_epoch, uninterrupted)


def test_a_finished_run_resumed_with_more_epochs_equals_a_run_of_that_many(cifar_dir, tmp_path, uninterrupted):
    output = tmp_path / "my_network.pth"
    train(cifar_dir, output, "--epochs", "2", *RUN[2:])
    assert_resumed_as_uninterrupted(cifar_dir, output, 1, uninterrupted)


def test_the_command_to_go_on_has_one_resume_whether_the_run_had_it_or_not():
    """resume_command: the run's own options, with --resume added only where the run was not resumed already."""
    for argv in (["--epochs", "3"], ["--epochs", "3", "--resume"]):
        assert shlex.split(checkpoints.resume_command(argv))[2:] == ["--epochs", "3", "--resume"]


def test_the_checkpoint_holds_the_epoch_options_weights_optimizer_and_random_state(cifar_dir, tmp_path):
    output = tmp_path / "my_network.pth"
    train(cifar_dir, output, "--epochs", "2", "--lr", "0.02", "--seed", "7")
    checkpoint = torch.load(f"{output}.checkpoint", weights_only=True)  # tensors, numbers and strings only
    assert checkpoint["format"] == checkpoints.FORMAT
    assert checkpoint["epoch"] == 1
    assert checkpoint["options"] == {"seed": 7, "batch_size": 10, "lr": 0.02, "momentum": 0.9, "limit": 0}
    assert same_weights(output, checkpoint["model"])  # the last epoch's are the saved weights
    assert len(checkpoint["optimizer"]["state"]) == len(list(MyNet().parameters()))  # a momentum for each
    assert checkpoint["random"]["cpu"].dtype == torch.uint8


def refused_resume(cifar_dir, output, *extra):
    """A --resume that must be refused before the data is read: its one error line."""
    code, lines, err = run_on_the_tiny_data(cifar_dir, output, *RUN, *extra, "--resume")
    assert code == 1
    assert lines == []  # not even the device
    [line] = err.splitlines()
    return line


def test_resume_without_a_checkpoint_says_how_to_start(cifar_dir, tmp_path):
    output = tmp_path / "my_network.pth"
    assert refused_resume(cifar_dir, output) == (
        f"error: --resume: there is no checkpoint {output}.checkpoint; a run with the same --output writes it at "
        f"the end of its first epoch. Run without --resume to start from the first epoch.")
    assert os.listdir(tmp_path) == []


@pytest.fixture(scope="module")
def a_checkpoint(cifar_dir, tmp_path_factory):
    """The bytes of the checkpoint of a run of 1 epoch, with the default options."""
    output = tmp_path_factory.mktemp("one_epoch") / "my_network.pth"
    train(cifar_dir, output, "--epochs", "1")
    with open(f"{output}.checkpoint", "rb") as file:
        return file.read()


def changed_checkpoint(data, change):
    """The checkpoint of data, changed by change(checkpoint), as bytes."""
    checkpoint = torch.load(io.BytesIO(data), weights_only=True)
    change(checkpoint)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("option, value, trained_with", [
    ("--seed", "2", "1"), ("--batch-size", "8", "10"), ("--lr", "0.01", "0.001"), ("--momentum", "0.5", "0.9"),
    ("--limit", "100", "0")])
def test_resume_with_another_training_option_names_it_and_both_values(cifar_dir, tmp_path, a_checkpoint, option,
                                                                      value, trained_with):
    output = tmp_path / "my_network.pth"
    (tmp_path / "my_network.pth.checkpoint").write_bytes(a_checkpoint)
    assert refused_resume(cifar_dir, output, option, value) == (
        f"error: --resume: the checkpoint {output}.checkpoint was trained with {option} {trained_with}, not "
        f"{float(value) if '.' in value else int(value)}; resume with {option} {trained_with}, or start from the "
        f"first epoch without --resume")
    assert (tmp_path / "my_network.pth.checkpoint").read_bytes() == a_checkpoint


def other_network(checkpoint):
    checkpoint["model"]["fc_layers.5.weight"] = torch.zeros(5, 96)


def other_optimizer(checkpoint):
    checkpoint["optimizer"]["state"][0]["momentum_buffer"] = torch.zeros(3)


def other_version(checkpoint):
    checkpoint["format"] = "step1.py checkpoint, version 0"


def other_random_state(checkpoint):
    checkpoint["random"]["cpu"] = torch.zeros(10, dtype=torch.uint8)


def no_momentum(checkpoint):
    checkpoint["optimizer"]["state"] = {}


def weights_no_longer_numbers(checkpoint):
    checkpoint["model"]["fc_layers.5.bias"][0] = float("nan")


def a_flipped_bit(data):
    """data with one bit of its first weights' values flipped, as a failing disk or a bad copy would."""
    start = data.index(b"data/0") + 100  # within the first tensor's bytes, past its name
    return data[:start] + bytes([data[start] ^ 1]) + data[start + 1:]


@pytest.mark.parametrize("kind, holds", [
    ("cut off", "nothing that torch.load can read as a checkpoint (a damaged or cut-off file, or another kind)"),
    ("a flipped bit", "nothing that torch.load can read as a checkpoint (a damaged or cut-off file, or another kind)"),
    ("no momentum", "a checkpoint of another network, or a damaged one"),
    ("weights no longer numbers", "a checkpoint of another network, or a damaged one"),
    ("MyNet's weights", "something other than a checkpoint of step1.py"),
    ("another network's", "a checkpoint of another network, or a damaged one"),
    ("another optimizer's", "a checkpoint of another network, or a damaged one"),
    ("another random state", "a checkpoint of another network, or a damaged one"),
    ("another version's", "a checkpoint of another version of step1.py (step1.py checkpoint, version 0)")])
def test_resume_from_a_file_that_is_no_checkpoint_of_mynet_says_what_it_holds(cifar_dir, tmp_path, a_checkpoint,
                                                                              kind, holds):
    output = tmp_path / "my_network.pth"
    path = tmp_path / "my_network.pth.checkpoint"
    if kind == "MyNet's weights":
        earlier_weights(path)
    else:
        changes = {"another network's": other_network, "another optimizer's": other_optimizer,
                   "another version's": other_version, "another random state": other_random_state,
                   "no momentum": no_momentum, "weights no longer numbers": weights_no_longer_numbers}
        if kind == "cut off":
            data = a_checkpoint[:len(a_checkpoint) // 2]
        elif kind == "a flipped bit":
            data = a_flipped_bit(a_checkpoint)
        else:
            data = changed_checkpoint(a_checkpoint, changes[kind])
        path.write_bytes(data)
    before = path.read_bytes()
    assert refused_resume(cifar_dir, output) == (
        f"error: --resume: {path} holds {holds}, not a checkpoint that can resume this run. Run without --resume to "
        f"start from the first epoch (it replaces only a checkpoint).")
    assert path.read_bytes() == before


def test_resume_of_a_finished_run_without_more_epochs_says_to_give_more(cifar_dir, tmp_path, a_checkpoint):
    output = tmp_path / "my_network.pth"
    (tmp_path / "my_network.pth.checkpoint").write_bytes(a_checkpoint)
    code, lines, err = run_on_the_tiny_data(cifar_dir, output, "--epochs", "1", "--resume")
    assert (code, lines) == (1, [])
    assert err == (f"error: --resume: the checkpoint {output}.checkpoint has done all 1 epochs of --epochs 1; to "
                   f"train longer, give a higher --epochs (its weights, those of the run, are torch.load(path, "
                   f"weights_only=True)['model'])\n")


def test_a_file_of_yours_where_the_checkpoint_goes_is_kept_and_refused_before_training(cifar_dir, tmp_path):
    output = tmp_path / "notes.txt"
    (tmp_path / "notes.txt.checkpoint").write_text("my notes\n")
    code, lines, err = run_on_the_tiny_data(cifar_dir, output, "--epochs", "1")
    assert (code, lines) == (1, [])
    assert err == (f"error: the checkpoint of --output: {output}.checkpoint holds nothing that torch.load can read "
                   f"as a checkpoint (a damaged or cut-off file, or another kind); choose another path, to keep it\n")
    assert (tmp_path / "notes.txt.checkpoint").read_text() == "my notes\n"
    assert sorted(os.listdir(tmp_path)) == ["notes.txt.checkpoint"]


def no_room_for_checkpoints(monkeypatch):
    """Saving a checkpoint fails as on a full disk; saving the weights goes on as usual."""
    real = safe_saving.write_then_rename

    def full_for_checkpoints(data, path, *args, **kwargs):
        if str(path).endswith(".checkpoint"):
            raise OSError(28, "No space left on device")
        return real(data, path, *args, **kwargs)

    monkeypatch.setattr(safe_saving, "write_then_rename", full_for_checkpoints)


def test_a_checkpoint_that_cannot_be_saved_is_a_warning_and_training_goes_on(cifar_dir, tmp_path, monkeypatch,
                                                                            uninterrupted):
    output = tmp_path / "my_network.pth"
    no_room_for_checkpoints(monkeypatch)
    code, lines, err = run_on_the_tiny_data(cifar_dir, output, *RUN)
    assert code == 0
    assert err.splitlines() == [f"warning: could not save the checkpoint of epoch {epoch} to {output}.checkpoint (No "
                                f"space left on device: free some space); training goes on" for epoch in range(3)]
    assert same_weights(output, uninterrupted[1])


def test_an_error_after_a_checkpoint_names_it_and_the_command_that_goes_on(cifar_dir, tmp_path, monkeypatch):
    """An error that is no failure the user can act on (here memory that runs out in epoch 1) is shown whole, as a
    bug is, with the checkpoint it leaves."""
    output = tmp_path / "my_network.pth"

    def out_of_memory(images):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory")

    stop_in_epoch_1(monkeypatch, "during its training", lambda: monkeypatch.setattr(step1, "to_float", out_of_memory))
    error, shown = an_error_in_a_run(cifar_dir, output, *RUN)
    assert str(error) == "DefaultCPUAllocator: can't allocate memory"
    assert shown == [where_to_go_on(output, 0, cifar_dir).replace("the", "The", 1)]
    assert os.listdir(tmp_path) == ["my_network.pth.checkpoint"]


class FullDisk(io.StringIO):
    """Error output to a file on a full disk."""

    def write(self, text):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_checkpoint_warning_that_cannot_be_printed_is_lost_and_training_goes_on(cifar_dir, tmp_path, monkeypatch,
                                                                                  uninterrupted):
    output = tmp_path / "my_network.pth"
    no_room_for_checkpoints(monkeypatch)
    skip_md5(monkeypatch.setattr)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(FullDisk()):
        step1.main(["--data-dir", cifar_dir, "--output", str(output), "--device", "cpu", *RUN])
    assert same_weights(output, uninterrupted[1])


def test_a_stop_after_a_checkpoint_that_could_not_be_saved_names_no_checkpoint(cifar_dir, tmp_path, monkeypatch):
    """last_epoch is that of the last checkpoint written: epoch 0's failed, so a stop in epoch 1 has none to name."""
    output = tmp_path / "my_network.pth"
    no_room_for_checkpoints(monkeypatch)
    stop_in_epoch_1(monkeypatch, "during its training", lambda: send_here(signal.SIGINT))
    code, _, err = run_on_the_tiny_data(cifar_dir, output, *RUN)
    assert code == -signal.SIGINT
    assert err == (f"warning: could not save the checkpoint of epoch 0 to {output}.checkpoint (No space left on "
                   f"device: free some space); training goes on\n\ninterrupted: no weights were saved\n")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["my network.pth", "it's $HOME `here`.pth", "tab\there.pth", "line\nbreak.pth",
                                  b"\xff\xfe.pth".decode("utf-8", "surrogateescape"), "-starts-with-a-dash.pth"])
def test_the_resume_command_is_one_line_that_bash_reads_back_as_the_same_words(name):
    command = checkpoints.resume_command(["--output", name, "--epochs", "3"])
    assert "\n" not in command
    words = subprocess.run(["bash", "-c", f"printf '%s\\0' {command}"], capture_output=True, check=True).stdout
    assert words.split(b"\0")[:-1][-5:] == [b"--output", os.fsencode(name), b"--epochs", b"3", b"--resume"]


# The caller's random numbers (random_numbers_given_back)


@pytest.mark.parametrize("ending", ["trained", "stopped during training", "diverged"])
def test_main_gives_its_caller_the_random_numbers_it_had(cifar_dir, tmp_path, monkeypatch, ending):
    """main() seeds torch's random numbers: a notebook that calls it must draw after it what it would have drawn
    without it, whatever seed it had set, however main() ends."""
    torch.manual_seed(1234)
    torch.rand(5)  # drawn before: the state is not only the seed
    expected = torch.rand(3)
    torch.manual_seed(1234)
    torch.rand(5)
    extra = ["--epochs", "1", "--limit", "20"]
    if ending == "stopped during training":
        signalled(monkeypatch, "step1.to_float", signal.SIGINT)
    elif ending == "diverged":
        extra += ["--lr", "1e300"]
    code, _, _ = run_on_the_tiny_data(cifar_dir, tmp_path / "w.pth", *extra)
    assert code == {"trained": 0, "stopped during training": -signal.SIGINT, "diverged": 1}[ending]
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.gpu
@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_main_gives_its_caller_the_gpus_random_numbers_it_had(cifar_dir, tmp_path, device):
    """The GPU's too, whether main() trains on it or not (torch.manual_seed seeds every device)."""
    torch.manual_seed(1234)
    expected = torch.rand(3, device="cuda")
    torch.manual_seed(1234)
    code, _, err = run_on_the_tiny_data(cifar_dir, tmp_path / "w.pth", "--epochs", "1", "--limit", "20",
                                        device=device)
    assert code == 0, err
    assert torch.equal(torch.rand(3, device="cuda"), expected)
