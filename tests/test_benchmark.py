"""benchmarks/compare.py run tiny, as a user runs it: both programs train and save, and it prints what the README's
Speed table needs. Its two runs start Python and import torch twice: some 10 s on a 2-core machine."""
import os
import re
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # for the repository's model.py, as `python step1.py` finds it

from model import MyNet  # noqa: E402

RUN_LINE = re.compile(r"^Round 1 : (guide|step1) +wall +(\d+\.\d) s +peak +(\d+\.\d\d) GB$", re.M)
RATIO_LINE = re.compile(r"^Ratio step1/guide : (\d+\.\d{3}) \(median of 1 round\)$", re.M)


def test_compare_times_both_programs_and_prints_the_speed_table(tmp_path):
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    kept = tmp_path / "weights"
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "compare.py"), "--epochs", "1", "--rounds", "1",
               "--train", "100", "--test", "50", "--device", "cpu", "--keep-weights", str(kept)]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, TMPDIR=str(temporary)))
    assert result.returncode == 0, result.stdout + result.stderr

    runs = RUN_LINE.findall(result.stdout)
    assert [name for name, _, _ in runs] == ["guide", "step1"], result.stdout  # in turns, the guide's way first
    walls = {name: float(wall) for name, wall, _ in runs}
    for _, wall, peak in runs:
        assert float(wall) > 0 and float(peak) > 0.05, result.stdout  # torch alone takes more than 50 MB
    [ratio] = RATIO_LINE.findall(result.stdout)
    # step1's wall over the guide's, within the rounding of the printed walls (tenths of a second)
    assert (walls["step1"] - 0.05) / (walls["guide"] + 0.05) - 0.001 <= float(ratio)
    assert float(ratio) <= (walls["step1"] + 0.05) / (walls["guide"] - 0.05) + 0.001
    assert "| 1 run each | " in result.stdout and "| peak memory | " in result.stdout
    assert "Machine : " in result.stdout and "torch " in result.stdout

    # Each run trained to the end: it saved weights that the guide's network takes.
    for name in ("guide", "step1"):
        MyNet().load_state_dict(torch.load(kept / f"{name}-round1.pth", weights_only=True))
    assert list(temporary.iterdir()) == []  # the data and the runs' folders are gone

