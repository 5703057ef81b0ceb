"""MyNet: the small convolutional network of the guide, for 32x32 colour images.

Three convolutional blocks shrink a (3, 32, 32) image to (24, 4, 4) features,
then three fully connected layers turn those 384 numbers into 10 class scores.
Submodule names and order match the guide's code, so a state_dict saved by
either network loads into the other.
"""
import torch.nn as nn


def conv_block(in_channels, out_channels):
    """Convolution, batch normalization, ReLU, then 2x2 max pooling (halves height and width)."""
    return [
        # No bias: the batch normalization right after adds its own.
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=2, stride=2),
    ]


class MyNet(nn.Module):
    input_shape = (3, 32, 32)  # channels, height, width of one image

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
        # Check the shape up front: a wrong size would otherwise be silently
        # reshaped into the wrong number of rows, or fail deep inside a layer.
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"MyNet expects images of shape (N, 3, 32, 32), got {tuple(x.shape)}")
        x = self.conv_layers(x)
        x = x.flatten(start_dim=1)
        return self.fc_layers(x)
