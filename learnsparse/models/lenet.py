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


class LeNet5_1998(nn.Module):
    """LeNet-5 as LeCun et al. (1998) drew it: C1 6@5x5 (on a 32x32 field: 28x28 inputs are
    padded by 2), S2 subsampling, C3 16@5x5 with the paper's partial connection table (each C3
    map reads 3, 4 or 6 of the 6 S2 maps: 60 of 96 connections, 1,516 parameters), S4, C5
    120@5x5, F6 84, output. ReLU and average pooling stand in for the paper's scaled tanh and
    trainable subsampling. `c3="full"` connects every S2 map to every C3 map instead: a plain
conv, which regularizers and learned groupings can then sparsify."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, c3: str = "table"):
        super().__init__()
        if c3 not in ("table", "full"):
            raise ValueError(f"c3 must be 'table' or 'full', got {c3!r}")
        from learnsparse.layers import connectivity
        from learnsparse.layers.connectivity_conv import ConnectivityConv

        c3_conv = ConnectivityConv(6, 16, 5, connectivity.lenet5_c3()) if c3 == "table" else nn.Conv2d(6, 16, 5)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(inplace=True), nn.AvgPool2d(2),
            c3_conv, nn.ReLU(inplace=True), nn.AvgPool2d(2),
            nn.Conv2d(16, 120, 5), nn.ReLU(inplace=True),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(120, 84), nn.ReLU(inplace=True),
                                        nn.Linear(84, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model
def lenet5_1998(num_classes: int = 10, in_channels: int = 1, c3: str = "table") -> nn.Module:
    return LeNet5_1998(num_classes, in_channels, c3)
