"""Run a script as `python SCRIPT ARGS` would, with torchvision's md5 check of CIFAR-10 skipped.

    python benchmarks/without_md5.py SCRIPT [ARGS...]

benchmarks/compare.py runs each program through this. Its synthetic data has CIFAR-10's layout and sizes but not the
md5 sums of the real files, on which torchvision would download CIFAR-10 again. The script itself runs unchanged.
"""
import os
import runpy
import sys

import torchvision.datasets.cifar as cifar

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    script = sys.argv[1]
    cifar.CIFAR10._check_integrity = lambda self: True
    cifar.check_integrity = lambda *args, **kwargs: True
    sys.argv = sys.argv[1:]  # the script sees its own name first, then its arguments
    sys.path[0] = os.path.dirname(os.path.abspath(script))  # the script's folder, where `python SCRIPT` looks first
    sys.path.insert(1, REPOSITORY)  # then the repository's model.py, for benchmarks/guide_way.py
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
