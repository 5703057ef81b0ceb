"""Step 1 of the guide: train MyNet on CIFAR-10, measure its accuracy, save its weights.

    python step1.py                           # the guide's run: 10 epochs, mini-batches of 10
    python step1.py --limit 2000 --epochs 1   # a quick try, in seconds
    python step1.py --help                    # every option; each defaults to the guide's value

main() follows the guide's order. The helpers below it keep what the guide does
not teach (checking the options, data errors, a safe save) out of the lesson's way.
"""
import argparse
import math
import os
import shutil
import signal
import stat
import sys
import time
import uuid

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
    parser.add_argument("--data-dir", type=os.path.expanduser, default="~/datasets",
                        help="the folder that holds cifar-10-batches-py/, or where to download it")
    parser.add_argument("--epochs", type=int, default=10, help="passes over the training images")
    parser.add_argument("--batch-size", type=int, default=10, help="images per training mini-batch")
    parser.add_argument("--lr", type=float, default=0.001, help="learning rate")
    parser.add_argument("--momentum", type=float, default=0.9, help="momentum")
    parser.add_argument("--log-interval", type=int, default=1000, metavar="N",
                        help="print the mean loss every N mini-batches")
    parser.add_argument("--output", type=os.path.expanduser, default="my_network.pth", help="where to save the weights")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                        help="auto takes CUDA, then Apple MPS, then the CPU")
    parser.add_argument("--seed", type=int, default=1, help="random seed: the same seed gives the same run")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="use only the first N training and N test images, for a quick try")
    args = parser.parse_args(argv)
    check_arguments(parser, args)  # now, rather than after minutes of training
    device = pick_device(parser, args.device)
    torch.manual_seed(args.seed)  # the initial weights, the order of the images and dropout all draw from it
    torch.backends.cudnn.deterministic = True  # the same seed gives the same weights on a GPU too
    print(f"Device            : {device}")

    # Data: torchvision reads CIFAR-10 (downloading it the first time) as uint8 arrays of shape
    # (N, 32, 32, 3). Each set goes to the device once, as one tensor in PyTorch's order (N, 3, 32, 32):
    # a mini-batch is then just some of its positions, turned into floats when it is used.
    train_set = load_cifar10(args.data_dir, train=True)
    test_set = load_cifar10(args.data_dir, train=False)
    train_images = torch.from_numpy(train_set.data[:args.limit]).permute(0, 3, 1, 2).to(device)
    train_labels = torch.tensor(train_set.targets[:args.limit], device=device)
    test_images = torch.from_numpy(test_set.data[:args.limit]).permute(0, 3, 1, 2).to(device)
    test_labels = torch.tensor(test_set.targets[:args.limit], device=device)
    print("Training set size : %d" % len(train_images))
    print("Test set size     : %d" % len(test_images))
    print("Image size        : %d x %d\n" % tuple(train_images.shape[2:]))

    # Network
    model = MyNet().to(device)

    # Loss and optimizer (fused: one call updates all the weights, the same update done faster)
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, fused=True)

    # Training
    print("Training")
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        torch.backends.mkldnn.enabled = False  # on a CPU: faster for mini-batches this small (README, Speed)
        running_loss, running_batches = 0.0, 0
        # A new random order each epoch, cut into mini-batches of image positions.
        batches = torch.randperm(len(train_images)).to(device).split(args.batch_size)
        for i, batch in enumerate(batches):
            images, labels = to_float(train_images[batch]), train_labels[batch]

            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()

            running_loss += loss.item()
            running_batches += 1
            if not math.isfinite(running_loss):  # nan or inf: the weights are ruined, stop now
                sys.exit(f"error: the loss became {loss.item()} at epoch {epoch}, mini-batch {i + 1}: the training "
                         f"diverged. Try a smaller --lr than {args.lr}. Nothing was saved.")
            # The mean loss every log_interval mini-batches, and over the last ones of an
            # epoch that does not end on such a line (with --limit or another --batch-size).
            if running_batches == args.log_interval or i + 1 == len(batches):
                print("Epoch : %2d, mini-batch : %4d, loss : %.3f" % (epoch, i + 1, running_loss / running_batches))
                running_loss, running_batches = 0.0, 0

        training_accuracy, _ = accuracy(model, train_images, train_labels)
        test_accuracy, class_accuracies = accuracy(model, test_images, test_labels)
        print("Epoch : %2d, training accuracy = %6.2f %%, test accuracy = %6.2f %%"
              % (epoch, training_accuracy, test_accuracy))

    print("\nTest accuracy per class")
    for name, class_accuracy in zip(CLASSES, class_accuracies):
        shown = "no test images" if math.isnan(class_accuracy) else "%6.2f %%" % class_accuracy
        print("  %-10s : %s" % (name, shown))

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
    # In eval mode an image's scores do not depend on the rest of its batch, so batches of 500
    # give the same scores as batches of 10, in fewer steps.
    with torch.inference_mode():
        predictions = torch.cat([model(to_float(batch).contiguous(memory_format=torch.channels_last)).argmax(dim=1)
                                 for batch in images.split(500)])
    labels = labels.cpu()
    right = predictions.cpu() == labels
    per_class = 100.0 * torch.bincount(labels[right], minlength=10) / torch.bincount(labels, minlength=10)
    return 100.0 * right.sum().item() / len(labels), per_class.tolist()


def check_arguments(parser, args):
    """Refuse values that would crash or train nonsense, and an --output that cannot be saved to."""
    counts = {"--epochs": args.epochs, "--batch-size": args.batch_size, "--log-interval": args.log_interval,
              "--limit": args.limit}
    for option, value in counts.items():
        if value is not None and not 1 <= value <= 10**9:
            parser.error(f"argument {option}: must be from 1 to 10**9, got {value}")
    if not 0 <= args.seed < 2**64:
        parser.error(f"argument --seed: must be from 0 to 2**64 - 1, got {args.seed}")
    if not 0 < args.lr < math.inf:
        parser.error(f"argument --lr: must be a number above 0, got {args.lr}")
    if not 0 <= args.momentum < 1:
        parser.error(f"argument --momentum: must be at least 0 and below 1, got {args.momentum}")

    # Replace only a regular file: never a folder, a link, or a device such as /dev/null.
    output = args.output
    if not os.path.basename(output) or os.path.lexists(output) and not stat.S_ISREG(os.lstat(output).st_mode):
        parser.error(f"argument --output: {output} is not a file name (it names a folder, a link or a device); "
                     f"give one such as my_network.pth")
    try:  # Create and delete a file there: permission bits alone do not tell (root, read-only disks).
        with new_file_beside(output) as probe:
            pass
        os.remove(probe.name)
    except OSError as error:
        parser.error(f"argument --output: cannot write {output} ({error.strerror}); choose another path")


def pick_device(parser, name):
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name == "auto":
        name = next(device for device, ok in available.items() if ok)
    elif not available[name]:
        parser.error(f"argument --device: {name} is not available on this machine; use auto or cpu")
    return torch.device(name)


def load_cifar10(root, train):
    """One set of CIFAR-10 through torchvision, or exit with one line that says what is wrong and what to do."""
    inside = [name for name in ("cifar-10-batches-py", "cifar-10-python.tar.gz")
              if os.path.exists(os.path.join(root, name))]
    if os.path.basename(os.path.normpath(root)) == "cifar-10-batches-py" and not inside:
        sys.exit(f"error: --data-dir {root} is the cifar-10-batches-py folder itself; "
                 f"give the folder that holds it: --data-dir {os.path.dirname(os.path.abspath(root))}")
    if os.path.exists(root) and not os.path.isdir(root):
        sys.exit(f"error: --data-dir {root} is not a folder; give the folder that holds cifar-10-batches-py/, "
                 f"or a new folder to download CIFAR-10 into")
    root_existed = os.path.exists(root)
    try:
        return torchvision.datasets.CIFAR10(root, train=train, download=True)
    except (OSError, RuntimeError) as error:  # a failed download is an OSError
        if not root_existed:  # leave no empty or half-downloaded folder behind
            shutil.rmtree(root, ignore_errors=True)
        if isinstance(error, PermissionError):
            sys.exit(f"error: cannot access {error.filename} ({error.strerror}); "
                     f"fix its permissions or give another --data-dir")
        if inside:  # there, but it does not match torchvision's checksums
            sys.exit(f"error: CIFAR-10 in {root} is incomplete or damaged and could not be downloaded again "
                     f"({error}). Delete {' and '.join(inside)} from it, then run again online or put a fresh "
                     f"cifar-10-python.tar.gz there.")
        sys.exit(f"error: CIFAR-10 is not in {root} and could not be downloaded ({error}). Put "
                 f"cifar-10-python.tar.gz or its extracted cifar-10-batches-py/ folder there, "
                 f"or give the folder that holds them with --data-dir.")


def new_file_beside(path):
    """A new, empty file named path.<random>.tmp, open for writing."""
    return open(f"{path}.{uuid.uuid4().hex[:8]}.tmp", "xb")  # x: never a file that exists


def save_weights(state_dict, path):
    """Save to a new file beside path, then rename it to path: an earlier file is replaced only by a
    complete one, and a save that fails or is interrupted leaves nothing behind."""
    file = new_file_beside(path)
    try:
        with file:
            torch.save(state_dict, file)
            file.flush()
            os.fsync(file.fileno())  # on the disk before the rename, so a power cut cannot leave it empty
        os.replace(file.name, path)
    except BaseException:
        os.remove(file.name)
        raise


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a kill (timeout, Slurm, docker stop) acts as Ctrl-C
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("\ninterrupted: no weights were saved")
