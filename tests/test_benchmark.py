"""benchmarks/compare.py run tiny, as a user runs it: both programs train and save, and it prints what the README's
Speed table needs. Its two runs start Python and import torch twice: it starts with the session (new_python)."""
import os
import re
import subprocess
import sys

import pytest
import torch

from helpers import ROOT
from model import MyNet

RUN_LINE = re.compile(r"^Round 1 : (guide|step1) +wall +(\d+\.\d) s +peak +(\d+\.\d\d) GB$", re.M)
RATIO_LINE = re.compile(r"^Ratio step1/guide : (\d+\.\d{3}) \(median of 1 round\)$", re.M)


def compare_run_tiny(folder):
    """For the new_python marker (conftest.new_pythons): `python benchmarks/compare.py` on 100 training and 50 test
    images, one round, with its own temporary folder. Yields the run, that folder and the folder of the weights it
    keeps."""
    temporary = folder / "tmp"
    temporary.mkdir()
    kept = folder / "weights"
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "compare.py"), "--epochs", "1", "--rounds", "1",
               "--train", "100", "--test", "50", "--device", "cpu", "--keep-weights", str(kept)]
    # At the tests' own priority, unlike the other new Pythons: its two runs, one after the other, are the longest wait.
    with subprocess.Popen(command, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, TMPDIR=str(temporary))) as run:
        yield run, temporary, kept
        run.kill()  # if no test waited for it


@pytest.mark.new_python(start=compare_run_tiny)
def test_compare_times_both_programs_and_prints_the_speed_table(started):
    run, temporary, kept = started
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stdout + stderr

    runs = RUN_LINE.findall(stdout)
    assert [name for name, _, _ in runs] == ["guide", "step1"], stdout  # in turns, the guide's way first
    walls = {name: float(wall) for name, wall, _ in runs}
    for _, wall, peak in runs:
        assert float(wall) > 0 and float(peak) > 0.05, stdout  # torch alone takes more than 50 MB
    [ratio] = RATIO_LINE.findall(stdout)
    # step1's wall over the guide's, within the rounding of the printed walls (tenths of a second)
    assert (walls["step1"] - 0.05) / (walls["guide"] + 0.05) - 0.001 <= float(ratio)
    assert float(ratio) <= (walls["step1"] + 0.05) / (walls["guide"] - 0.05) + 0.001
    assert "| 1 run each | " in stdout and "| peak memory | " in stdout
    assert "Machine : " in stdout and "torch " in stdout

    # Each run trained to the end: it saved weights that the guide's network takes.
    for name in ("guide", "step1"):
        MyNet().load_state_dict(torch.load(kept / f"{name}-round1.pth", weights_only=True))
    assert list(temporary.iterdir()) == []  # the data and the runs' folders are gone
