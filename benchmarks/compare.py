"""Time step1.py against the guide's way of training, in turns, on full-size synthetic CIFAR-10.

    python benchmarks/compare.py --epochs 1 --rounds 3      # the README's Speed table (the defaults)
    python benchmarks/compare.py --device cuda              # the same on an NVIDIA GPU
    python benchmarks/compare.py -- --no-cuda-graph         # what follows -- goes to step1.py
    python benchmarks/compare.py --train 2000 --test 1000   # a quick try, in seconds

Run it with the Python that runs step1.py (it starts the programs with the same one), from any folder, on Linux or
macOS. It writes 50000 training and 10000 test images of random pixels, in torchvision's cifar-10-batches-py/ layout,
to a temporary folder: the speed does not depend on the pixels, so the timings are CIFAR-10's, offline. Then each
round runs the guide's way (benchmarks/guide_way.py), then step1.py, each as its own process, through
benchmarks/without_md5.py: the synthetic files do not match CIFAR-10's md5 sums, and neither program checks them here
(1 to 2 s a run on the real files). Each run gets a folder of its own, so that nothing one leaves can help the next.

It prints a line for each run: its wall time, from start to exit with the imports included, and its peak memory, the
largest resident size of its process or of one of its DataLoader workers. Then the median over the rounds of the
ratio step1/guide of each round, and rows to paste into the README's Speed table. A failed run stops it, with the end
of that run's output. Everything it wrote is removed, but for the weights that --keep-weights asks to keep.
"""
import argparse
import importlib.metadata
import math
import os
import pickle
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WITHOUT_MD5 = os.path.join(REPOSITORY, "benchmarks", "without_md5.py")
# In this order in each round: the guide's way first, as in the README's table.
PROGRAMS = {"guide": os.path.join(REPOSITORY, "benchmarks", "guide_way.py"),
            "step1": os.path.join(REPOSITORY, "step1.py")}
# CIFAR-10's label names, in the order of its batches.meta (model.CLASSES; not imported, to keep torch out of here).
LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
LAST_LINES = 20  # of a failed run's output


def main():
    arguments = sys.argv[1:]
    step1_arguments = []
    if "--" in arguments:
        split = arguments.index("--")
        arguments, step1_arguments = arguments[:split], arguments[split + 1:]
    parser = argparse.ArgumentParser(description="Time step1.py against the guide's way of training, in turns.",
                                     usage="%(prog)s [options] [-- step1.py's options]")
    parser.add_argument("--epochs", type=int, default=1, metavar="N", help="epochs of each run (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, metavar="N",
                        help="runs of each program, in turns (default: %(default)s)")
    parser.add_argument("--train", type=int, default=50000, metavar="N",
                        help="training images, CIFAR-10's number by default (%(default)s)")
    parser.add_argument("--test", type=int, default=10000, metavar="N",
                        help="test images, CIFAR-10's number by default (%(default)s)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"],
                        help="where both programs train (default: %(default)s)")
    parser.add_argument("--keep-weights", metavar="DIR",
                        help="copy each run's weights to DIR/NAME-roundN.pth, to check them; by default none is kept")
    args = parser.parse_args(arguments)
    for option, value in [("--epochs", args.epochs), ("--rounds", args.rounds), ("--train", args.train),
                          ("--test", args.test)]:
        if value < 1:
            parser.error(f"argument {option}: must be at least 1, got {value}")

    print(f"Machine : {machine(args.device)}", flush=True)
    walls = {name: [] for name in PROGRAMS}
    peaks = {name: [] for name in PROGRAMS}
    with tempfile.TemporaryDirectory(prefix="compare-") as work:
        data = os.path.join(work, "data")
        write_synthetic_cifar(data, args.train, args.test)
        print(f"Data    : {args.train} training and {args.test} test images of random pixels", flush=True)
        for round_number in range(1, args.rounds + 1):
            for name, script in PROGRAMS.items():
                folder = os.path.join(work, f"{name}-round{round_number}")
                os.mkdir(folder)
                weights = os.path.join(folder, "bench.pth")
                command = [sys.executable, WITHOUT_MD5, script, "--data-dir", data, "--epochs", str(args.epochs),
                           "--output", weights, "--device", args.device]
                if name == "step1":
                    command += step1_arguments
                wall, peak = timed_run(command, folder, f"{name} in round {round_number}", weights)
                print(f"Round {round_number} : {name:5}  wall {wall:7.1f} s  peak {peak / 1e9:5.2f} GB", flush=True)
                walls[name].append(wall)
                peaks[name].append(peak)
                if args.keep_weights:
                    os.makedirs(args.keep_weights, exist_ok=True)
                    shutil.copyfile(weights, os.path.join(args.keep_weights, f"{name}-round{round_number}.pth"))
                shutil.rmtree(folder)  # its weights, output and whatever else it left: no run sees another's

    ratio = statistics.median(step1 / guide for guide, step1 in zip(walls["guide"], walls["step1"]))
    rounds = f"{args.rounds} round" + ("s" if args.rounds > 1 else "")
    print(f"Ratio step1/guide : {ratio:.3f} (median of {rounds})")
    print()
    epochs = f"{args.epochs} epoch" + ("s" if args.epochs > 1 else "")
    runs = f"{args.rounds} run" + (" each" if args.rounds == 1 else "s each")
    print(f"| {epochs} | the guide's way | `step1.py` | ratio |")
    print("| --- | --- | --- | --- |")
    print(f"| {runs} | {spread(walls['guide'], '.1f', 1)} s | {spread(walls['step1'], '.1f', 1)} s | "
          f"{ratio:.3f} (median of the rounds) |")
    print(f"| peak memory | {spread(peaks['guide'], '.2f', 1e9)} GB | {spread(peaks['step1'], '.2f', 1e9)} GB | |")


def write_synthetic_cifar(root, train_count, test_count):
    """Random pixels and labels in torchvision's layout, root/cifar-10-batches-py/: the counts asked, no pattern."""
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    random = np.random.default_rng(0)

    def write(file_name, count, batch_label):
        # Each image is a row of 3072 bytes: 1024 red, then 1024 green, then 1024 blue.
        batch = {"data": random.integers(0, 256, size=(count, 3072), dtype=np.uint8),
                 "labels": random.integers(0, 10, size=count).tolist(), "batch_label": batch_label}
        with open(os.path.join(folder, file_name), "wb") as file:
            pickle.dump(batch, file)

    # CIFAR-10 splits its training images over 5 files.
    for number in range(1, 6):
        count = train_count // 5 + (number <= train_count % 5)
        write(f"data_batch_{number}", count, f"training batch {number} of 5")
    write("test_batch", test_count, "testing batch 1 of 1")
    with open(os.path.join(folder, "batches.meta"), "wb") as file:
        meta = {"label_names": LABEL_NAMES, "num_cases_per_batch": math.ceil(train_count / 5), "num_vis": 3072}
        pickle.dump(meta, file)


def timed_run(command, folder, what, weights):
    """Run command in folder, its output to a file there; return its wall seconds and its peak memory in bytes.

    A run that fails, or ends without saving weights, stops the benchmark with the end of its output."""
    log_path = os.path.join(folder, "output.log")
    with open(log_path, "wb") as log:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=folder, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            # os.wait4 gives this child's own peak; getrusage(RUSAGE_CHILDREN) gives only the largest of all children's.
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:  # Ctrl-C: no run left behind
            process.kill()
            process.wait()
            raise
        wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped by os.wait4: Popen could not learn it itself
    if process.returncode != 0 or not os.path.exists(weights):
        with open(log_path, encoding="utf-8", errors="replace") as log:
            last_lines = "".join(log.readlines()[-LAST_LINES:])
        ending = f"exit code {process.returncode}" if process.returncode != 0 else f"no weights in {weights}"
        sys.exit(f"{last_lines}\ncompare.py: the run of {what} failed ({ending}); above, the end of its output.")
    # ru_maxrss counts KiB on Linux, bytes on macOS.
    peak = usage.ru_maxrss if sys.platform == "darwin" else usage.ru_maxrss * 1024
    return wall, peak


def spread(values, number_format, unit):
    """The values in units of unit, as the README's Speed table gives them: '3.1' if all show so, else '3.1 to 3.4'."""
    low = format(min(values) / unit, number_format)
    high = format(max(values) / unit, number_format)
    return low if low == high else f"{low} to {high}"


def machine(device):
    """The processor, its cores, the system and the versions that the timings depend on: what the README names."""
    processor = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):  # Linux names the model only there
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            names = [line.split(":", 1)[1].strip() for line in file if line.startswith("model name")]
        processor = names[0] if names else processor
    # The cores this process may use: a container or taskset may give it fewer than the machine has.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = ", ".join(f"{package} {importlib.metadata.version(package)}" for package in ("torch", "torchvision"))
    described = (f"{processor}, {cores} cores, {platform.system()} {platform.release()}; "
                 f"Python {platform.python_version()}, {versions}; device {device}")
    if device == "cuda" and shutil.which("nvidia-smi"):
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True)
        described += f" ({gpu.stdout.splitlines()[0]})" if gpu.returncode == 0 and gpu.stdout.strip() else ""
    return described


if __name__ == "__main__":
    main()
