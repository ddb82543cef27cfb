"""Model shapes, the paper's sizes, TorchScript, the registry and ImageNet weight loading."""

import warnings

import pytest
import torch

from unetseg.models import MobileNetV2UNet, UNet, build_model


def script(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(model)


def test_unet_is_the_papers_network():
    model = UNet(in_channels=1, out_channels=2, base_width=64, depth=4, padding="valid")
    assert model.downs[-1][2].out_channels == 1024  # bottleneck
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(31.03e6, rel=1e-3)
    assert model.output_size(572) == 388
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 572, 572)).shape == (1, 2, 388, 388)


@pytest.mark.parametrize("size", [(37, 50), (64, 64), (1, 17)])
def test_unet_same_keeps_any_size(size):
    model = UNet(in_channels=3, base_width=4, depth=3, batch_norm=True, dropout=0.1).eval()
    x = torch.randn(2, 3, *size)
    out = model(x)
    assert out.shape == (2, 1, *size)
    torch.testing.assert_close(script(model)(x), out)


def test_mobilenet_unet_shapes_and_scripting():
    model = MobileNetV2UNet(in_channels=1, out_channels=2, decoder_width=8).eval()
    x = torch.randn(1, 1, 70, 45)
    out = model(x)
    assert out.shape == (1, 2, 70, 45)
    torch.testing.assert_close(script(model)(x), out)


def torchvision_state_dict(in_channels=3):
    """A state dict in the layout of torchvision's mobilenet_v2 (features.* + classifier.1.*)."""
    encoder = MobileNetV2UNet(in_channels=in_channels).features
    state = {f"features.{k}": torch.randn_like(v.float()).to(v.dtype) for k, v in encoder.state_dict().items()}
    state["classifier.1.weight"] = torch.randn(1000, 1280)
    state["classifier.1.bias"] = torch.randn(1000)
    return state


def test_imagenet_weights_load(tmp_path):
    state = torchvision_state_dict()
    torch.save(state, tmp_path / "mobilenet_v2.pth")
    model = MobileNetV2UNet(in_channels=3, freeze_encoder=True)
    model.load_imagenet_weights(tmp_path / "mobilenet_v2.pth")
    torch.testing.assert_close(model.features[5].conv[1][0].weight, state["features.5.conv.1.0.weight"])
    assert not any(p.requires_grad for p in model.features.parameters())
    model.train()
    assert not model.features[0][1].training  # frozen batch-norm statistics
    gray = MobileNetV2UNet(in_channels=1)
    gray.load_imagenet_weights(tmp_path / "mobilenet_v2.pth")
    torch.testing.assert_close(gray.features[0][0].weight, state["features.0.0.weight"].sum(1, keepdim=True))


def test_imagenet_weights_errors(tmp_path):
    model = MobileNetV2UNet()
    with pytest.raises(FileNotFoundError, match="download torchvision's mobilenet_v2"):
        model.load_imagenet_weights(tmp_path / "nope.pth")
    state = torchvision_state_dict()
    del state["features.3.conv.0.1.running_mean"]
    state["features.99.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"missing \['3.conv.0.1.running_mean'\].*unexpected \['99.weight'\]"):
        model.load_imagenet_weights(tmp_path / "bad.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a PyTorch state-dict file"):
        model.load_imagenet_weights(tmp_path / "junk.pth")


def test_registry():
    assert isinstance(build_model("unet", base_width=4, depth=2), UNet)
    with pytest.raises(ValueError, match="unknown architecture 'resnet'"):
        build_model("resnet")
    with pytest.raises(ValueError, match="bad options for unet"):
        build_model("unet", width=3)
    with pytest.raises(ValueError, match="padding must be 'same' or 'valid'"):
        UNet(padding="full")
