"""model.py: MyNet beside the guide's network (its layers, parameter count, state_dict names and shapes, weights
that load both ways), its ten scores per image, SGD that trains it, the advice its input checks give for each kind
of wrong input, TorchScript and torch.export, CLASSES, and what importing model.py does."""
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision
import torchvision.transforms as transforms

from helpers import GuideNet, a_new_python, guide_training
from model import CLASSES, MyNet


def trained_a_little(model):
    """Change every weight and running statistic away from their initial values."""
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.1).abs_()
    return model


# The guide's network


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("batch", [1, 5])
def test_output_is_ten_scores_per_image(mode, batch):
    model = MyNet()
    getattr(model, mode)()
    assert model(torch.rand(batch, 3, 32, 32)).shape == (batch, 10)


def test_parameter_count_matches_the_guide():
    model = MyNet()
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 96904


def test_layers_match_the_guide():
    layers = MyNet().conv_layers
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding, c.bias) for c in convs] == [
        (3, 6, (3, 3), (1, 1), None), (6, 12, (3, 3), (1, 1), None), (12, 24, (3, 3), (1, 1), None)]
    fc = MyNet().fc_layers
    assert isinstance(fc[0], nn.Dropout) and fc[0].p == 0.1
    linears = [(m.in_features, m.out_features) for m in fc if isinstance(m, nn.Linear)]
    assert linears == [(384, 192), (192, 96), (96, 10)]


def test_state_dict_keys_and_shapes_match_the_guide():
    ours = {key: tuple(value.shape) for key, value in MyNet().state_dict().items()}
    guides = {key: tuple(value.shape) for key, value in GuideNet().state_dict().items()}
    assert list(ours) == list(guides)
    assert ours == guides


@pytest.mark.parametrize("source, target", [(GuideNet, MyNet), (MyNet, GuideNet)])
def test_weights_move_between_the_guides_network_and_ours(source, target):
    torch.manual_seed(0)
    trained = trained_a_little(source()).eval()
    loaded = target()
    loaded.load_state_dict(trained.state_dict(), strict=True)
    loaded.eval()
    images = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        expected = trained(images)
        assert torch.equal(loaded(images), expected)
        assert not torch.equal(target().eval()(images), expected)  # the weights really changed something


def test_a_few_sgd_steps_learn_an_easy_problem():
    torch.manual_seed(0)
    # Each class is a flat image of its own colour, plus noise: easy to learn.
    labels = torch.arange(10).repeat(20)
    colours = torch.rand(10, 3)
    images = (colours[labels][:, :, None, None] + 0.05 * torch.randn(200, 3, 32, 32)).clamp(0, 1)
    model = MyNet()
    criterion = nn.CrossEntropyLoss()

    def loss_and_accuracy():
        model.eval()
        with torch.no_grad():
            outputs = model(images)
        return criterion(outputs, labels).item(), (outputs.argmax(dim=1) == labels).float().mean().item()

    initial_loss, _ = loss_and_accuracy()
    guide_training(model, images, labels, epochs=8, batch_size=10, lr=0.01, momentum=0.9, log_interval=20)
    final_loss, accuracy = loss_and_accuracy()
    assert final_loss < initial_loss / 2
    assert accuracy > 0.5  # chance is 0.1


# The input checks: advice that fits each wrong input


@pytest.mark.parametrize("shape, advice", [
    ((3, 32, 32), "a single image needs a batch dimension: image.unsqueeze(0)"),
    ((3, 64, 48), "a single image needs a batch dimension, image.unsqueeze(0), and 32 x 32 pixels"),
    ((1, 3, 64, 64), "resize the images to 32 x 32 pixels first, for example with transforms.Resize((32, 32))"),
    ((2, 3, 32, 16), "resize the images to 32 x 32 pixels first"),
    ((1, 1, 32, 32), 'grey images need 3 channels: picture.convert("RGB") before ToTensor(), '
                     'or images.expand(-1, 3, -1, -1)'),
    ((2, 4, 32, 32), 'drop the transparency channel: picture.convert("RGB") before ToTensor(), or images[:, :3]'),
    ((1, 32, 32, 3), "the channels come last here, as Pillow and NumPy store them; PyTorch wants them first: "
                     "images.permute(0, 3, 1, 2)"),
    ((32, 32, 3), "PyTorch wants them first: image.permute(2, 0, 1).unsqueeze(0)"),
    ((10, 3072), "a batch of N colour images of 32 x 32 pixels, channels first"),
    ((1, 32, 32), 'a single grey image needs 3 channels and a batch dimension: picture.convert("RGB") before '
                  'ToTensor(), then image.unsqueeze(0); or image.expand(3, -1, -1).unsqueeze(0)'),
    ((4, 32, 32), 'a single image with transparency needs 3 channels and a batch dimension: picture.convert("RGB") '
                  'before ToTensor(), then image.unsqueeze(0); or image[:3].unsqueeze(0)'),
    ((1, 28, 28), "a single grey image needs 3 channels, a batch dimension and 32 x 32 pixels (transforms.Resize)"),
])
def test_wrong_input_shape_is_a_clear_error_with_the_advice_that_fits(shape, advice):
    with pytest.raises(ValueError) as error:
        MyNet()(torch.rand(shape))
    message = str(error.value)
    assert message.startswith("MyNet expects a batch of images of shape (N, 3, 32, 32), got %s: " % list(shape))
    assert advice in message
    if len(shape) == 4:  # a batch already: not the advice for a single image
        assert "unsqueeze" not in message


@pytest.mark.parametrize("shape", [(1, 1, 32, 32), (1, 32, 32, 3), (1, 3, 64, 64), (1, 32, 32), (4, 32, 32)])
def test_following_the_advice_gives_an_input_that_works(shape):
    images = torch.rand(shape)
    fixed = {(1, 1, 32, 32): lambda: images.expand(-1, 3, -1, -1),
             (1, 32, 32, 3): lambda: images.permute(0, 3, 1, 2),
             (1, 3, 64, 64): lambda: transforms.Resize((32, 32))(images),
             (1, 32, 32): lambda: images.expand(3, -1, -1).unsqueeze(0),
             (4, 32, 32): lambda: images[:3].unsqueeze(0)}[shape]()
    assert MyNet().eval()(fixed).shape == (1, 10)


CHANNELS_LAST = "the channels come last here"


@pytest.mark.parametrize("shape, advice", [
    pytest.param((2, 3, 32, 3), "resize the images to 32 x 32 pixels first", id="2x3x32x3"),
    pytest.param((1, 3, 64, 4), "resize the images to 32 x 32 pixels first", id="1x3x64x4"),
    pytest.param((2, 1, 28, 1), "grey images need 3 channels", id="2x1x28x1"),
    pytest.param((2, 4, 32, 3), "drop the transparency channel", id="2x4x32x3"),
    pytest.param((3, 28, 3), "a single image needs a batch dimension, image.unsqueeze(0), and 32 x 32 pixels",
                 id="3x28x3"),
])
def test_channels_first_images_whose_width_is_1_3_or_4_are_not_called_channels_last(shape, advice):
    """The third dimension from the end holds their channels; the last one is only a narrow width."""
    with pytest.raises(ValueError) as error:
        MyNet()(torch.rand(shape))
    assert CHANNELS_LAST not in str(error.value)
    assert advice in str(error.value)


@pytest.mark.parametrize("shape", [(2, 2, 32, 32), (2, 6, 32, 32)], ids=["2 channels", "6 channels"])
def test_a_channel_count_no_image_has_gets_the_general_advice(shape):
    """Not grey, colour or transparent images: the advice for those would be a guess."""
    with pytest.raises(ValueError) as error:
        MyNet()(torch.rand(shape))
    assert str(error.value).endswith(": a batch of N colour images of 32 x 32 pixels, channels first")


@pytest.mark.parametrize("dtype, advice", [
    (torch.uint8, "convert integer pixels (0 to 255) as transforms.ToTensor() does: images.float() / 255"),
    (torch.int64, "convert integer pixels (0 to 255) as transforms.ToTensor() does: images.float() / 255"),
    (torch.float64, "images.float() converts them (NumPy's arrays are float64: torch.from_numpy(array).float())"),
    (torch.float16, "images.float() converts them"),
    (torch.bool, "true and false are not pixels: images.float() makes them 1 and 0"),
    (torch.complex64, "pixels are real numbers: keep images.real, or take images.abs()"),
])
def test_pixels_of_another_type_are_a_clear_error_with_the_advice_that_fits(dtype, advice):
    with pytest.raises(TypeError) as error:
        MyNet()(torch.zeros(2, 3, 32, 32, dtype=dtype))
    message = str(error.value)
    assert message.startswith(f"MyNet expects pixels as torch.float32 between 0 and 1, like its weights, got {dtype}: ")
    assert advice in message


def test_the_advice_for_float64_pixels_works():
    images = torch.from_numpy(np.random.default_rng(0).random((2, 3, 32, 32)))  # NumPy's float64
    assert images.dtype == torch.float64
    model = MyNet().eval()
    with torch.no_grad():
        assert torch.equal(model(images.float()), model(images.to(torch.float32)))
    assert model.double()(images).dtype == torch.float64  # a float64 network takes float64 pixels


@pytest.mark.parametrize("kind, advice", [
    ("a NumPy array", "torch.from_numpy(array)"),
    ("a PIL image", "transforms.ToTensor()(picture).unsqueeze(0)"),
    ("a list of tensors", "torch.stack(images)"),
    ("a nested list of numbers", "torch.tensor(values) makes one of a list of numbers, nested as the batch is"),
])
def test_mynet_on_what_is_not_a_tensor_gets_advice(kind, advice):
    from PIL import Image

    value = {"a NumPy array": lambda: torch.zeros(1, 32, 32, 3).numpy(),
             "a PIL image": lambda: Image.new("RGB", (32, 32)),
             "a list of tensors": lambda: [torch.zeros(3, 32, 32)],
             "a nested list of numbers": lambda: torch.zeros(1, 3, 32, 32).tolist()}[kind]()
    with pytest.raises(TypeError) as raised:
        MyNet()(value)
    assert str(raised.value).startswith("MyNet expects a batch of images as a tensor, got a ")
    assert advice in str(raised.value)
    fixed = {"a NumPy array": lambda: torch.from_numpy(value).permute(0, 3, 1, 2),
             "a PIL image": lambda: transforms.ToTensor()(value).unsqueeze(0),
             "a list of tensors": lambda: torch.stack(value),
             "a nested list of numbers": lambda: torch.tensor(value)}[kind]()
    assert MyNet().eval()(fixed).shape == (1, 10)  # the advice works


def pictures():
    """Pictures as users have them: of any size, colour, grey or with transparency."""
    from PIL import Image

    return [Image.new("RGB", (32, 32), "red"), Image.new("L", (64, 48), 128), Image.new("RGBA", (20, 30))]


def a_dataloaders_batch():
    """What a DataLoader gives: a list of the images and their labels."""
    dataset = torch.utils.data.TensorDataset(torch.rand(4, 3, 32, 32), torch.arange(4))
    return next(iter(torch.utils.data.DataLoader(dataset, batch_size=2)))


def a_picture_and_its_label():
    """What torchvision's CIFAR10 gives without a transform: a picture and its label."""
    from PIL import Image

    return Image.new("RGB", (32, 32)), 3


def to_input(picture):
    """As the advice says: to_input = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor()])."""
    return transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor()])(picture)


# Each case: the input, the advice it gets, and that advice followed, as a user would type it.
SEQUENCES = {
    "pictures": (pictures, 'to_input = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor()]); '
                 'torch.stack([to_input(picture.convert("RGB")) for picture in pictures])',
                 lambda pictures: torch.stack([to_input(picture.convert("RGB")) for picture in pictures])),
    "a DataLoader's batch": (a_dataloaders_batch,
                             "pass the images only, not their labels: images, labels = batch; model(images)",
                             lambda batch: batch[0]),
    "images and labels in a tuple": (lambda: (torch.rand(2, 3, 32, 32), torch.tensor([5, 7])),
                                     "pass the images only, not their labels: images, labels = batch; model(images)",
                                     lambda batch: batch[0]),
    "a dataset's sample": (lambda: (torch.rand(3, 32, 32), 3),
                           "pass the image only, as a batch of one: image, label = sample; model(image.unsqueeze(0))",
                           lambda sample: sample[0].unsqueeze(0)),
    "a dataset's sample of a picture": (a_picture_and_its_label,
                                        "pass the picture only, as a batch of one: picture, label = sample; "
                                        "model(transforms.ToTensor()(picture).unsqueeze(0))",
                                        lambda sample: transforms.ToTensor()(sample[0]).unsqueeze(0)),
    "batches of one": (lambda: [torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)],
                       "torch.cat(batches) joins a list of batches into one (torch.stack would add a dimension)",
                       torch.cat),
    "images of two sizes": (lambda: [torch.rand(3, 32, 32), torch.rand(3, 64, 48)],
                            "the images differ in shape: make each (3, 32, 32), with transforms.Resize((32, 32)) "
                            "for their size, then torch.stack(images)",
                            lambda images: torch.stack([transforms.Resize((32, 32))(image) for image in images])),
    "NumPy images": (lambda: [np.zeros((3, 32, 32), np.float32), np.ones((3, 32, 32), np.float32)],
                     "torch.stack([torch.from_numpy(array) for array in arrays]) makes one batch of a list of arrays",
                     lambda arrays: torch.stack([torch.from_numpy(array) for array in arrays])),
    "NumPy batches": (lambda: [np.zeros((1, 3, 32, 32), np.float32), np.ones((2, 3, 32, 32), np.float32)],
                      "torch.cat([torch.from_numpy(array) for array in arrays]) makes one batch of a list of arrays",
                      lambda arrays: torch.cat([torch.from_numpy(array) for array in arrays])),
    "numbers nested as an image": (lambda: torch.rand(3, 32, 32).tolist(),
                                   "torch.tensor(values).unsqueeze(0) makes a batch of one of a list of numbers "
                                   "nested as an image is",
                                   lambda values: torch.tensor(values).unsqueeze(0)),
}


@pytest.mark.parametrize("kind", SEQUENCES)
def test_a_list_or_tuple_gets_advice_that_works_when_followed(kind):
    make, advice, follow = SEQUENCES[kind]
    value = make()
    with pytest.raises(TypeError) as raised:
        MyNet()(value)
    assert str(raised.value) == f"MyNet expects a batch of images as a tensor, got a {type(value).__name__}: {advice}"
    images = follow(value)
    assert MyNet().eval()(images).shape == (len(images), 10)  # the advice works


def test_an_empty_list_is_said_to_hold_no_images():
    """Not torch.tensor(values), which makes a tensor of shape (0,): no call turns it into images."""
    with pytest.raises(TypeError) as raised:
        MyNet()([])
    assert str(raised.value) == ("MyNet expects a batch of images as a tensor, got a list: "
                                 "it is empty, with no images in it to classify")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("pixels", [torch.float32, torch.float16, torch.bfloat16])
def test_under_autocast_mynet_takes_what_a_convolution_takes(dtype, pixels):
    """torch.autocast casts floats of 16 and 32 bits for each layer: MyNet must not refuse them first."""
    images = torch.rand(2, 3, 32, 32, dtype=pixels)
    model = MyNet().eval()
    with torch.autocast("cpu", dtype=dtype), torch.no_grad():
        assert nn.Conv2d(3, 6, 3)(images).dtype == dtype  # a plain layer takes them
        assert model(images).dtype == dtype
        with pytest.raises(TypeError, match="torch.from_numpy"):  # float64: autocast leaves it as it is
            model(images.double())


# TorchScript and torch.export


def test_torchscript_keeps_the_outputs_and_the_checks():
    model = MyNet().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated in recent versions
        scripted = torch.jit.script(model)
    images = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(scripted(images), model(images))
    with pytest.raises(Exception, match=re.escape("got [3, 32, 32]")):
        scripted(torch.rand(3, 32, 32))
    with pytest.raises(Exception, match=re.escape("as transforms.ToTensor() does: images.float() / 255")):
        scripted(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(Exception, match=re.escape("torch.from_numpy(array).float()")):
        scripted(torch.zeros(1, 3, 32, 32, dtype=torch.float64))


def test_torch_export_with_a_dynamic_batch_size():
    model = trained_a_little(MyNet()).eval()
    exported = torch.export.export(model, (torch.rand(2, 3, 32, 32),),
                                   dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    for batch in (1, 7):
        images = torch.rand(batch, 3, 32, 32)
        with torch.no_grad():
            assert torch.allclose(exported.module()(images), model(images), atol=1e-6)


# CLASSES, and importing model.py


def test_classes_are_cifar10s_in_torchvisions_order(cifar_dir, skip_md5_check):
    assert torchvision.datasets.CIFAR10(cifar_dir, train=False).classes == list(CLASSES)


@pytest.mark.new_python(start=a_new_python)
def test_importing_model_prints_nothing_and_leaves_torchvision_alone(started):
    """model.py, imported first in a new Python (after torch), prints nothing and does not import torchvision."""
    found, stdout, stderr = started.imports()
    assert list(found)[0] == "model"
    _, torchvision_imported = found["model"]
    assert torchvision_imported is False
    assert stdout == ""
    assert stderr == ""
