"""Step 1 of the guide: train MyNet on CIFAR-10, measure its accuracy, save its weights.

    python step1.py            # the guide's run: 10 epochs, batch 10, SGD lr 0.001 momentum 0.9
    python step1.py --help     # every option; each defaults to the guide's value
"""
import argparse
import os
import shutil
import sys
import time

import torch
import torch.nn as nn
import torch.optim as optim
import torchvision
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

from model import MyNet

# Accuracy is measured in eval mode, where an image's scores do not depend on
# the rest of its batch (batch normalization uses its running averages, dropout
# is off), so it uses bigger batches than training: fewer steps, same scores.
EVAL_BATCH_SIZE = 500


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def momentum_value(text):
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and less than 1, got {text}")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Train MyNet on CIFAR-10 and save its weights (step 1 of the guide).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data-dir", default="~/datasets",
                        help="folder holding cifar-10-batches-py/ or cifar-10-python.tar.gz; "
                             "CIFAR-10 is downloaded there if it is missing")
    parser.add_argument("--epochs", type=positive_int, default=10, help="passes over the training set")
    parser.add_argument("--batch-size", type=positive_int, default=10, help="images per training mini-batch")
    parser.add_argument("--lr", type=positive_float, default=0.001, help="SGD learning rate")
    parser.add_argument("--momentum", type=momentum_value, default=0.9, help="SGD momentum")
    parser.add_argument("--log-interval", type=positive_int, default=1000,
                        help="print the mean loss every this many mini-batches")
    parser.add_argument("--output", default="my_network.pth", help="where to save the trained weights")
    parser.add_argument("--workers", type=non_negative_int, default=0,
                        help="DataLoader worker processes; 0 is fastest, as the images are already in memory")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                        help="auto picks CUDA, then Apple MPS, then the CPU")
    parser.add_argument("--seed", type=int, default=1, help="random seed: the same seed gives the same run")
    parser.add_argument("--limit", type=positive_int, default=None, metavar="N",
                        help="use only the first N training and N test images, for a quick try")
    args = parser.parse_args(argv)

    # Refuse what would fail later, before any data is read or any time spent training.
    args.device = pick_device(args.device, parser)
    check_output_writable(args.output, parser)
    return args


def pick_device(name, parser):
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        name = "cuda" if cuda else "mps" if mps else "cpu"
    elif name == "cuda" and not cuda:
        parser.error("--device cuda: CUDA is not available on this machine; use --device auto or cpu")
    elif name == "mps" and not mps:
        parser.error("--device mps: Apple MPS is not available on this machine; use --device auto or cpu")
    return torch.device(name)


def check_output_writable(path, parser):
    if os.path.isdir(path) or not os.path.basename(path):
        parser.error(f"--output '{path}' is a folder, not a file name; give one such as "
                     f"{os.path.join(path, 'my_network.pth')}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        parser.error(f"--output {path}: the folder {folder} does not exist; create it or choose another path")
    try:
        # Try it for real: permission bits alone do not tell (root ignores them, read-only disks do not show).
        with open(path + ".tmp", "wb"):
            pass
        os.remove(path + ".tmp")
    except OSError as error:
        parser.error(f"--output {path}: cannot write in {folder} ({error.strerror}); choose another path")


def load_cifar10(root, train):
    """One split of CIFAR-10 through torchvision, downloaded into root if it is not there yet."""
    root = os.path.expanduser(root)
    root_existed = os.path.exists(root)
    try:
        return torchvision.datasets.CIFAR10(root=root, train=train, download=True)
    except (OSError, RuntimeError) as error:
        if not root_existed:  # leave no empty or half-downloaded folder behind
            shutil.rmtree(root, ignore_errors=True)
        sys.exit(f"error: CIFAR-10 is not in {root} and could not be downloaded ({error}). "
                 f"Put cifar-10-python.tar.gz or its extracted cifar-10-batches-py/ folder there, "
                 f"or point --data-dir at the folder that holds them.")


def make_loader(images, labels, batch_size, shuffle, workers, device):
    """A DataLoader over in-memory tensors that hands out whole mini-batches."""
    dataset = TensorDataset(images, labels)
    order = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
    # The BatchSampler gives the dataset a list of positions, so each mini-batch
    # is one tensor indexing instead of one lookup per image then a collate.
    return DataLoader(dataset, sampler=BatchSampler(order, batch_size, drop_last=False), batch_size=None,
                      num_workers=workers, persistent_workers=workers > 0,
                      pin_memory=device.type == "cuda")  # pinned memory makes copies to a GPU faster


def to_float(images, device):
    """uint8 (N, 3, 32, 32) images to float32 in [0, 1]: exactly what transforms.ToTensor() gives."""
    # Convert on the device: copying uint8 moves four times fewer bytes than float32.
    return images.to(device, non_blocking=True).float() / 255


def accuracy(model, loader, device):
    """Percentage of the loader's images whose highest score is the right class."""
    model.eval()
    correct = 0
    with torch.inference_mode():
        for images, labels in loader:
            # Batches this big run faster with the pixels stored channels-last
            # (see "Speed" in the README); the values stay the same.
            images = images.contiguous(memory_format=torch.channels_last)
            outputs = model(to_float(images, device))
            correct += (outputs.argmax(dim=1) == labels.to(device)).sum().item()
    return 100.0 * correct / len(loader.dataset)


def save_atomically(state_dict, path):
    """Write to a temporary file, then rename it: a crash never leaves a truncated file at path."""
    temporary = path + ".tmp"
    try:
        with open(temporary, "wb") as file:
            torch.save(state_dict, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def main(argv=None):
    # Parameters
    args = parse_args(argv)
    torch.manual_seed(args.seed)  # the shuffling, the initial weights and dropout all draw from it
    torch.backends.cudnn.deterministic = True  # on a GPU too, the same seed gives the same weights
    device = args.device
    print(f"Device            : {device}")

    # Data: CIFAR-10 as torchvision reads it, kept as uint8 tensors (N, 3, 32, 32).
    # ToTensor() on each PIL image would give the same values, far more slowly.
    train_set = load_cifar10(args.data_dir, train=True)
    test_set = load_cifar10(args.data_dir, train=False)
    train_images = torch.from_numpy(train_set.data[:args.limit]).permute(0, 3, 1, 2)
    train_labels = torch.tensor(train_set.targets[:args.limit])
    test_images = torch.from_numpy(test_set.data[:args.limit]).permute(0, 3, 1, 2)
    test_labels = torch.tensor(test_set.targets[:args.limit])
    print("Training set size : %d" % len(train_images))
    print("Test set size     : %d" % len(test_images))
    print("Image size        : %d x %d\n" % tuple(train_images.shape[2:]))

    train_loader = make_loader(train_images, train_labels, args.batch_size, True, args.workers, device)
    # The same training images, in order, for the training accuracy.
    train_eval_loader = make_loader(train_images, train_labels, EVAL_BATCH_SIZE, False, args.workers, device)
    test_loader = make_loader(test_images, test_labels, EVAL_BATCH_SIZE, False, args.workers, device)

    # Network
    model = MyNet().to(device)

    # Loss and optimizer
    criterion = nn.CrossEntropyLoss()
    # fused: one call updates every weight, the same update with less overhead.
    optimizer = optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, fused=True)

    # Training
    print("Training")
    start = time.perf_counter()
    batches_per_epoch = len(train_loader)
    for epoch in range(args.epochs):
        model.train()
        running_loss, running_batches = 0.0, 0
        for i, (images, labels) in enumerate(train_loader):
            images, labels = to_float(images, device), labels.to(device, non_blocking=True)

            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()

            # The mean loss every log_interval mini-batches, and over the last few
            # of an epoch too short or too uneven to end on one (--limit, --batch-size).
            running_loss += loss.item()
            running_batches += 1
            if running_batches == args.log_interval or i + 1 == batches_per_epoch:
                print("Epoch : %2d, mini-batch : %4d, loss : %.3f" % (epoch, i + 1, running_loss / running_batches))
                running_loss, running_batches = 0.0, 0

        training_accuracy = accuracy(model, train_eval_loader, device)
        test_accuracy = accuracy(model, test_loader, device)
        print("Epoch : %2d, training accuracy = %6.2f %%, test accuracy = %6.2f %%"
              % (epoch, training_accuracy, test_accuracy))

    # Saving: CPU tensors, so that the file loads on any machine.
    save_atomically(model.cpu().state_dict(), args.output)
    print(f"Saved the weights to {args.output} (training took {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("\ninterrupted: no weights were saved")
