"""stop_signals.py: Ctrl-C, a kill, a closed terminal or a scheduler's warning (the stop signals) at each moment of a
run of step1.py: during the imports, before the last update (one line, nothing saved), after it (the weights saved
first), during the save (the stop waits for it: deferred) and after it (the run ends as saved); a second stop while
the first ends the run; the process ended by the signal, so that a shell loop stops; nohup's ignored hangup; and
main() called from other code (a notebook, a thread), which leaves the caller's handlers as it found them and passes
them a stop that came during the save."""
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
import torchvision

import safe_saving
import step1
import stop_signals
from helpers import (
    ONE_EPOCH,
    ROOT,
    at_low_priority,
    earlier_weights,
    kept_instead,
    python_command,
    run_on_the_tiny_data,
    run_step1,
    run_until_the_save,
    same_weights,
    send_here,
    signalled,
    the_nth_call,
)
from model import MyNet

# Before the last update: one line, nothing saved


def interrupted_during_the_imports(tmp_path):
    """A bare `python step1.py`, with a Ctrl-C once torch has begun importing itself (the first second or two).
    Returns the finished process."""
    code = ("import builtins, os, runpy, signal, sys; real = builtins.__import__\n"
            "def hook(name, *args, **kwargs):\n"
            "    if name.startswith('torch.'):\n"
            "        builtins.__import__ = real\n"
            "        os.kill(os.getpid(), signal.SIGINT)\n"
            "    return real(name, *args, **kwargs)\n"
            "builtins.__import__ = hook\n"
            "sys.argv = ['step1.py', '--output', sys.argv[1], '--data-dir', sys.argv[2]]\n"
            "runpy.run_path('step1.py', run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code, str(tmp_path / "w.pth"), str(tmp_path / "data")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_ctrl_c_during_the_imports_loses_nothing(tmp_path):
    result = interrupted_during_the_imports(tmp_path)
    assert result.returncode != 0
    assert "KeyboardInterrupt" in result.stderr  # Python's own: nothing had begun
    assert result.stdout == ""
    assert os.listdir(tmp_path) == []


def test_ctrl_c_once_the_imports_are_done_is_one_line(tmp_path, monkeypatch):
    """As `python step1.py` runs main() (run_step1), with a Ctrl-C as torchvision's CIFAR10 begins to read the data."""
    real = torchvision.datasets.CIFAR10.__init__

    def interrupted(*args, **kwargs):
        send_here(signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "__init__", interrupted)
    code, lines, err = run_step1(["--output", str(tmp_path / "w.pth"), "--data-dir", str(tmp_path / "data")])
    assert err == "\ninterrupted: no weights were saved\n"
    assert code == -signal.SIGINT  # python step1.py ends by it, as Python ends on Ctrl-C: a shell loop stops
    assert lines[0].startswith("Device")
    assert os.listdir(tmp_path) == []  # nor the data folder that a download would have created


def test_a_kill_just_after_the_output_check_leaves_nothing(cifar_dir, tmp_path, monkeypatch):
    output = tmp_path / "my_network.pth"
    earlier = earlier_weights(output)
    returned = signalled(monkeypatch, "tempfile.TemporaryFile", signal.SIGTERM)
    code, lines, err = run_on_the_tiny_data(cifar_dir, output)
    for file in returned:  # the kill kept it from being closed: the process's end would close it
        file.close()
    assert code == -signal.SIGTERM
    assert err == "\ninterrupted: no weights were saved\n"
    assert lines == []
    assert output.read_bytes() == earlier
    assert os.listdir(tmp_path) == ["my_network.pth"]  # no empty file from the check


def test_a_stop_during_the_last_training_leaves_nothing(cifar_dir, tmp_path, monkeypatch):
    output = tmp_path / "my_network.pth"
    earlier = earlier_weights(output)
    signalled(monkeypatch, "step1.to_float", signal.SIGTERM, before=True, only_if=the_nth_call(11))
    code, lines, err = run_on_the_tiny_data(cifar_dir, output, "--epochs", "1")  # 12 mini-batches: stopped in the 11th
    assert code == -signal.SIGTERM
    assert err == "\ninterrupted: no weights were saved\n"
    assert lines[-1] == "Training"
    assert output.read_bytes() == earlier
    assert os.listdir(tmp_path) == ["my_network.pth"]


def test_a_stop_after_an_earlier_loss_line_of_the_last_epoch_leaves_nothing(cifar_dir, tmp_path, monkeypatch):
    """keeper.hold comes after the last mini-batch of the last epoch, not at its first loss line: with --log-interval
    4, a stop in the 6th of 12 mini-batches saves no half-trained weights over the earlier file."""
    output = tmp_path / "my_network.pth"
    earlier = earlier_weights(output)
    signalled(monkeypatch, "step1.to_float", signal.SIGTERM, before=True, only_if=the_nth_call(6))
    code, lines, err = run_on_the_tiny_data(cifar_dir, output, "--epochs", "1", "--log-interval", "4")
    assert code == -signal.SIGTERM
    assert err == "\ninterrupted: no weights were saved\n"
    assert lines[-1].startswith("Epoch :  0, mini-batch :    4, loss : ")
    assert output.read_bytes() == earlier
    assert os.listdir(tmp_path) == ["my_network.pth"]


def test_a_hangup_before_the_last_update_is_one_line_and_saves_nothing(cifar_dir, tmp_path, monkeypatch):
    output = tmp_path / "my_network.pth"
    earlier = earlier_weights(output)
    signalled(monkeypatch, "step1.to_float", signal.SIGHUP)  # the terminal closes, during the first step
    code, lines, err = run_on_the_tiny_data(cifar_dir, output)
    assert code == -signal.SIGHUP
    assert err == "\ninterrupted: no weights were saved\n"
    assert lines[-1] == "Training"
    assert output.read_bytes() == earlier


def ctrl_c_twice_on_a_shell_loop(cifar_dir, folder):
    """For the new_python marker (conftest.new_pythons): `for seed in 1 2 3; do python step1.py --seed "$seed" ...;
    echo "status $?"; done` over earlier weights, then Ctrl-C twice once the first run has a checkpoint, from a thread
    of this process, which then waits for the loop's end. Yields the loop, that thread, what it found (the loop's
    output and error output from then on, and the seconds from the Ctrl-C to the end), the output file and its
    earlier bytes."""
    output = folder / "my_network.pth"
    earlier = earlier_weights(output)
    command = shlex.join(python_command("step1.py", "--data-dir", cifar_dir, "--output", output, "--device", "cpu",
                                        "--epochs", "1000", "--seed"))
    loop_command = f'for seed in 1 2 3; do {command} "$seed"; echo "status $?"; done'
    loop = subprocess.Popen(at_low_priority(["bash", "-c", loop_command]), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                            start_new_session=True)

    def ctrl_c_twice():
        for line in loop.stdout:
            if line.startswith("Epoch :  1, training accuracy"):  # well into training: epoch 0's checkpoint is saved
                break
        start = time.monotonic()
        with contextlib.suppress(ProcessLookupError):  # ended already: the test says how
            os.killpg(loop.pid, signal.SIGINT)  # Ctrl-C: to every process of the terminal's foreground group
            os.killpg(loop.pid, signal.SIGINT)  # and again at once, as `timeout` passes it on, or an impatient user
        found["out"], found["err"] = loop.communicate(timeout=60)
        found["seconds"] = time.monotonic() - start

    found = {}
    thread = threading.Thread(target=ctrl_c_twice)
    with loop:
        thread.start()
        yield loop, thread, found, output, earlier
        if loop.poll() is None:  # no test waited for it: end bash and python, their group still theirs
            os.killpg(loop.pid, signal.SIGKILL)
        thread.join()


@pytest.mark.new_python(start=ctrl_c_twice_on_a_shell_loop)
def test_ctrl_c_twice_stops_a_shell_loop_with_one_line(started):
    """A shell goes on to its loop's next command unless its child was ended by the signal: with exit status 1 after
    Ctrl-C, such a loop took three Ctrl-C to stop. The second Ctrl-C, during the ending, adds nothing to the one line
    (not Python's "Exception ignored ... SystemExit")."""
    loop, thread, found, output, earlier = started
    thread.join(timeout=120)
    assert loop.returncode == -signal.SIGINT  # the shell stopped the loop: its child ended by SIGINT
    assert "status" not in found["out"] and "Device" not in found["out"]  # no next seed
    # Epoch 1's checkpoint, or epoch 0's if the stop came before the one of epoch 1 was saved
    assert re.fullmatch(rf"\ninterrupted during epoch (2; the checkpoint of epoch 1|1; the checkpoint of epoch 0) is "
                        rf"in {re.escape(str(output))}\.checkpoint\. To go on from it: .* --seed 1 --resume\n",
                        found["err"]), found["err"]
    assert output.read_bytes() == earlier
    assert sorted(os.listdir(output.parent)) == ["my_network.pth", "my_network.pth.checkpoint"]
    assert found["seconds"] < 30


# After the last update: the weights saved first


@pytest.mark.parametrize("signals", [1, 2])
def test_a_stop_after_the_last_update_saves_the_weights_first(cifar_dir, tmp_path, monkeypatch, one_epoch_weights,
                                                              signals):
    output = tmp_path / "my_network.pth"
    earlier_weights(output)
    accuracies = signalled(monkeypatch, "step1.accuracy", signal.SIGINT, before=True)  # the last update is done
    if signals == 2:  # the second comes during the save
        signalled(monkeypatch, "safe_saving.write_then_rename", signal.SIGINT, before=True)
    code, lines, err = run_on_the_tiny_data(cifar_dir, output, *ONE_EPOCH)
    assert code == -signal.SIGINT
    assert err == f"\ninterrupted: the weights were saved to {output} first; the rest was skipped\n"
    assert "mini-batch :    2" in lines[-1]  # the accuracy lines were skipped
    assert accuracies == []  # stopped before the accuracy pass ran
    assert same_weights(output, one_epoch_weights)
    assert os.listdir(tmp_path) == ["my_network.pth"]


# A closed terminal, Slurm's warnings before a time limit (USR1, USR2), a CPU-time limit (XCPU), an alarm
@pytest.mark.parametrize("number", [signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGXCPU, signal.SIGALRM],
                         ids=lambda number: signal.Signals(number).name)
def test_any_stop_signal_after_the_last_update_saves_first(cifar_dir, tmp_path, monkeypatch, one_epoch_weights,
                                                           number):
    output = tmp_path / "my_network.pth"
    earlier_weights(output)
    signalled(monkeypatch, "step1.accuracy", number, before=True)  # training done
    code, _, err = run_on_the_tiny_data(cifar_dir, output, *ONE_EPOCH)
    assert code == -number
    assert err == f"\ninterrupted: the weights were saved to {output} first; the rest was skipped\n"
    assert same_weights(output, one_epoch_weights)
    assert os.listdir(tmp_path) == ["my_network.pth"]


def test_ctrl_c_then_a_kill_after_the_last_update_still_saves_the_weights_first(cifar_dir, tmp_path, monkeypatch):
    """The first stop signal ends the run; the ones after it must not cut short what it does before it ends."""
    output = tmp_path / "my_network.pth"
    earlier = earlier_weights(output)
    real_accuracy = step1.accuracy

    def two_stops_then_accuracy(*args):  # the last update is done: the keeper holds the weights
        both = {signal.SIGINT, signal.SIGTERM}  # of two kinds: the system does not merge them into one
        signal.pthread_sigmask(signal.SIG_BLOCK, both)
        send_here(signal.SIGINT)
        send_here(signal.SIGTERM)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, both)  # both come now: the second while the first ends the run
        return real_accuracy(*args)

    monkeypatch.setattr(step1, "accuracy", two_stops_then_accuracy)
    code, lines, err = run_on_the_tiny_data(cifar_dir, output, "--epochs", "1", "--limit", "10")
    assert code == -signal.SIGINT  # the first
    assert err == f"\ninterrupted: the weights were saved to {output} first; the rest was skipped\n"
    assert output.read_bytes() != earlier
    assert list(torch.load(output, weights_only=True)) == list(MyNet().state_dict())
    assert os.listdir(tmp_path) == ["my_network.pth"]


# During the save, and after it (deferred)


def the_weights(data, path, *args, **kwargs):
    """Whether a call of write_then_rename writes the weights, not a checkpoint."""
    return not str(path).endswith(".checkpoint")


@pytest.mark.parametrize("when", ["as the save begins", "as it writes the file"])
def test_a_stop_during_the_save_waits_for_it_and_the_run_ends_as_saved(cifar_dir, tmp_path, monkeypatch,
                                                                      one_epoch_weights, when):
    output = tmp_path / "my_network.pth"
    earlier_weights(output)
    call = "safe_saving.save_weights" if when == "as the save begins" else "safe_saving.write_then_rename"
    signalled(monkeypatch, call, signal.SIGTERM, before=True, only_if=the_weights)
    code, lines, err = run_on_the_tiny_data(cifar_dir, output, *ONE_EPOCH)
    assert code == -signal.SIGTERM, err  # once the run has ended as saved: a shell loop stops
    assert err == ""
    assert lines[-1].startswith(f"Saved the weights to {output}")
    assert same_weights(output, one_epoch_weights)


def test_a_stop_after_a_save_that_kept_the_weights_elsewhere_still_names_where(cifar_dir, tmp_path, monkeypatch,
                                                                               temporary_folder, one_epoch_weights):
    output = tmp_path / "run" / "my_network.pth"
    output.parent.mkdir()
    signalled(monkeypatch, "safe_saving.places_to_keep_them", signal.SIGINT)  # the save at --output has failed
    code, _, err = run_until_the_save(cifar_dir, output, lambda: shutil.rmtree(output.parent))
    assert code == 1
    kept = kept_instead(err, output, "No such file or directory: check that the folder is there", temporary_folder)
    assert same_weights(kept, one_epoch_weights)
    assert oct(os.stat(kept).st_mode & 0o777) == oct(0o600)  # private, in a folder others share


def test_a_kill_just_after_the_rename_still_ends_as_saved(cifar_dir, tmp_path, monkeypatch):
    output = tmp_path / "my_network.pth"
    earlier = earlier_weights(output)
    signalled(monkeypatch, "os.replace", signal.SIGTERM, only_if=lambda temporary, name, **folders: name == output.name)
    code, lines, err = run_on_the_tiny_data(cifar_dir, output, *ONE_EPOCH)
    assert code == -signal.SIGTERM, err
    assert err == ""
    assert lines[-1].startswith(f"Saved the weights to {output}")
    assert output.read_bytes() != earlier
    assert sorted(os.listdir(tmp_path)) == ["my_network.pth", "my_network.pth.checkpoint"]


@pytest.mark.parametrize("call", ["failures.quoted", "time.perf_counter"])
def test_a_stop_once_the_weights_are_saved_ends_as_saved(cifar_dir, tmp_path, monkeypatch, one_epoch_weights, call):
    output = tmp_path / "my_network.pth"
    real_save = safe_saving.save_weights

    def save_then_stop_at_the_next_call(*args):
        real_save(*args)
        signalled(monkeypatch, call, signal.SIGTERM)  # as the last line is written

    monkeypatch.setattr(safe_saving, "save_weights", save_then_stop_at_the_next_call)
    code, lines, err = run_on_the_tiny_data(cifar_dir, output, *ONE_EPOCH)
    assert code == -signal.SIGTERM, err  # the run ends as saved, then by the signal: a shell loop stops
    assert err == ""
    assert lines[-1].startswith(f"Saved the weights to {output}")
    assert same_weights(output, one_epoch_weights)


# The handlers found: the user's (nohup) and those of the code that calls main()


def test_a_hangup_that_nohup_ignores_stays_ignored(cifar_dir, tmp_path, monkeypatch, one_epoch_weights):
    found = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as `nohup python step1.py` starts it
    try:
        signalled(monkeypatch, "step1.to_float", signal.SIGHUP)  # the terminal closes, during training
        code, lines, err = run_on_the_tiny_data(cifar_dir, tmp_path / "w.pth", *ONE_EPOCH)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, found)
    assert code == 0, err
    assert lines[-1].startswith("Saved the weights")
    assert same_weights(tmp_path / "w.pth", one_epoch_weights)


@pytest.mark.parametrize("ending", ["trained and saved", "diverged", "a save that failed", "interrupted"])
def test_main_leaves_the_signal_handlers_as_it_found_them(cifar_dir, tmp_path, ending, temporary_folder, monkeypatch):
    """As main() called from a notebook or a test: Ctrl-C works there as before, whatever happened in the run."""
    def mine(*_):
        pass

    found = {number: signal.signal(number, mine) for number in stop_signals.STOP_SIGNALS}
    try:
        extra = {"diverged": ["--lr", "1e300", "--limit", "10"]}.get(ending, [])
        if ending == "interrupted":
            signalled(monkeypatch, "step1.to_float", signal.SIGINT)
            extra = ["--limit", "10"]  # interrupted during its only mini-batch
        if ending == "a save that failed":
            (tmp_path / "run").mkdir()
            code, _, _ = run_until_the_save(cifar_dir, tmp_path / "run" / "w.pth",
                                            lambda: shutil.rmtree(tmp_path / "run"))
            assert code == 1
        else:
            code, _, _ = run_on_the_tiny_data(cifar_dir, tmp_path / "w.pth", "--epochs", "1", *extra)
            assert code == {"diverged": 1, "interrupted": -signal.SIGINT}.get(ending, 0)
        assert all(signal.getsignal(number) is mine for number in stop_signals.STOP_SIGNALS)
    finally:
        for number, handler in found.items():
            signal.signal(number, handler)


def test_main_called_alone_leaves_the_signal_handlers_alone(cifar_dir, tmp_path, monkeypatch):
    def mine(*_):
        pass

    found = {number: signal.signal(number, mine) for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    seen = []
    real_accuracy = step1.accuracy

    def accuracy(*args):
        seen.append({number: signal.getsignal(number) for number in found})
        return real_accuracy(*args)

    monkeypatch.setattr(step1, "accuracy", accuracy)
    try:
        code, _, err = run_on_the_tiny_data(cifar_dir, tmp_path / "w.pth", "--epochs", "1", "--limit", "20",
                                            as_a_script=False)
        assert code == 0, err
        assert all(handler is mine for handlers in seen for handler in handlers.values())  # during the run too
    finally:
        for number, handler in found.items():
            signal.signal(number, handler)


def test_main_alone_passes_a_stop_during_the_save_to_the_callers_handler(cifar_dir, tmp_path, monkeypatch,
                                                                         one_epoch_weights):
    output = tmp_path / "my_network.pth"
    came = []
    found = signal.signal(signal.SIGTERM, lambda number, frame: came.append(number))
    try:
        signalled(monkeypatch, "safe_saving.write_then_rename", signal.SIGTERM, before=True, only_if=the_weights)
        code, _, err = run_on_the_tiny_data(cifar_dir, output, *ONE_EPOCH, as_a_script=False)
    finally:
        signal.signal(signal.SIGTERM, found)
    assert code == 0, err
    assert came == [signal.SIGTERM]  # once, after the save
    assert same_weights(output, one_epoch_weights)


def test_main_alone_passes_a_ctrl_c_during_the_save_on_to_the_caller_once_saved(cifar_dir, tmp_path, monkeypatch,
                                                                                one_epoch_weights):
    """Python's own Ctrl-C handler, as in a notebook: the KeyboardInterrupt it raises once the save is done ends
    main(), with the weights saved; the caller's Ctrl-C is not lost."""
    output = tmp_path / "my_network.pth"
    found = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        signalled(monkeypatch, "safe_saving.write_then_rename", signal.SIGINT, before=True, only_if=the_weights)
        code, lines, _ = run_on_the_tiny_data(cifar_dir, output, *ONE_EPOCH, as_a_script=False)
    finally:
        signal.signal(signal.SIGINT, found)
    assert code == -signal.SIGINT
    assert not any(line.startswith("Saved the weights") for line in lines)


@pytest.mark.parametrize("when", ["during the save", "after the last update"])
def test_main_alone_passes_ctrl_c_on_to_its_caller_once_the_weights_are_saved(cifar_dir, tmp_path, monkeypatch,
                                                                             skip_md5_check, one_epoch_weights, when):
    """From Python (a notebook), Ctrl-C is Python's own KeyboardInterrupt: the caller gets it, after the save. During
    the save, as it came; after the last update, with the line that says the weights were saved first."""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    output = tmp_path / "my_network.pth"
    if when == "during the save":
        signalled(monkeypatch, "safe_saving.write_then_rename", signal.SIGINT, before=True, only_if=the_weights)
    else:
        signalled(monkeypatch, "step1.accuracy", signal.SIGINT, before=True)
    with pytest.raises(KeyboardInterrupt) as stop:
        step1.main(["--data-dir", cifar_dir, "--output", str(output), "--device", "cpu", *ONE_EPOCH])
    if when == "during the save":
        assert type(stop.value) is KeyboardInterrupt and str(stop.value) == ""  # not a line about a --resume
        assert sorted(os.listdir(tmp_path)) == ["my_network.pth", "my_network.pth.checkpoint"]
    else:
        assert str(stop.value) == f"\ninterrupted: the weights were saved to {output} first; the rest was skipped"
        assert os.listdir(tmp_path) == ["my_network.pth"]
    assert same_weights(output, one_epoch_weights)


def test_main_trains_from_a_thread(cifar_dir, tmp_path, skip_md5_check):
    results = []

    def run():
        try:
            step1.main(["--data-dir", cifar_dir, "--output", str(tmp_path / "w.pth"), "--device", "cpu",
                        "--epochs", "1", "--limit", "20"])
            results.append("done")
        except BaseException as error:  # noqa: B036 - whatever it is, the test shows it
            results.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=120)
    assert results == ["done"]
    assert list(torch.load(tmp_path / "w.pth", weights_only=True)) == list(MyNet().state_dict())
