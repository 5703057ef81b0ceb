import os
import re
import shutil
import subprocess
import sys

import torch
import torchvision
import torchvision.transforms as transforms

from conftest import CLASSES, ROOT
from model import MyNet

# Runs a script like `python SCRIPT` would, with torchvision's md5 check skipped (our data is not the original).
RUN_WITHOUT_MD5 = (
    "import runpy, sys, torchvision.datasets.cifar as cifar; "
    "cifar.CIFAR10._check_integrity = lambda self: True; cifar.check_integrity = lambda *a, **k: True; "
    "runpy.run_path(sys.argv[1], run_name='__main__')"
)


def readme_snippet():
    """The README's code block for reusing the weights."""
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    [snippet] = [block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "weights_only=True" in block]
    return snippet


def test_readme_snippet_loads_the_weights_and_classifies_a_test_image(guide_run, cifar_dir, skip_md5_check, tmp_path):
    _, weights = guide_run
    # The snippet reads ./my_network.pth and ~/datasets: give it both, in a folder of its own.
    shutil.copy(weights, tmp_path / "my_network.pth")
    shutil.copytree(cifar_dir, tmp_path / "datasets")
    (tmp_path / "snippet.py").write_text(readme_snippet())
    env = dict(os.environ, HOME=str(tmp_path), PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, "-c", RUN_WITHOUT_MD5, "snippet.py"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr

    model = MyNet()
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    image, label = torchvision.datasets.CIFAR10(cifar_dir, train=False, transform=transforms.ToTensor())[0]
    with torch.no_grad():
        guess = model(image.unsqueeze(0)).argmax().item()
    assert result.stdout == f"guess: {CLASSES[guess]}, truth: {CLASSES[label]}\n"
