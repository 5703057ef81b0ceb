"""Step 1 of the guide: train MyNet on CIFAR-10, measure its accuracy, save its weights.

    python step1.py                           # the guide's run: 10 epochs, mini-batches of 10
    python step1.py --limit 2000 --epochs 1   # a quick try, in seconds
    python step1.py --help                    # every option; each defaults to the guide's value

main() follows the guide's order. The helpers below it keep what the guide does not teach (checking the
options, data errors, a safe save, CUDA graphs) out of the lesson's way.
"""
import signal
import sys

if __name__ == "__main__":  # first of all: Ctrl-C, or a kill (timeout, Slurm, docker stop), ends the run
    for stop_signal in (signal.SIGINT, signal.SIGTERM):  # with one line, even during the slow imports below
        signal.signal(stop_signal, lambda *_: sys.exit("\ninterrupted: no weights were saved"))

import argparse
import io
import math
import os
import shutil
import stat
import tempfile
import time
import uuid
import zipfile

import torch
import torch.nn as nn
import torch.optim as optim
import torchvision

from model import CLASSES, MyNet


def main(argv=None):
    # Parameters
    parser = argparse.ArgumentParser(description="Train MyNet on CIFAR-10 and save its weights.",
                                     usage="%(prog)s [options]  (--help lists them)",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", type=os.path.expanduser, default="~/datasets", help="holds cifar-10-batches-py/")
    parser.add_argument("--epochs", type=int, default=10, help="passes over the training images")
    parser.add_argument("--batch-size", type=int, default=10, help="images per training mini-batch")
    parser.add_argument("--lr", type=float, default=0.001, help="learning rate")
    parser.add_argument("--momentum", type=float, default=0.9, help="momentum")
    parser.add_argument("--log-interval", type=int, default=1000, metavar="N", help="mean loss every N mini-batches")
    parser.add_argument("--output", type=os.path.expanduser, default="my_network.pth", help="where to save the weights")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                        help="auto takes CUDA, then Apple MPS, then the CPU")
    parser.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=True,
                        help="on an NVIDIA GPU, replay each training step as a CUDA graph (off: to debug the step)")
    parser.add_argument("--seed", type=int, default=1, help="random seed: the same seed gives the same run")
    parser.add_argument("--limit", type=int, default=0, metavar="N", help="use the first N images of each set; 0: all")
    args = parser.parse_args(argv)
    check_arguments(parser, args)  # now, rather than after minutes of training
    device = pick_device(parser, args.device)
    torch.manual_seed(args.seed)  # the initial weights, the order of the images and dropout all draw from it
    torch.backends.cudnn.deterministic = True  # the same seed gives the same weights on a GPU too
    print(f"Device            : {device}")

    # Data: torchvision reads CIFAR-10 (downloading it the first time) as uint8 arrays (N, 32, 32, 3). Each set
    # goes to the device once, in PyTorch's order (N, 3, 32, 32); a mini-batch is some of its positions, as floats.
    train_set = load_cifar10(args.data_dir, train=True)
    test_set = load_cifar10(args.data_dir, train=False)
    limit = args.limit or None  # a slice up to None keeps every image
    train_images = torch.from_numpy(train_set.data[:limit]).permute(0, 3, 1, 2).to(device)
    train_labels = torch.tensor(train_set.targets[:limit], device=device)
    test_images = torch.from_numpy(test_set.data[:limit]).permute(0, 3, 1, 2).to(device)
    test_labels = torch.tensor(test_set.targets[:limit], device=device)
    print("Training set size : %d" % len(train_images))
    print("Test set size     : %d" % len(test_images))
    print("Image size        : %d x %d\n" % tuple(train_images.shape[2:]))

    # Network
    model = MyNet().to(device)

    # Loss and optimizer (fused: one call updates all the weights, the same update done faster)
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, fused=True)

    # Training. The loss is summed on the device and read only when printed: reading it makes the CPU wait for the GPU.
    running_loss = torch.zeros((), device=device)

    def training_step(batch):
        images, labels = to_float(train_images[batch]), train_labels[batch]
        optimizer.zero_grad(set_to_none=False)  # zeros in place: a CUDA graph needs the same memory every step
        outputs = model(images)
        loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()
        running_loss.add_(loss.detach())

    if device.type == "cuda" and args.cuda_graph:
        training_step = replayed_as_cuda_graph(training_step, args.batch_size, device)

    print("Training")
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        torch.backends.mkldnn.enabled = False  # on a CPU: faster for mini-batches this small (README, Speed)
        # A new random order each epoch, cut into mini-batches of image positions.
        batches = torch.randperm(len(train_images)).to(device).split(args.batch_size)
        for i, batch in enumerate(batches):
            training_step(batch)
            # The mean loss every log_interval mini-batches, and over the last ones of an epoch that ends between.
            if (i + 1) % args.log_interval == 0 or i + 1 == len(batches):
                mean_loss = running_loss.item() / (i % args.log_interval + 1)
                if not all(value.isfinite().all() for value in [running_loss, *model.state_dict().values()]):
                    sys.exit(f"error: the loss or the weights became nan or inf by epoch {epoch}, mini-batch {i + 1}: "
                             f"the training diverged. Try a smaller --lr than {args.lr}. Nothing was saved.")
                print("Epoch : %2d, mini-batch : %4d, loss : %.3f" % (epoch, i + 1, mean_loss))
                running_loss.zero_()

        training_accuracy, _ = accuracy(model, train_images, train_labels)
        test_accuracy, class_accuracies = accuracy(model, test_images, test_labels)
        print("Epoch : %2d, training accuracy = %6.2f %%, test accuracy = %6.2f %%"
              % (epoch, training_accuracy, test_accuracy))

    print("\nTest accuracy per class")
    for name, class_accuracy in zip(CLASSES, class_accuracies):
        print("  %-10s : %s" % (name, "no test images" if math.isnan(class_accuracy) else "%6.2f %%" % class_accuracy))

    # Saving: CPU tensors, so that the file loads on any machine.
    save_weights(model.cpu().state_dict(), args.output)
    print(f"\nSaved the weights to {args.output} (training took {time.perf_counter() - start:.0f} s)")


def to_float(images):
    """uint8 pixels to floats between 0 and 1: exactly the values transforms.ToTensor() gives."""
    return images.float() / 255


def accuracy(model, images, labels):
    """Percentage of the images that the model classifies right: over all, and per class (nan if none)."""
    model.eval()
    torch.backends.mkldnn.enabled = True  # on a CPU: faster for batches of 500, with channels-last (README, Speed)
    # In eval mode an image's scores do not depend on the rest of its batch: batches of 500, fewer steps.
    with torch.inference_mode():
        predictions = torch.cat([model(to_float(batch).contiguous(memory_format=torch.channels_last)).argmax(dim=1)
                                 for batch in images.split(500)])
    labels, predictions = labels.cpu(), predictions.cpu()
    right = predictions == labels
    per_class = 100.0 * torch.bincount(labels[right], minlength=10) / torch.bincount(labels, minlength=10)
    return 100.0 * right.sum().item() / len(labels), per_class.tolist()


def check_arguments(parser, args):
    """Refuse values that would crash or train nonsense, and an --output that cannot or must not be replaced."""
    for option, value, lowest in [("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 1),
                                  ("--log-interval", args.log_interval, 1), ("--limit", args.limit, 0)]:
        if not lowest <= value <= 10**9:
            parser.error(f"argument {option}: must be from {lowest} to 10**9, got {value}")
    if not 0 <= args.seed < 2**64:
        parser.error(f"argument --seed: must be from 0 to 2**64 - 1, got {args.seed}")
    if not torch.finfo(torch.float32).tiny <= args.lr < math.inf:  # below that, the float32 weights see 0
        parser.error(f"argument --lr: must be a number from 1.2e-38 (the smallest float32) up, got {args.lr}")
    if not 0 <= args.momentum < 1:
        parser.error(f"argument --momentum: must be at least 0 and below 1, got {args.momentum}")

    # Replace only a regular file that torch.save wrote and that may be replaced: not /dev/null, not your code.
    output, folder = args.output, os.path.dirname(args.output) or "."
    refuse = f"argument --output: {output}"
    if not os.path.basename(output) or os.path.lexists(output) and not stat.S_ISREG(os.lstat(output).st_mode):
        parser.error(f"{refuse} is not a file name (but a folder, a link or a device); give one such as my_network.pth")
    try:
        if os.path.exists(output):
            earlier, shared = os.stat(output), os.stat(folder)
            if not earlier.st_mode & stat.S_IWUSR:
                parser.error(f"{refuse} is write-protected; choose another path, or make it writable (chmod u+w)")
            with open(output, "r+b") as file:  # refused for an immutable (chattr +i) or append-only file, even to root
                names = zipfile.ZipFile(file).namelist() if zipfile.is_zipfile(file) else []
            if not any(name.endswith("/data.pkl") for name in names):  # how torch.save lays out its zip files
                parser.error(f"{refuse} holds no weights saved by torch.save; choose another path, to keep it")
            if shared.st_mode & stat.S_ISVTX and os.geteuid() not in (0, shared.st_uid, earlier.st_uid):
                parser.error(f"{refuse} is another user's file in a shared folder: only they may replace it")
        tempfile.TemporaryFile(dir=folder).close()  # a file with no name: never left behind, even by kill -9
    except OSError as error:
        parser.error(f"{refuse} cannot be written ({error.strerror}); choose another path")


def pick_device(parser, name):
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name != "auto" and not available[name]:
        parser.error(f"argument --device: {name} is not available on this machine; use auto or cpu")
    return torch.device(next(device for device, ok in available.items() if ok) if name == "auto" else name)


def load_cifar10(root, train):
    """One set of CIFAR-10 through torchvision, or exit with one line that says what is wrong and what to do."""
    inside = [name for name in ("cifar-10-batches-py", "cifar-10-python.tar.gz")
              if os.path.exists(os.path.join(root, name))]
    if os.path.basename(os.path.normpath(root)) == "cifar-10-batches-py" and not inside:
        sys.exit(f"error: --data-dir {root} is the cifar-10-batches-py folder itself; "
                 f"give the folder that holds it: --data-dir {os.path.dirname(os.path.abspath(root))}")
    if os.path.exists(root) and not os.path.isdir(root):
        sys.exit(f"error: --data-dir {root} is not a folder; give the folder that holds cifar-10-batches-py/")
    created, existing = None, os.path.abspath(root)  # created: the first folder that a download would create
    while not os.path.exists(existing):
        if os.path.islink(existing):
            sys.exit(f"error: {existing} is a link that leads nowhere; fix or remove it, or give another --data-dir")
        created, existing = existing, os.path.dirname(existing)
    for folder in (existing, os.path.join(root, "cifar-10-batches-py")):
        if os.path.isdir(folder) and not os.access(folder, os.R_OK | os.X_OK):
            sys.exit(f"error: cannot read {folder} (permission denied); fix its permissions or give another --data-dir")
    try:
        return torchvision.datasets.CIFAR10(root, train=train, download=True)
    except BaseException as error:  # Ctrl-C too: leave no folder behind that this run created
        if created:
            shutil.rmtree(created, ignore_errors=True)
        if isinstance(error, PermissionError):
            sys.exit(f"error: cannot read or write {error.filename} ({error.strerror}); "
                     f"fix its permissions or give another --data-dir")
        if not isinstance(error, (OSError, RuntimeError)):  # a failed download is an OSError
            raise
        if inside:  # there, but it does not match torchvision's checksums
            sys.exit(f"error: CIFAR-10 in {root} is incomplete or damaged and could not be downloaded again "
                     f"({error}). Delete {' and '.join(inside)} from it, then run again online or put a fresh "
                     f"cifar-10-python.tar.gz there.")
        sys.exit(f"error: CIFAR-10 is not in {root} and could not be downloaded ({error}). Put cifar-10-python.tar.gz "
                 f"or its cifar-10-batches-py/ folder there, or give the folder that holds them with --data-dir.")


def save_weights(weights, path):
    """Save to a new file beside path, then rename it: only a complete file takes path's name. Or exit with one line."""
    for stop_signal in (signal.SIGINT, signal.SIGTERM):  # the save takes a moment: let it finish, whole
        signal.signal(stop_signal, signal.SIG_IGN)
    buffer = io.BytesIO()
    torch.save(weights, buffer)  # in memory first: then only writing the file can fail
    file, written = None, False
    try:
        with open(f"{path}.{uuid.uuid4().hex[:8]}.tmp", "xb") as file:  # x: never a file that exists
            file.write(buffer.getbuffer())
            file.flush()
            os.fsync(file.fileno())  # on the disk before the rename, so a power cut cannot leave it empty
        written = True
        if os.path.exists(path):
            shutil.copymode(path, file.name)  # a private file stays private
        os.replace(file.name, path)
    except OSError as error:
        if written:
            sys.exit(f"error: could not replace {path} ({error.strerror}); the weights are in {file.name}")
        if file:
            os.remove(file.name)
        sys.exit(f"error: could not save the weights to {path} ({error.strerror}); "
                 f"check that its folder is still there and has free space, then run again")


def replayed_as_cuda_graph(training_step, batch_size, device):
    """training_step, replayed as a CUDA graph for full mini-batches once three ordinary steps have warmed it up.

    A CUDA graph records the GPU work of one step (some 60 small kernels) and replays it all with one launch: for 10
    images, launching the kernels one by one costs more than running them. Recipe: PyTorch's "CUDA semantics" notes."""
    positions = torch.zeros(batch_size, dtype=torch.long, device=device)  # where each replay finds its images
    graph, side_stream, warm_up_steps = None, torch.cuda.Stream(device), 3

    def step(batch):
        nonlocal graph, warm_up_steps
        if graph is not None and len(batch) == batch_size:
            positions.copy_(batch)
            return graph.replay()
        side_stream.wait_stream(torch.cuda.current_stream(device))  # an ordinary step, on a side stream (the recipe)
        with torch.cuda.stream(side_stream):
            training_step(batch)
        torch.cuda.current_stream(device).wait_stream(side_stream)
        warm_up_steps -= len(batch) == batch_size
        if warm_up_steps == 0 and len(batch) == batch_size:  # warmed up: record a step (recording does not run it)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    training_step(positions)
            except RuntimeError as error:
                graph = None
                print(f"warning: the training step could not be captured as a CUDA graph "
                      f"({str(error).splitlines()[0]}); training goes on without it", file=sys.stderr)
    return step


if __name__ == "__main__":
    main()
