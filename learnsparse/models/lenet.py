"""LeNet-5 as SSL uses it: conv 20@5x5, pool, conv 50@5x5, pool, fc 500, fc classes."""
import torch.nn as nn

from .registry import register_model


class LeNet5(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 20, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        # LazyLinear would make the parameter count depend on the first input; instead
        # pool to the 4x4 map LeNet has on 28x28 so any input size of at least 28 works.
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(50 * 4 * 4, 500), nn.ReLU(inplace=True), nn.Linear(500, num_classes)
        )

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


@register_model
def lenet5(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return LeNet5(num_classes, in_channels)
