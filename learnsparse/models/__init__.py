"""Model registry. Importing this package registers every built-in model."""
from . import condensenet, convnet_cifar, densenet, igc, lenet, resnet_cifar, torchvision_models, vgg_cifar  # noqa: F401,E501  (registration)
from .registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
