"""MyNet, the small convolutional network of the guide, and CLASSES, the names of its 10 outputs.

Three convolutional blocks shrink a (3, 32, 32) image to (24, 4, 4) features,
then three fully connected layers turn those 384 numbers into 10 class scores.
Submodule names and order match the guide's code, so a state_dict saved by
either network loads into the other.
"""
from typing import List, Optional

import torch
import torch.nn as nn

# CIFAR-10's classes, in the order of the labels (and of torchvision's CIFAR10(...).classes):
# output i of MyNet is the score of CLASSES[i].
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class MyNet(nn.Module):
    def __init__(self):
        super().__init__()
        # 3x32x32 -> 6x16x16 -> 12x8x8 -> 24x4x4
        self.conv_layers = nn.Sequential(
            *conv_block(3, 6),
            *conv_block(6, 12),
            *conv_block(12, 24),
        )
        # 24 * 4 * 4 = 384 features -> 192 -> 96 -> 10 class scores
        self.fc_layers = nn.Sequential(
            nn.Dropout(p=0.1),
            nn.Linear(24 * 4 * 4, 192),
            nn.ReLU(inplace=True),
            nn.Linear(192, 96),
            nn.ReLU(inplace=True),
            nn.Linear(96, 10),
        )

    def forward(self, x):
        # The slips beginners often make, caught here with a message that says what to do
        # instead of an error from deep inside a layer.
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"MyNet expects a batch of images as a tensor, got {type_name(x)}: " + non_tensor_advice(x))
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != 32 or x.shape[3] != 32:
            raise ValueError(f"MyNet expects a batch of images of shape (N, 3, 32, 32), got {list(x.shape)}: "
                             + shape_advice(list(x.shape)))
        expected = self.conv_layers[0].weight.dtype
        if x.dtype != expected and not autocast_takes(x):
            raise TypeError(f"MyNet expects pixels as {expected} between 0 and 1, like its weights, got {x.dtype}: "
                            + dtype_advice(x, expected))
        x = self.conv_layers(x)
        x = x.flatten(start_dim=1)
        return self.fc_layers(x)


def conv_block(in_channels, out_channels):
    """Convolution, batch normalization, ReLU, then 2x2 max pooling (halves height and width)."""
    return [
        # No bias: the batch normalization right after adds its own.
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=2, stride=2),
    ]


def autocast_takes(x: torch.Tensor) -> bool:
    """Whether torch.autocast, on for x's device, casts x for the layers, as it does floats of 16 and 32 bits."""
    if torch.jit.is_scripting():  # TorchScript knows only CUDA's autocast, by another call
        return False
    return torch.is_autocast_enabled(x.device.type) and x.dtype in (torch.float16, torch.bfloat16, torch.float32)


def shape_advice(shape: List[int]) -> str:
    """What to do about an input of the wrong shape, for the shapes that beginners' slips give."""
    if shape == [3, 32, 32]:
        return "a single image needs a batch dimension: image.unsqueeze(0)"
    if len(shape) == 3 and shape[0] == 3:
        return "a single image needs a batch dimension, image.unsqueeze(0), and 32 x 32 pixels: transforms.Resize"
    if len(shape) == 3 and shape[0] in (1, 4):  # what ToTensor() makes of a grey picture, or of one with transparency
        needs = "3 channels and a batch dimension" if shape[1:] == [32, 32] else (
            "3 channels, a batch dimension and 32 x 32 pixels (transforms.Resize)")
        fix = 'picture.convert("RGB") before ToTensor(), then image.unsqueeze(0); or image'
        if shape[0] == 1:
            return "a single grey image needs " + needs + ": " + fix + ".expand(3, -1, -1).unsqueeze(0)"
        return "a single image with transparency needs " + needs + ": " + fix + "[:3].unsqueeze(0)"
    if len(shape) in (3, 4) and shape[-1] in (1, 3, 4) and shape[-3] not in (1, 3, 4):
        return ("the channels come last here, as Pillow and NumPy store them; PyTorch wants them first: "
                + ("image.permute(2, 0, 1).unsqueeze(0)" if len(shape) == 3 else "images.permute(0, 3, 1, 2)"))
    if len(shape) == 4 and shape[1] == 1:
        return 'grey images need 3 channels: picture.convert("RGB") before ToTensor(), or images.expand(-1, 3, -1, -1)'
    if len(shape) == 4 and shape[1] == 4:
        return 'drop the transparency channel: picture.convert("RGB") before ToTensor(), or images[:, :3]'
    if len(shape) == 4 and shape[1] == 3:
        return "resize the images to 32 x 32 pixels first, for example with transforms.Resize((32, 32))"
    return "a batch of N colour images of 32 x 32 pixels, channels first"


def dtype_advice(x: torch.Tensor, expected: torch.dtype) -> str:
    """What to do about pixels of the wrong type, for the types that beginners' data comes in."""
    if x.dtype == torch.bool:
        return "true and false are not pixels: images.float() makes them 1 and 0"
    if x.is_complex():
        return "pixels are real numbers: keep images.real, or take images.abs()"
    if not x.is_floating_point():
        return "convert integer pixels (0 to 255) as transforms.ToTensor() does: images.float() / 255"
    if expected == torch.float32:
        return "images.float() converts them (NumPy's arrays are float64: torch.from_numpy(array).float())"
    return "images.to(next(model.parameters()).dtype) converts them to the weights' type"


def type_name(x) -> str:
    """A value's type as a user would write it: "a list", "a numpy.ndarray"."""
    if type(x).__module__ == "builtins":
        return f"a {type(x).__name__}"
    return f"a {type(x).__module__}.{type(x).__qualname__}"


def package_name(x) -> str:
    """The package of a value's type: "numpy" for an array, "PIL" for a picture, without importing either."""
    return type(x).__module__.partition(".")[0]


GENERAL_ADVICE = "a tensor of shape (N, 3, 32, 32), such as transforms.ToTensor() makes of each image"


def non_tensor_advice(x) -> str:
    """What to do about images that are not in a tensor yet."""
    if package_name(x) == "numpy":
        return "torch.from_numpy(array) makes one"
    if package_name(x) == "PIL":
        return "transforms.ToTensor()(picture).unsqueeze(0) makes a batch of one, as in training"
    if isinstance(x, (list, tuple)):
        return sequence_advice(x)
    return GENERAL_ADVICE


def sequence_advice(items) -> str:
    """What to do about a list or tuple: the call that makes one batch of it depends on what it holds."""
    if len(items) == 0:
        return "it is empty, with no images in it to classify"
    # A DataLoader's batch is [images, labels], a dataset's sample (image, label): the labels are no input.
    if len(items) == 2 and is_labels(items[1]):
        images, labels = items
        if isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor) and labels.dim() == 1:
            return "pass the images only, not their labels: images, labels = batch; model(images)"
        if isinstance(images, torch.Tensor) and images.dim() == 3:
            return "pass the image only, as a batch of one: image, label = sample; model(image.unsqueeze(0))"
        if package_name(images) == "PIL":
            return ("pass the picture only, as a batch of one: picture, label = sample; "
                    "model(transforms.ToTensor()(picture).unsqueeze(0))")
    if all(isinstance(item, torch.Tensor) for item in items):
        join = joining_call([list(item.shape) for item in items])
        if join == "torch.cat":
            return "torch.cat(batches) joins a list of batches into one (torch.stack would add a dimension)"
        if join == "torch.stack":
            return "torch.stack(images) makes one batch of a list of image tensors"
        return ("the images differ in shape: make each (3, 32, 32), with transforms.Resize((32, 32)) for their "
                "size, then torch.stack(images)")
    if all(is_array(item) for item in items):
        join = joining_call([list(item.shape) for item in items])
        if join is not None:
            return f"{join}([torch.from_numpy(array) for array in arrays]) makes one batch of a list of arrays"
    if all(package_name(item) == "PIL" for item in items):
        # Each one made an input as the README makes its picture one: users' pictures differ in size and mode,
        # and torch.stack refuses tensors of different shapes. (torch.tensor, advised before, refuses pictures.)
        return ("to_input = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor()]); "
                'torch.stack([to_input(picture.convert("RGB")) for picture in pictures])')
    depth = nested_numbers_depth(items)
    if depth == 3:  # one image, written as lists of numbers
        return "torch.tensor(values).unsqueeze(0) makes a batch of one of a list of numbers nested as an image is"
    if depth > 0:
        return "torch.tensor(values) makes one of a list of numbers, nested as the batch is"
    return GENERAL_ADVICE


def is_labels(x) -> bool:
    """Whether x looks like the class labels a dataset gives beside its images: a whole number, or a row of them."""
    if isinstance(x, torch.Tensor):
        return x.dim() <= 1 and not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool
    return isinstance(x, int) and not isinstance(x, bool)


def is_array(x) -> bool:
    """Whether x is a NumPy array, which torch.from_numpy takes (and NumPy's scalars are not)."""
    return package_name(x) == "numpy" and type(x).__name__ == "ndarray"


def joining_call(shapes: List[List[int]]) -> Optional[str]:
    """The call that joins tensors of these shapes into one batch, None where neither can.

    torch.stack adds a batch dimension, as images need; batches have one, so torch.cat joins them.
    """
    if all(len(shape) == 4 and shape[1:] == shapes[0][1:] for shape in shapes):
        return "torch.cat"
    if all(shape == shapes[0] for shape in shapes):
        return "torch.stack"
    return None


def nested_numbers_depth(items) -> int:
    """How many lists deep the numbers in items are, following first items (4 for a batch); 0 if not numbers."""
    depth = 0
    while isinstance(items, (list, tuple)) and len(items) > 0:
        items, depth = items[0], depth + 1
    return depth if isinstance(items, (int, float)) else 0
