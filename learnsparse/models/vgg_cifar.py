"""VGG with BatchNorm for CIFAR (as in network slimming): conv stack, global pool, one linear."""
import torch.nn as nn

from .registry import register_model

_CFG = {
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512],
}


class CifarVGG(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers, c = [], in_channels
        for v in _CFG[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register_model
def vgg16_bn(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return CifarVGG(16, num_classes, in_channels)


@register_model
def vgg19_bn(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return CifarVGG(19, num_classes, in_channels)
