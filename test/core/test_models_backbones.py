"""Backbones: offline ImageNet weights for EfficientNet-Lite, truncation, user weight files, no hub."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from cmirl_ros.models.backbones import BACKBONES, Backbone, create_timm_model, read_state_dict
from cmirl_ros.preprocess import IMAGENET_MEAN, IMAGENET_STD

GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
MILITARY_UNIFORM = 652  # ImageNet-1k class index; Grace Hopper wears her US Navy uniform


def _imagenet_input(path: Path, size: int = 224) -> torch.Tensor:
    image = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return ((x - mean) / std)[None]


@pytest.mark.parametrize("name", [f"{prefix}efficientnet_lite{v}" for prefix in ("tf_", "") for v in (0, 1, 2)])
def test_lite_imagenet_weights_load_strictly_and_classify_a_real_photo(name):
    model = create_timm_model(name, "imagenet").eval()  # load_state_dict(strict=True) inside
    package_file = BACKBONES.get(name).imagenet_weights()
    source = read_state_dict(package_file)
    loaded = model.state_dict()
    assert len(source) == len(loaded)
    for (src_key, tensor), (key, value) in zip(source.items(), loaded.items()):
        assert torch.equal(tensor, value), (src_key, key)
    assert GRACE_HOPPER.is_file()
    with torch.no_grad():
        top5 = model(_imagenet_input(GRACE_HOPPER)).softmax(-1).topk(5).indices[0].tolist()
    assert MILITARY_UNIFORM in top5


def test_random_and_truncated_backbones_never_download(monkeypatch):
    import timm.models._builder as builder

    def no_hub(*args, **kwargs):
        raise AssertionError("a hub download was attempted")

    monkeypatch.setattr(builder, "load_pretrained", no_hub)
    with pytest.raises(FileNotFoundError, match="pretrained: /path/to/file"):
        Backbone("efficientnet_b4", stage=3, pretrained="imagenet")
    with pytest.warns(UserWarning, match="random initialisation"):
        trunk = Backbone("resnet34", stage=3, pretrained="none")
    assert trunk.out_channels == 256 and trunk.reduction == 16


@pytest.mark.filterwarnings("ignore:backbone .* random initialisation")
def test_truncation_at_a_stage():
    trunk = Backbone("tf_efficientnet_lite0", stage=3, pretrained="imagenet").eval()
    assert (trunk.out_channels, trunk.reduction) == (112, 16)
    with torch.no_grad():
        assert trunk(torch.zeros(2, 3, 64, 256)).shape == (2, 112, 4, 16)
    full = sum(p.numel() for p in create_timm_model("tf_efficientnet_lite0", "none").parameters())
    assert sum(p.numel() for p in trunk.parameters()) < full / 3  # later stages and the head are gone
    with pytest.raises(ValueError, match=r"stage must be in 0\.\.4"):
        Backbone("tf_efficientnet_lite0", stage=5, pretrained="none")


def test_one_channel_depth_stem_sums_the_rgb_filters():
    rgb = create_timm_model("tf_efficientnet_lite0", "imagenet")
    depth = Backbone("tf_efficientnet_lite0", stage=2, pretrained="imagenet", in_chans=1)
    stem = depth.trunk.conv_stem.weight
    assert stem.shape[1] == 1
    torch.testing.assert_close(stem, rgb.conv_stem.weight.sum(1, keepdim=True))


@pytest.mark.filterwarnings("ignore:backbone .* random initialisation")
def test_pretrained_path_loads_a_users_file(tmp_path):
    from safetensors.torch import save_file

    reference = create_timm_model("tf_efficientnet_lite0", "none")
    path = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    loaded = create_timm_model("tf_efficientnet_lite0", str(path))
    for key, value in reference.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    with pytest.raises(FileNotFoundError, match="missing.pth: weights file not found"):
        create_timm_model("tf_efficientnet_lite0", str(tmp_path / "missing.pth"))
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(3)}, wrong)
    with pytest.raises(ValueError, match="wrong.pth: 1 tensors, but the model has"):
        create_timm_model("tf_efficientnet_lite0", str(wrong))


def test_pickled_code_is_never_executed(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": Payload()}, path)
    with pytest.raises(ValueError, match="evil.pth: cannot read as a weights-only torch file"):
        read_state_dict(path)
