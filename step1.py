"""Step 1 of the guide: train MyNet on CIFAR-10, measure its accuracy, save its weights.

    python step1.py                           # the guide's run: 10 epochs, mini-batches of 10
    python step1.py --limit 2000 --epochs 1   # a quick try, in seconds
    python step1.py --help                    # every option; each defaults to the guide's value

main() follows the guide's order: parameters, data, network, loss and optimizer, training, saving. What the guide does
not teach is in the modules beside this file, each named by what it does (README, Files).

Each epoch ends with a checkpoint, my_network.pth.checkpoint (--output's name, .checkpoint added), kept after the run:
`python step1.py --resume` goes on from the last one after a stop, or trains longer with a higher --epochs.
"""
import argparse
import contextlib
import math
import os
import sys
import time
from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.optim as optim
import torchvision
from torch.utils.data import DataLoader, TensorDataset

import checkpoints
import cuda_graph
import data_folder
import failures
import safe_saving
import stop_signals
from model import CLASSES, MyNet


@checkpoints.random_numbers_given_back  # main() seeds torch's random numbers; a caller's are as it had them, after
def main(argv=()):
    # Parameters: the guide's values are the defaults
    parser = argparse.ArgumentParser(description="Train MyNet on CIFAR-10 and save its weights.",
                                     usage="%(prog)s [options]  (--help lists them)",
                                     epilog="Each epoch ends with a checkpoint, --output's name with .checkpoint "
                                            "added; it is kept after the run, for --resume with a higher --epochs.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", type=data_folder.path_option, default="~/datasets",
                        help="the folder that holds cifar-10-batches-py/, or where to download it")
    parser.add_argument("--epochs", type=int, default=10, help="passes over the training images")
    parser.add_argument("--batch-size", type=int, default=10, help="images per training mini-batch")
    parser.add_argument("--lr", type=float, default=0.001, help="learning rate")
    parser.add_argument("--momentum", type=float, default=0.9, help="momentum")
    parser.add_argument("--log-interval", type=int, default=1000, metavar="N",
                        help="print the mean loss every N mini-batches")
    parser.add_argument("--output", type=safe_saving.output_option, default="my_network.pth",
                        help="where to save the weights")
    parser.add_argument("--device", type=device_option, default="auto", metavar="{auto,cpu,cuda,mps}",
                        help="auto takes CUDA, then Apple MPS, then the CPU")
    parser.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=True,
                        help="on an NVIDIA GPU, replay each training step as a CUDA graph (off: to debug the step)")
    parser.add_argument("--seed", type=int, default=1, help="random seed: the same seed gives the same run")
    parser.add_argument("--limit", type=int, default=0, metavar="N",
                        help="use only the first N training and N test images; 0: all of them")
    parser.add_argument("--resume", action="store_true",
                        help="go on from the checkpoint of the last finished epoch (give the same options)")
    argv = as_a_list(argv)
    args = parser.parse_args(argv)  # main() from a notebook: the defaults, whatever the kernel's sys.argv
    check_numbers(parser, args)  # now, rather than after minutes of training
    checkpoint = checkpoints.Checkpoints(args, argv)  # with --resume, read and checked now too
    device = args.device
    torch.manual_seed(args.seed)  # the initial weights, the order of the images and dropout all draw from it
    print(f"Device            : {device}")

    # Data: torchvision reads CIFAR-10, downloading it the first time.
    with data_folder.checked(args.data_dir):  # a failure is one line, and leaves nothing of a failed download
        train_set = torchvision.datasets.CIFAR10(root=args.data_dir, train=True, download=True)
        test_set = torchvision.datasets.CIFAR10(root=args.data_dir, train=False, download=True)
    # Its images are uint8 arrays (N, 32, 32, 3). Each set goes to the device once, in PyTorch's order (N, 3, 32, 32),
    # and the DataLoader makes mini-batches of it there, turned into floats when used.
    limit = args.limit or None  # a slice up to None keeps every image
    train_images = torch.from_numpy(train_set.data[:limit]).permute(0, 3, 1, 2).to(device)
    train_labels = torch.tensor(train_set.targets[:limit], device=device)
    test_images = torch.from_numpy(test_set.data[:limit]).permute(0, 3, 1, 2).to(device)
    test_labels = torch.tensor(test_set.targets[:limit], device=device)
    train_loader = DataLoader(TensorDataset(train_images, train_labels), batch_size=args.batch_size, shuffle=True)
    print("Training set size : %d" % len(train_images))
    print("Test set size     : %d" % len(test_images))
    print("Image size        : %d x %d\n" % (train_images.shape[2], train_images.shape[3]))

    # Network
    model = MyNet().to(device)

    # Loss and optimizer (fused: one call updates all the weights, the same update done faster)
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, fused=True)

    # With --resume: the weights, the optimizer and the random numbers where the checkpoint left them
    first_epoch = checkpoint.resume(model, optimizer)
    if first_epoch > 0:
        print("Resumed after epoch %d, from %s\n" % (first_epoch - 1, failures.quoted(checkpoint.path)))

    # Training. The loss is summed on the device and read only when printed: reading it makes the CPU wait for the GPU.
    print("Training")
    running_loss = torch.zeros((), device=device)

    def training_step(images, labels):
        images = to_float(images)
        optimizer.zero_grad(set_to_none=False)  # zeros in place: a CUDA graph needs the same memory every step
        outputs = model(images)
        loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()
        running_loss.add_(loss.detach())

    if device.type == "cuda" and args.cuda_graph:
        training_step = cuda_graph.replayed_as_cuda_graph(training_step, device)

    start = time.perf_counter()
    # Deterministic cuDNN on a GPU (same seed, same weights); the keeper saves the weights however a trained run ends.
    with torch.backends.cudnn.flags(enabled=True, deterministic=True), \
            safe_saving.KeepTrainedWeights(args.output) as keeper, checkpoint:
        for epoch in range(first_epoch, args.epochs):
            model.train()
            with onednn(enabled=False):  # on a CPU: PyTorch's own convolutions are faster for mini-batches this small
                for i, (images, labels) in enumerate(train_loader):  # a new random order each epoch
                    training_step(images, labels)
                    # The mean loss every log_interval mini-batches, and over the last ones of an epoch.
                    if (i + 1) % args.log_interval == 0 or i + 1 == len(train_loader):
                        mean_loss = running_loss.item() / (i % args.log_interval + 1)
                        check_finite(model, running_loss, epoch, i, args.lr)
                        if epoch == args.epochs - 1 and i + 1 == len(train_loader):  # the last update, and sound:
                            keeper.hold(model)  # from here on, however the run ends, the weights are saved first
                        print("Epoch : %2d, mini-batch : %4d, loss : %.3f" % (epoch, i + 1, mean_loss))
                        running_loss.zero_()

            training_accuracy, _ = accuracy(model, train_images, train_labels)
            test_accuracy, class_accuracies = accuracy(model, test_images, test_labels)
            print("Epoch : %2d, training accuracy = %6.2f %%, test accuracy = %6.2f %%"
                  % (epoch, training_accuracy, test_accuracy))
            checkpoint.save(model, optimizer, epoch)  # a stop from now on loses at most the next epoch

        print("\nTest accuracy per class")
        for name, class_accuracy in zip(CLASSES, class_accuracies):
            shown = "no test images" if math.isnan(class_accuracy) else "%6.2f %%" % class_accuracy
            print("  %-10s : %s" % (name, shown))

        # Saving: the weights only (a state_dict), as the guide saves them
        keeper.save(model.state_dict())
        took = time.perf_counter() - start
        print(f"\nSaved the weights to {failures.quoted(args.output)} (training and testing took {took:.0f} s)")


def as_a_list(argv):
    """main()'s options as a list of words, read once (paths as they are named; None: no options). A string is
    refused, as argparse would take each of its letters for a word, and so is a number, which argparse cannot read."""
    if argv is None:
        return []
    words = None if isinstance(argv, (str, bytes)) or not isinstance(argv, Iterable) else [
        word.__fspath__() if isinstance(word, os.PathLike) else word for word in argv]
    if words is None or not all(isinstance(word, str) for word in words):  # a path to bytes too: argparse takes text
        got = " ".join(repr(argv).split())  # one line, whatever prints on several (a NumPy array)
        raise TypeError(f'main() takes its options as a list of strings, such as main(["--epochs", "1"]): got '
                        f'main({got})')
    return words


def to_float(images):
    """uint8 pixels to floats between 0 and 1: exactly the values transforms.ToTensor() gives."""
    return images.float() / 255


def accuracy(model, images, labels):
    """Percentage of the images that the model classifies right: over all, and per class (nan if none)."""
    model.eval()
    # In eval mode an image's scores do not depend on the rest of its batch: batches of 500, fewer steps. On a CPU,
    # oneDNN with channels-last is the faster way for batches that large.
    with torch.inference_mode(), onednn(enabled=True):
        predictions = torch.cat([model(to_float(batch).contiguous(memory_format=torch.channels_last)).argmax(dim=1)
                                 for batch in images.split(500)])
    labels = labels.cpu()
    right = predictions.cpu() == labels
    per_class = 100.0 * torch.bincount(labels[right], minlength=10) / torch.bincount(labels, minlength=10)
    return 100.0 * right.sum().item() / len(labels), per_class.tolist()


@contextlib.contextmanager
def onednn(enabled):
    """Within: oneDNN's CPU convolutions on or off, then as found (torch.backends.mkldnn.flags() warns about TF32)."""
    found = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = found


def check_finite(model, running_loss, epoch, i, lr):
    """Stop a run whose loss or weights are no longer numbers: nothing of it is worth saving."""
    if not all(value.isfinite().all() for value in [running_loss, *model.state_dict().values()]):
        raise failures.Failure(f"error: the loss or the weights became nan or inf by epoch {epoch}, mini-batch "
                               f"{i + 1}: the training diverged. Try a smaller --lr than {lr}. The weights were not "
                               f"saved.")


def device_option(name):
    """argparse's type for --device: auto takes CUDA, then Apple MPS, then the CPU."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name == "auto":
        return torch.device(next(device for device, ok in available.items() if ok))
    if name not in available:
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or mps, got {name!r}")
    if not available[name]:
        raise argparse.ArgumentTypeError(f"{name} is not available on this machine; use auto or cpu")
    return torch.device(name)


def check_numbers(parser, args):
    """Refuse numbers that would crash or train nonsense, before anything is read."""
    for option, value, lowest in [("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 1),
                                  ("--log-interval", args.log_interval, 1), ("--limit", args.limit, 0)]:
        if not lowest <= value <= 10**9:
            parser.error(f"argument {option}: must be from {lowest} to 10**9, got {value}")
    if not 0 <= args.seed < 2**64:
        parser.error(f"argument --seed: must be from 0 to 2**64 - 1, got {args.seed}")
    if not 0 < args.lr < math.inf:
        parser.error(f"argument --lr: must be more than 0 and finite, got {args.lr}")
    if not 0 <= args.momentum < 1:
        parser.error(f"argument --momentum: must be at least 0 and below 1, got {args.momentum}")


if __name__ == "__main__":
    try:
        with stop_signals.StopSignals(), failures.one_line_for_failures():
            main(sys.argv[1:])
    except KeyboardInterrupt as stop:  # its line is printed: a shell loop stops only if the signal ends the process
        stop_signals.end_as_the_signal_would(stop)
    finally:
        stop_signals.ignored_from_now_on()
