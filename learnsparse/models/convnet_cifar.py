"""The CIFAR-10 ConvNet of SSL's experiments (Caffe's cifar10_full): three 5x5 convs of 32,
32 and 64 filters, each followed by ReLU and 3x3/2 pooling, then one linear layer. Caffe's
local response normalization is left out (it does not change the structure SSL learns)."""
import torch.nn as nn

from .registry import register_model


class ConvNetCifar(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5, padding=2), nn.MaxPool2d(3, 2, ceil_mode=True), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(inplace=True), nn.AvgPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(inplace=True), nn.AvgPool2d(3, 2, ceil_mode=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(4)  # 4x4 on 32x32 inputs, as in Caffe; any size ≥ 32 works
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, num_classes))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


@register_model
def convnet_cifar(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return ConvNetCifar(num_classes, in_channels)
