"""The guide's way of training, written out: the baseline that benchmarks/compare.py times step1.py against.

    python -m benchmarks.guide_way --epochs 1   # from the repository root; downloads CIFAR-10 as the guide does

What the guide's step1.py does, in its order: CIFAR-10 through transforms.ToTensor(), a DataLoader of mini-batches of
10 with two workers for each set, SGD, loss.item() at every step, the loss every 1000 mini-batches, then the two
accuracy loops over the loaders, and torch.save of the state_dict. What this file adds: options for the folders and
the number of epochs, and --device, which moves the model and each mini-batch with .to(device) as PyTorch's CIFAR-10
tutorial does. The network is the repository's MyNet, which is the guide's.
"""
import argparse

import torch
import torch.nn as nn
import torch.optim as optim
import torchvision
import torchvision.transforms as transforms

from model import MyNet


def main():
    # Parameters: the guide's, and where to read and write
    parser = argparse.ArgumentParser(description="Train MyNet on CIFAR-10 the guide's way and save its weights.")
    parser.add_argument("--data-dir", default="~/datasets", help="the folder that holds cifar-10-batches-py/")
    parser.add_argument("--epochs", type=int, default=10, help="passes over the training images")
    parser.add_argument("--output", default="my_network.pth", help="where to save the weights")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"], help="where to train")
    args = parser.parse_args()
    batch_size = 10
    learning_rate = 0.001
    momentum = 0.9
    device = torch.device(args.device)

    # Data: each image becomes a tensor in the DataLoader's workers, at every pass
    train_set = torchvision.datasets.CIFAR10(root=args.data_dir, train=True, download=True,
                                             transform=transforms.ToTensor())
    test_set = torchvision.datasets.CIFAR10(root=args.data_dir, train=False, download=True,
                                            transform=transforms.ToTensor())
    train_loader = torch.utils.data.DataLoader(dataset=train_set, batch_size=batch_size, shuffle=True, num_workers=2)
    test_loader = torch.utils.data.DataLoader(dataset=test_set, batch_size=batch_size, shuffle=False, num_workers=2)
    print("Training set size : %d" % train_set.data.shape[0])
    print("Test set size     : %d" % test_set.data.shape[0])
    print("Image size        : %d x %d\n" % (train_set.data.shape[1], train_set.data.shape[2]))

    # Network, loss and optimizer
    model = MyNet().to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum)

    # Training
    print("Training")
    for epoch in range(args.epochs):
        model.train()
        running_loss = 0.0
        for i, (images, labels) in enumerate(train_loader):
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            outputs = model(images)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()  # the guide reads the loss at every step: on a GPU, a wait for it each time
            if i % 1000 == 999:
                print("Epoch : %2d, mini-batch : %4d, loss : %.3f" % (epoch, i + 1, running_loss / 1000))
                running_loss = 0.0

        model.eval()
        training_accuracy = accuracy(model, train_loader, device)
        test_accuracy = accuracy(model, test_loader, device)
        print("Epoch : %2d, training accuracy = %6.2f %%, test accuracy = %6.2f %%"
              % (epoch, training_accuracy, test_accuracy))

    # Saving: the weights only, as the guide saves them
    torch.save(model.state_dict(), args.output)


def accuracy(model, loader, device):
    """The guide's accuracy loop, which it writes twice: once over the training loader, once over the test loader."""
    correct = 0
    total = 0
    with torch.no_grad():
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            outputs = model(images)
            predicted = torch.argmax(outputs.data, 1)
            correct += (predicted == labels).sum().item()
            total += labels.size(0)
    return 100.0 * correct / total


if __name__ == "__main__":  # DataLoader workers import this file again where processes are spawned (Windows, macOS)
    main()
