import urllib.error

import pytest
import torch
from torch import nn

from lightning_prune.models import INPUT_SIZES, LeNet, build_model, resnet18, resnet18_cifar


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_lenet_matches_the_seed():
    m = LeNet()
    assert n_params(m) == 61_706
    shapes = {n: tuple(p.shape) for n, p in m.named_parameters() if n.endswith("weight")}
    assert shapes == {
        "conv1.weight": (6, 1, 5, 5),
        "conv2.weight": (16, 6, 5, 5),
        "fc1.weight": (120, 400),
        "fc2.weight": (84, 120),
        "fc3.weight": (10, 84),
    }
    assert m(torch.zeros(3, 1, 32, 32)).shape == (3, 10)


def test_lenet_arguments():
    m = LeNet(in_channels=3, num_classes=7)
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    with pytest.raises(ValueError, match="`num_classes` must be >= 1; got 0"):
        LeNet(num_classes=0)
    with pytest.raises(TypeError, match="`in_channels` must be an int; got 1.5"):
        LeNet(in_channels=1.5)


def test_torchvision_resnet18_parameter_count():
    assert n_params(resnet18()) == 11_689_512
    assert build_model("resnet18", num_classes=1000, in_channels=3)(torch.zeros(2, 3, 32, 32)).shape == (2, 1000)


def test_resnet18_cifar_variant():
    m = resnet18_cifar(num_classes=10, in_channels=3)
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1)
    assert isinstance(m.maxpool, nn.Identity)
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    one_channel = build_model("resnet18_cifar", num_classes=4, in_channels=1)
    assert one_channel(torch.zeros(1, 1, 32, 32)).shape == (1, 4)
    assert INPUT_SIZES["resnet18_cifar"] == (32, 32)


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"`model` must be one of \['lenet', 'resnet18', 'resnet18_cifar'\].*'vgg'"):
        build_model("vgg")


def test_unknown_weights_name():
    with pytest.raises(ValueError, match=r"`weights` must be one of \[.*IMAGENET1K_V1.*\].*'IMAGENET9K'"):
        resnet18(weights="IMAGENET9K")
    with pytest.raises(ValueError, match="`weights` is not available for 'lenet'"):
        build_model("lenet", weights="IMAGENET1K_V1")


def test_pretrained_weights_without_network_fail_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty hub cache

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(RuntimeError, match=r"could not fetch the pretrained weights .*IMAGENET1K_V1.*no network.*checkpoints"):
        resnet18(weights="IMAGENET1K_V1")
    with pytest.raises(RuntimeError, match="could not fetch the pretrained weights"):
        resnet18_cifar(weights="DEFAULT")
