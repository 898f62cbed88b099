"""A user's own network for the budget tests: not registered anywhere, built from `_target_`.
A plain stem, a residual pair whose add couples its channels, a concatenation of two branches,
and flatten → linear (each kept channel feeds 4 inputs of the classifier)."""
import torch
import torch.nn as nn


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class UserNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 24):
        super().__init__()
        self.stem = conv_bn(in_channels, width)
        self.a = conv_bn(width, width)
        self.b = nn.Sequential(nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width))
        self.left = conv_bn(width, width, 2)
        self.right = conv_bn(width, width // 2, 2)
        self.mix = conv_bn(width + width // 2, 2 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(2 * width * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.b(self.a(x)))
        x = self.mix(torch.cat([self.left(x), self.right(x)], 1))
        return self.fc(torch.flatten(self.pool(x), 1))
