"""MyNet's advice for inputs of a wrong shape that look like another slip than they are (test_model.py has the
shapes of each slip)."""
import pytest
import torch

from model import MyNet

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
