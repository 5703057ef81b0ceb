"""README.md: each of its Python snippets, run as the README prints it, on weights that step1.py saved; the errors
its Troubleshooting names, as torch words them; the Pillow that requirements.txt must ask for, for its picture
snippet; the files it names, the options it lists and the stop line it shows, as the repository has them."""
import argparse
import os
import re
import shutil
import struct
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision
import torchvision.transforms as transforms
from PIL import Image, ImageColor

import checkpoints
import step1
import stop_signals
from helpers import CIFAR10_LABEL_NAMES, ROOT
from model import CLASSES, MyNet


def readme():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as file:
        return file.read()


def readme_snippet(containing):
    """The one ```python block of the README that contains the given text."""
    [snippet] = [block for block in re.findall(r"```python\n(.*?)```", readme(), re.S) if containing in block]
    return snippet


def trained_model(weights):
    model = MyNet()
    model.load_state_dict(torch.load(weights, weights_only=True))
    return model.eval()


def exec_snippet(containing, folder, monkeypatch, replace=("", ""), **names):
    """Run the README's snippet in this process, as a script of its own in folder, with one text swapped if asked and
    the given names defined; return its names."""
    snippet = readme_snippet(containing)
    assert replace[0] in snippet
    monkeypatch.chdir(folder)
    namespace = dict(names)
    exec(snippet.replace(*replace), namespace)
    return namespace


def test_loading_the_weights_classifies_a_test_image(guide_run, cifar_dir, skip_md5_check, tmp_path, monkeypatch,
                                                     capsys):
    _, weights = guide_run
    # The snippet reads ./my_network.pth and ~/datasets: give it both, in a folder of its own.
    shutil.copy(weights, tmp_path / "my_network.pth")
    shutil.copytree(cifar_dir, tmp_path / "datasets")
    monkeypatch.setenv("HOME", str(tmp_path))
    exec_snippet("image, label = test_set[0]", tmp_path, monkeypatch)
    printed = capsys.readouterr().out

    image, label = torchvision.datasets.CIFAR10(cifar_dir, train=False, transform=transforms.ToTensor())[0]
    with torch.no_grad():
        guess = trained_model(weights)(image.unsqueeze(0)).argmax().item()
    assert printed == f"guess: {CIFAR10_LABEL_NAMES[guess]}, truth: {CIFAR10_LABEL_NAMES[label]}\n"


def big_endian_tiff(path, grey):
    """A 16-bit grey TIFF in big-endian byte order ("MM"), as some scanners write it: Pillow reads it, mode I;16B,
    but does not write it."""
    height, width = grey.shape
    pixels = grey.astype(">u2").tobytes()
    entries = [(256, 3, width), (257, 3, height), (258, 3, 16), (259, 3, 1), (262, 3, 1), (273, 4, 8),
               (277, 3, 1), (278, 3, height), (279, 4, len(pixels))]  # tag, type (3: short, 4: long), value
    directory = struct.pack(">H", len(entries)) + b"".join(
        struct.pack(">HHI", tag, kind, 1) + (struct.pack(">HH", value, 0) if kind == 3 else struct.pack(">I", value))
        for tag, kind, value in entries) + struct.pack(">I", 0)
    path.write_bytes(b"MM\x00\x2a" + struct.pack(">I", 8 + len(pixels)) + pixels + directory)


def stretched(values):
    """Grey values of any range as 8 bits, the darkest to 0 and the brightest to 255 (rounded down)."""
    values = values.astype(np.float64)
    return Image.fromarray(((values - values.min()) * 255 // (values.max() - values.min())).astype(np.uint8), "L")


GREY_RANGES = {"16-bit grey PNG": (0, 65535, np.uint16), "16-bit grey TIFF, big-endian": (1000, 61000, np.uint16),
               "32-bit grey TIFF": (-70000, 9000000, np.int32), "32-bit float grey TIFF": (0.25, 0.75, np.float32)}


def picture(kind, path):
    """A picture unlike CIFAR-10's: large, of any mode, in the format its name says. Returns the picture as the
    snippet should see it: upright, 8 bits per channel, RGB."""
    rng = np.random.default_rng(len(kind))
    size = {"RGBA PNG": (50, 70), "grey PNG": (33, 33)}.get(kind, (64, 48))
    pixels = rng.integers(0, 256, size=(size[1], size[0], 4), dtype=np.uint8)
    pixels[: size[1] // 2, :, 0] = 255  # something other than noise: a red top half
    mode = {"RGBA PNG": "RGBA", "grey PNG": "L"}.get(kind, "RGB")
    image = Image.fromarray(pixels, "RGBA").convert(mode)
    if kind in GREY_RANGES:  # from dark to bright, in the range the kind's values really have
        low, high, dtype = GREY_RANGES[kind]
        steps = np.arange(size[0] * size[1]).reshape(size[1], size[0])
        if dtype == np.float32:  # as a depth map or a scientific image: any range of real numbers
            grey = (low + steps * (high - low) / (size[0] * size[1] - 1)).astype(dtype)
        else:
            grey = (low + steps * (high - low) // (size[0] * size[1] - 1)).astype(dtype)
        if kind.endswith("big-endian"):
            big_endian_tiff(path, grey)
        else:
            Image.fromarray(grey).save(path)
        with Image.open(path) as saved:  # a 16-bit grey PNG opens as I;16 from Pillow 10.3 on, as I before
            assert saved.mode in {"16-bit grey PNG": ("I;16", "I"), "16-bit grey TIFF, big-endian": ("I;16B",),
                                  "32-bit float grey TIFF": ("F",)}.get(kind, ("I",))
            assert np.array_equal(np.asarray(saved), grey)  # every value kept, for the snippet to stretch
        return stretched(grey).convert("RGB")
    if kind == "phone photo, stored sideways":  # the camera's pixels, and the EXIF tag that turns them upright
        exif = Image.Exif()
        exif[0x0112] = 6  # Orientation: turn 90 degrees clockwise to show
        image.save(path, exif=exif)
        with Image.open(path) as saved:
            return saved.transpose(Image.Transpose.ROTATE_270).convert("RGB")
    image.save(path)
    with Image.open(path) as saved:
        return saved.convert("RGB")


@pytest.mark.parametrize("kind, name", [("large RGB JPEG", "photo.jpg"), ("RGBA PNG", "logo.png"),
                                        ("grey PNG", "grey.png"), ("16-bit grey PNG", "scan.png"),
                                        ("16-bit grey TIFF, big-endian", "scan.tif"),
                                        ("32-bit grey TIFF", "depth.tif"), ("32-bit float grey TIFF", "float.tif"),
                                        ("phone photo, stored sideways", "IMG_0001.JPG"), ("BMP", "paint.bmp"),
                                        ("TIFF", "scan.tif"), ("GIF", "drawing.gif"), ("WebP", "web.webp")])
def test_classifying_your_own_picture_prints_the_three_likeliest_classes(guide_run, tmp_path, kind, name,
                                                                         monkeypatch, capsys):
    _, weights = guide_run
    shutil.copy(weights, tmp_path / "my_network.pth")
    seen = picture(kind, tmp_path / name)
    # Pillow refuses pictures above twice this many pixels, unless told otherwise: the snippet does.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    exec_snippet("my_picture.jpg", tmp_path, monkeypatch, replace=("my_picture.jpg", name))
    printed = capsys.readouterr().out.splitlines()

    # The same probabilities, computed here another way: Pillow's bilinear resize, then bytes / 255.
    def probabilities(rgb):
        image = torch.from_numpy(np.asarray(rgb.resize((32, 32), Image.BILINEAR)).copy()).permute(2, 0, 1) / 255
        with torch.no_grad():
            return trained_model(weights)(image.float().unsqueeze(0)).softmax(dim=1)[0]

    expected = probabilities(seen)
    order = expected.argsort(descending=True)[:3]
    assert printed == [f"{CLASSES[i]} {100 * expected[i]:.1f} %" for i in order]
    assert all(re.fullmatch(r"[a-z]+ \d{1,3}\.\d %", line) for line in printed)
    if kind in (*GREY_RANGES, "phone photo, stored sideways") and "big-endian" not in kind:
        with Image.open(tmp_path / name) as plain:  # not what a plain convert("RGB") gives
            assert not torch.allclose(probabilities(plain.convert("RGB")), expected)


def frames(png, colour):
    """How many rectangles of the colour are drawn in the picture: their top-left corners, where a line of at least
    100 pixels of exactly that colour goes right and one goes down."""
    pixels = np.asarray(png.convert("RGB")).astype(int)
    mask = (pixels == ImageColor.getrgb(colour)).all(axis=2)
    corners = mask.copy()
    corners[1:, :] &= ~mask[:-1, :]  # nothing of the colour above
    corners[:, 1:] &= ~mask[:, :-1]  # nor to the left
    return sum(mask[y, x:x + 100].all() and mask[y:y + 100, x].all() for y, x in zip(*np.nonzero(corners)))


def test_the_picture_of_predictions_frames_each_guess_right_or_wrong(guide_run, cifar_dir, tmp_path, skip_md5_check,
                                                                     monkeypatch, capsys):
    _, weights = guide_run
    shutil.copy(weights, tmp_path / "my_network.pth")
    shutil.copytree(cifar_dir, tmp_path / "datasets")
    monkeypatch.setenv("HOME", str(tmp_path))  # the snippet reads ~/datasets
    exec_snippet("predictions.png", tmp_path, monkeypatch)
    printed = capsys.readouterr().out

    # The guesses, computed here image by image.
    test_set = torchvision.datasets.CIFAR10(cifar_dir, train=False, transform=transforms.ToTensor())
    model = trained_model(weights)
    with torch.no_grad():
        right = sum(model(image.unsqueeze(0)).argmax().item() == label for image, label in list(test_set)[:64])
    assert 0 < right < 64  # both kinds of frame are drawn
    assert printed == f"{right} of 64 right, drawn in predictions.png\n"
    with Image.open(tmp_path / "predictions.png") as png:
        assert png.format == "PNG"
        # 8 columns of 128-pixel images and 8 rows of 128 + 32 pixels, 8 pixels apart and around.
        assert png.size == (8 * 128 + 9 * 8, 8 * 160 + 9 * 8)
        assert (frames(png, "green"), frames(png, "red")) == (right, 64 - right)


def test_stripping_module_from_dataparallel_weights(guide_run, tmp_path, monkeypatch):
    _, weights = guide_run
    wrapped = nn.DataParallel(trained_model(weights))
    torch.save(wrapped.state_dict(), tmp_path / "my_network.pth")
    assert all(name.startswith("module.") for name in torch.load(tmp_path / "my_network.pth"))
    with pytest.raises(RuntimeError, match=r"(?s)Missing key\(s\) in state_dict.*Unexpected key\(s\).*module\."):
        MyNet().load_state_dict(torch.load(tmp_path / "my_network.pth"))  # the error the section is about

    model = exec_snippet('removeprefix("module.")', tmp_path, monkeypatch)["model"]
    expected = trained_model(weights).state_dict()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in model.state_dict().items())


def test_converting_a_whole_pickled_model_to_a_state_dict(guide_run, tmp_path, monkeypatch):
    _, weights = guide_run
    torch.save(trained_model(weights), tmp_path / "whole_model.pth")
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(tmp_path / "whole_model.pth")  # the error the section is about

    exec_snippet("whole_model.pth", tmp_path, monkeypatch)
    converted = torch.load(tmp_path / "my_network.pth", weights_only=True)
    expected = trained_model(weights).state_dict()
    assert list(converted) == list(expected)
    assert all(torch.equal(converted[name], expected[name]) for name in expected)


def test_moving_the_images_to_the_networks_device(tmp_path, monkeypatch):
    model = MyNet().eval()
    images = torch.rand(4, 3, 32, 32)
    names = exec_snippet("next(model.parameters()).device", tmp_path, monkeypatch, model=model, images=images)
    scores = names["scores"]
    assert scores.shape == (4, 10)
    with torch.no_grad():
        assert torch.allclose(scores, model(images))


def test_troubleshooting_names_each_error_and_the_size_mismatch_is_worded_as_torch_words_it():
    with open(f"{ROOT}/README.md", encoding="utf-8") as readme:
        troubleshooting = readme.read().split("## Troubleshooting")[1]
    for text in ["freeze_support", "CERTIFICATE_VERIFY_FAILED", "Missing key(s) in state_dict", "Unexpected key(s)",
                 "size mismatch for fc_layers.5.weight", "Weights only load failed", "Can't get attribute 'MyNet'",
                 "Expected all tensors to be on the same device",
                 "the loss or the weights became nan or inf"]:
        assert text in troubleshooting, text
    state_dict = MyNet().state_dict()
    state_dict["fc_layers.5.weight"] = torch.zeros(5, 96)  # a last layer of 5 outputs instead of 10
    with pytest.raises(RuntimeError, match=re.escape("size mismatch for fc_layers.5.weight")):
        MyNet().load_state_dict(state_dict)


def test_the_requirements_ask_for_the_pillow_that_the_picture_snippet_needs():
    """ImageFont.load_default(size=...) came with Pillow 10.1; torchvision alone allows older ones."""
    assert "ImageFont.load_default(size=" in readme_snippet("predictions.png")
    with open(os.path.join(ROOT, "requirements.txt"), encoding="utf-8") as file:
        requirements = file.read()
    assert re.search(r"^pillow>=10\.1\b", requirements, re.M | re.I)


def test_every_file_the_readme_names_is_in_the_repository():
    text = readme()
    links = [target for target in re.findall(r"\]\(([^)#]+)\)", text) if "://" not in target]
    assert links, "no links found"
    for target in links:
        assert os.path.exists(os.path.join(ROOT, target)), target
    for name in set(re.findall(r"`([\w/.-]+\.(?:py|txt|toml|sh))`", text)):
            assert any(os.path.exists(os.path.join(folder, name)) for folder, _, _ in os.walk(ROOT)), name


def test_the_options_table_lists_every_option_of_help(capsys):
    with pytest.raises(SystemExit):
        step1.main(["--help"])
    options = set(re.findall(r"^  (--[\w-]+)", capsys.readouterr().out, re.M)) - {"--help"}
    table = readme().split("## Options")[1].split("\n## ")[0]
    listed = {option.replace("--no-", "--") for option in re.findall(r"^\| `(--[\w-]+)", table, re.M)}
    assert options == listed


def test_the_stop_line_the_readme_shows_is_the_one_step1_prints(monkeypatch):
    [line] = [line for line in readme().splitlines() if line.startswith("interrupted during epoch ")]
    monkeypatch.setattr(sys, "executable", shutil.which("python"))  # the Python that `python` starts
    monkeypatch.chdir(ROOT)
    args = argparse.Namespace(output="my_network.pth", seed=1, batch_size=10, lr=0.001, momentum=0.9, limit=0,
                              epochs=10, resume=False)
    checkpoint = checkpoints.Checkpoints.__new__(checkpoints.Checkpoints)
    checkpoint.path = f"{args.output}.checkpoint"
    checkpoint.command = checkpoints.resume_command([])
    checkpoint.last_epoch = 6
    checkpoint.epochs = 10
    with pytest.raises(KeyboardInterrupt) as stop, checkpoint:
        raise stop_signals.Stopped()
    assert str(stop.value) == "\n" + line
