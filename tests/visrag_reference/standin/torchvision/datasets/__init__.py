"""torchvision.datasets stand-in: the dataset classes timm.data imports unconditionally."""

from .._unavailable import unavailable

CIFAR10 = unavailable("torchvision.datasets.CIFAR10")
CIFAR100 = unavailable("torchvision.datasets.CIFAR100")
MNIST = unavailable("torchvision.datasets.MNIST")
KMNIST = unavailable("torchvision.datasets.KMNIST")
FashionMNIST = unavailable("torchvision.datasets.FashionMNIST")
ImageFolder = unavailable("torchvision.datasets.ImageFolder")
