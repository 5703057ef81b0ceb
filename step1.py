"""Step 1 of the guide: train MyNet on CIFAR-10, measure its accuracy, save its weights.

    python step1.py                           # the guide's run: 10 epochs, mini-batches of 10
    python step1.py --limit 2000 --epochs 1   # a quick try, in seconds
    python step1.py --help                    # every option; each defaults to the guide's value

main() follows the guide's order. The helpers below it keep what the guide does not teach (checking the
options, data errors, stopping and saving safely, CUDA graphs) out of the lesson's way.
"""
import signal
import sys

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C, and the kill that timeout, Slurm and docker stop send


def on_stop_signals(handler):
    for number in STOP_SIGNALS:
        signal.signal(number, handler)


def stop(signal_number, frame):
    """End the run with one line. Later stop signals are ignored: they would only add lines to the ending."""
    on_stop_signals(ignore)
    sys.exit("\ninterrupted: no weights were saved")


def ignore(signal_number, frame):
    """A stop signal while the run ends or saves: nothing to do. (Not SIG_IGN: with it, a signal that came just
    before would make Python print an error.)"""


if __name__ == "__main__":  # first of all, so that a Ctrl-C during the slow imports below ends with one line too
    on_stop_signals(stop)

import argparse
import contextlib
import errno
import http.client
import io
import math
import os
import shutil
import stat
import tempfile
import time
import uuid
import warnings
from collections.abc import Mapping

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
    parser.add_argument("--data-dir", type=path_argument, default="~/datasets",
                        help="the folder that holds cifar-10-batches-py/, or where to download it")
    parser.add_argument("--epochs", type=int, default=10, help="passes over the training images")
    parser.add_argument("--batch-size", type=int, default=10, help="images per training mini-batch")
    parser.add_argument("--lr", type=float, default=0.001, help="learning rate")
    parser.add_argument("--momentum", type=float, default=0.9, help="momentum")
    parser.add_argument("--log-interval", type=int, default=1000, metavar="N",
                        help="print the mean loss every N mini-batches")
    parser.add_argument("--output", type=path_argument, default="my_network.pth", help="where to save the weights")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                        help="auto takes CUDA, then Apple MPS, then the CPU")
    parser.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=True,
                        help="on an NVIDIA GPU, replay each training step as a CUDA graph (off: to debug the step)")
    parser.add_argument("--seed", type=int, default=1, help="random seed: the same seed gives the same run")
    parser.add_argument("--limit", type=int, default=0, metavar="N",
                        help="use only the first N training and N test images; 0: all of them")
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
        training_step = replayed_as_cuda_graph(training_step, device)

    print("Training")
    start = time.perf_counter()
    with StopSignals() as stop_signals:  # Ctrl-C or a kill: one line, and after the last update, the weights saved
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
                        sys.exit(f"error: the loss or the weights became nan or inf by epoch {epoch}, "
                                 f"mini-batch {i + 1}: the training diverged. Try a smaller --lr than {args.lr}. "
                                 f"Nothing was saved.")
                    print("Epoch : %2d, mini-batch : %4d, loss : %.3f" % (epoch, i + 1, mean_loss))
                    running_loss.zero_()
            if epoch == args.epochs - 1:  # the last update is done: from here on, a stop saves the weights first
                stop_signals.save_first(model, args.output)

            training_accuracy, _ = accuracy(model, train_images, train_labels)
            test_accuracy, class_accuracies = accuracy(model, test_images, test_labels)
            print("Epoch : %2d, training accuracy = %6.2f %%, test accuracy = %6.2f %%"
                  % (epoch, training_accuracy, test_accuracy))

        print("\nTest accuracy per class")
        for name, class_accuracy in zip(CLASSES, class_accuracies):
            shown = "no test images" if math.isnan(class_accuracy) else "%6.2f %%" % class_accuracy
            print("  %-10s : %s" % (name, shown))

        # Saving
        save_weights(model, args.output)
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


def path_argument(text):
    """A file or folder name given as an option, with ~ for the home folder."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return os.path.expanduser(text)


# What to do about a failure, by its errno: the operating system's own reason, not a guess at it.
ADVICE = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space", errno.EACCES: "fix the permissions",
          errno.EPERM: "fix the permissions", errno.ENAMETOOLONG: "use a shorter name",
          errno.ENOENT: "check that the folder is there"}


def cause(error):
    """The reason for an OSError, and what to do about it where its errno tells."""
    advice = ADVICE.get(error.errno)
    return f"{error.strerror}: {advice}" if advice else error.strerror


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

    # Ask the system now whether the save can happen as save_weights does it, and replace only weights.
    output = args.output
    refuse = f"argument --output: {output}"
    try:
        earlier = existing(output)  # a name too long, or a folder you may not enter, fails here
        if not os.path.basename(output) or earlier and not stat.S_ISREG(earlier.st_mode):
            parser.error(f"{refuse} is not a file name (but a folder, a link or a device); "
                         f"give one such as my_network.pth")
        if earlier:
            if not earlier.st_mode & stat.S_IWUSR:
                parser.error(f"{refuse} is write-protected; choose another path, or make it writable (chmod u+w)")
            with open(output, "r+b"):  # refused for an immutable (chattr +i) or append-only file, even to root
                pass
            what = what_it_holds_if_not_weights(output)
            if what:
                parser.error(f"{refuse} holds {what}; choose another path, to keep it")
        with tempfile.TemporaryFile(dir=os.path.dirname(output) or ".") as probe:  # nameless: never left behind
            take_mode_and_owner(probe, earlier)
    except OSError as error:
        parser.error(f"{refuse} cannot be written ({cause(error)}); choose another path")


def existing(path):
    """os.lstat(path), or None if there is nothing there. Any other failure is raised: the system's reason."""
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def what_it_holds_if_not_weights(path):
    """None if torch.load reads path safely as weights (names to tensors), whichever PyTorch version saved them;
    otherwise what it holds, in a few words."""
    try:
        with warnings.catch_warnings():  # torch.load's warnings about what it reads: the line below says enough
            warnings.simplefilter("ignore")
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # damaged, or not weights: each kind of file fails in its own way
        return ("no weights that torch.load can read (a damaged file, or another kind: a whole model, "
                "a TorchScript model, a data set...)")
    if not isinstance(content, Mapping):
        return f"a {type(content).__name__}, not weights"
    more = [repr(name) for name, value in content.items() if not (isinstance(name, str) and torch.is_tensor(value))]
    return f"more than weights ({', '.join(more[:3])})" if more else None


def take_mode_and_owner(file, earlier):
    """Give a new file the permission bits, owner and group of the earlier file it is to replace (if any): a
    private file stays private, and a user's file stays theirs when root replaces it."""
    if earlier is None:
        return
    new = os.fstat(file.fileno())
    if (new.st_uid, new.st_gid) != (earlier.st_uid, earlier.st_gid):
        os.fchown(file.fileno(), earlier.st_uid, earlier.st_gid)  # refused unless root, or a group you are in
    os.fchmod(file.fileno(), stat.S_IMODE(earlier.st_mode))


def pick_device(parser, name):
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name != "auto" and not available[name]:
        parser.error(f"argument --device: {name} is not available on this machine; use auto or cpu")
    return torch.device(next(device for device, ok in available.items() if ok) if name == "auto" else name)


def load_cifar10(root, train):
    """One set of CIFAR-10 through torchvision, or exit with one line that says what is wrong and what to do."""
    batches = os.path.join(root, "cifar-10-batches-py")
    archive = os.path.join(root, "cifar-10-python.tar.gz")
    there = any(os.path.lexists(path) for path in (batches, archive))
    if os.path.basename(os.path.normpath(root)) == "cifar-10-batches-py" and not there:
        sys.exit(f"error: --data-dir {root} is the cifar-10-batches-py folder itself; "
                 f"give the folder that holds it: --data-dir {os.path.dirname(os.path.abspath(root))}")
    if os.path.exists(root) and not os.path.isdir(root):
        sys.exit(f"error: --data-dir {root} is not a folder; give the folder that holds cifar-10-batches-py/")
    created = set()
    try:
        # What a download would create, to remove if it fails; a folder you cannot read fails here, on a file inside.
        created = {missing_part(path) for path in (batches, os.path.join(batches, "batches.meta"), archive)}
        return torchvision.datasets.CIFAR10(root, train=train, download=True)
    except BaseException as error:  # Ctrl-C too: leave nothing behind that this run created, a half-unpacked folder
        for path in created - {None}:
            remove(path)
        if isinstance(error, OSError) and (error.filename or error.errno in ADVICE):  # the system's reason, on disk
            sys.exit(f"error: could not read or write {error.filename or root} ({cause(error)}), "
                     f"or give another --data-dir")
        if not isinstance(error, (OSError, RuntimeError, http.client.HTTPException)):  # not about the data: as it is
            raise
        if there:  # a download was tried because what is there does not match torchvision's checksums
            sys.exit(f"error: CIFAR-10 in {root} is incomplete or damaged (it does not match its checksums), and "
                     f"could not be downloaded again ({error}). Run again online, or put a fresh "
                     f"cifar-10-python.tar.gz there.")
        sys.exit(f"error: CIFAR-10 is not in {root} and could not be downloaded ({error}). Put cifar-10-python.tar.gz "
                 f"or its cifar-10-batches-py/ folder there, or give the folder that holds them with --data-dir.")


def missing_part(path):
    """The outermost folder or file that creating path would create, None if path is there. Exits with one line if
    a link on the way leads nowhere; raises the system's reason if a folder on the way cannot be read."""
    path = os.path.abspath(path)
    missing = None
    while True:
        try:
            os.stat(path)
            return missing
        except OSError as error:
            if error.errno not in (errno.ENOENT, errno.ELOOP):
                raise
            if os.path.islink(path):
                sys.exit(f"error: {path} is a link that leads nowhere; fix or remove it, or give another --data-dir")
            path, missing = os.path.dirname(path), path


def remove(path):
    """Remove a file or a folder with all it holds, as far as possible."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.remove(path)


class StopSignals:
    """Within `with StopSignals()`, Ctrl-C or a kill ends the run with one line; once save_first() has named the
    weights, it saves them first. The handlers that were there before are put back after, except step1.py's own
    stop(): `python step1.py` has then ended its run, and says nothing more."""

    def __enter__(self):
        self.found = {number: signal.getsignal(number) for number in STOP_SIGNALS}
        self.model = None
        on_stop_signals(self.handle)
        return self

    def save_first(self, model, path):
        self.model = model
        self.path = path

    def handle(self, signal_number, frame):
        if self.model is None:
            stop(signal_number, frame)
        save_weights(self.model, self.path)  # which ignores any further stop signal
        sys.exit(f"\ninterrupted: the weights were saved to {self.path} first; the rest was skipped")

    def __exit__(self, *exception):
        for number, handler in self.found.items():
            signal.signal(number, ignore if handler is stop else handler)


def save_weights(model, path):
    """Save the weights, as CPU tensors that load on any machine, to a new file beside path that takes path's name
    only when complete. If that fails, whatever the cause, save them to a new file in the system's temporary
    folder, and exit with one line that names it. Ctrl-C and kills are ignored from here on: the run ends saved."""
    on_stop_signals(ignore)
    weights = io.BytesIO()
    # In memory first: then only writing a file can fail.
    torch.save({name: tensor.cpu() for name, tensor in model.state_dict().items()}, weights)
    try:
        write_then_rename(weights.getbuffer(), path)
    except OSError as error:
        try:
            kept = os.path.join(tempfile.gettempdir(), f"my_network-{uuid.uuid4().hex}.pth")  # a new name
            write_then_rename(weights.getbuffer(), kept)
        except OSError as also:
            sys.exit(f"error: could not save the weights to {path} ({cause(error)}), nor to the temporary folder "
                     f"{tempfile.gettempdir()} ({cause(also)}): they are lost")
        sys.exit(f"error: could not save the weights to {path} ({cause(error)}); they are in {kept} instead")


def write_then_rename(data, path):
    """Write data to a new file in path's folder, then give it path's name: path is never half-written."""
    earlier = existing(path)
    # A short name, whatever path's length; x: never a file that exists. Permission bits as for any new file.
    file = open(os.path.join(os.path.dirname(path), f"step1-{uuid.uuid4().hex[:8]}.tmp"), "xb")
    try:
        with file:
            take_mode_and_owner(file, earlier)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())  # on the disk before the rename, so a power cut cannot leave it empty
        os.replace(file.name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(file.name)
        raise


def replayed_as_cuda_graph(training_step, device):
    """training_step, replayed as a CUDA graph for full mini-batches (the size of the first one) once three ordinary
    steps have warmed it up.

    A CUDA graph records the GPU work of one step (some 60 small kernels) and replays it all with one launch: for 10
    images, launching the kernels one by one costs more than running them. Recipe: PyTorch's "CUDA semantics" notes."""
    side_stream = torch.cuda.Stream(device)
    graph = None
    positions = None
    warm_up_steps = 3

    def step(batch):
        nonlocal graph, positions, warm_up_steps
        if positions is None:
            positions = batch.clone()  # where each replay finds its images: as many as in a full mini-batch
        if graph is not None and len(batch) == len(positions):
            positions.copy_(batch)
            return graph.replay()
        side_stream.wait_stream(torch.cuda.current_stream(device))  # an ordinary step, on a side stream (the recipe)
        with torch.cuda.stream(side_stream):
            training_step(batch)
        torch.cuda.current_stream(device).wait_stream(side_stream)
        warm_up_steps -= len(batch) == len(positions)
        if warm_up_steps == 0 and len(batch) == len(positions):  # warmed up: record a step (recording does not run it)
            stream = torch.cuda.current_stream(device)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    training_step(positions)
            except Exception as error:  # at its start or midway: nothing recorded has run, so go on without it
                graph = None
                torch.cuda.set_stream(stream)  # a capture that fails midway can leave its own stream current
                reason = str(error).strip().partition("\n")[0] or type(error).__name__
                print(f"warning: the training step could not be captured as a CUDA graph ({reason}); "
                      f"training goes on without it", file=sys.stderr)
    return step


if __name__ == "__main__":
    try:
        main()
    finally:  # Python's own ending takes a moment, with the default handlers: a Ctrl-C then would kill it, status 130
        on_stop_signals(signal.SIG_IGN)
