"""Standard augmentations per dataset family, as the papers train them."""
from torchvision import transforms as T

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FASHION_MEAN, FASHION_STD = (0.2860,), (0.3530,)


def small_image(size: int, pad: int, mean, std, train: bool):
    """CIFAR-style: random crop with padding and horizontal flip for training."""
    tail = [T.ToTensor(), T.Normalize(mean, std)]
    if not train:
        return T.Compose(tail)
    return T.Compose([T.RandomCrop(size, padding=pad), T.RandomHorizontalFlip(), *tail])


def imagenet(train: bool, size: int = 224, resize: int = 256):
    tail = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if train:
        return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), *tail])
    return T.Compose([T.Resize(resize), T.CenterCrop(size), *tail])
