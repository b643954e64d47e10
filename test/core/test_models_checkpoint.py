"""Checkpoints (save/load, refusal of a mismatched config), fingerprints, describe(), bench model."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from cmirl_ros.models import (
    build_model,
    describe,
    load_checkpoint,
    load_model,
    model_fingerprint,
    read_checkpoint,
    resolve_device,
    save_checkpoint,
)

SMALL = "cmirl_single_scale"  # the quickest config; the mechanics are the same for all


def _batch(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 128, generator=generator)
    depths = torch.rand(n, 1, 32, 128, generator=generator) * 40.0
    depths[torch.rand(n, 1, 32, 128, generator=generator) > 0.2] = 0.0
    return images, depths


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(SMALL, load_pretrained=False).eval()


def test_checkpoint_round_trip_keeps_weights_config_and_preprocessing(model, tmp_path):
    images, depths = _batch(2)
    saved = save_checkpoint(model, tmp_path / "ckpt", extra_metadata={"epoch": 3})
    assert saved == tmp_path / "ckpt" / "model.safetensors"
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.yaml", "model.safetensors"]
    _, metadata = read_checkpoint(tmp_path / "ckpt")
    assert metadata["config"] == model.config and metadata["extra"] == {"epoch": 3}
    assert metadata["preprocessing"] == model.preprocessing.to_dict()
    assert metadata["fingerprint"] == model_fingerprint(model)

    loaded = load_model(tmp_path / "ckpt", device="cpu")
    assert not loaded.training and loaded.name == SMALL
    assert model_fingerprint(loaded) == model_fingerprint(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(image=images, depth=depths), model(image=images, depth=depths))
    # A bare .safetensors file is a checkpoint too.
    single = save_checkpoint(model, tmp_path / "one.safetensors")
    assert model_fingerprint(load_model(single, device="cpu")) == model_fingerprint(model)


def test_checkpoint_of_another_config_is_refused(model, tmp_path):
    save_checkpoint(model, tmp_path / "single")
    other = build_model("cmirl_lite", load_pretrained=False)
    with pytest.raises(ValueError, match=r"single/model.safetensors: checkpoint of config 'cmirl_single_scale' "
                                         r"does not fit model 'cmirl_lite'.*aggregation\.name: 'netvlad' vs 'multiscale_netvlad'"):
        load_checkpoint(other, tmp_path / "single")


def test_files_that_are_not_checkpoints_are_refused(tmp_path):
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(ValueError, match="plain.safetensors: not a cmirl_ros checkpoint"):
        load_model(plain)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.safetensors: not a readable safetensors checkpoint"):
        read_checkpoint(garbage)
    with pytest.raises(FileNotFoundError, match="neither a checkpoint, a shipped model nor a model config"):
        load_model("no_such_model")


def test_fingerprint_follows_weights(model):
    before = model_fingerprint(model)
    assert before.startswith(f"{SMALL}-") and before == model_fingerprint(model)
    with torch.no_grad():
        model.projection.bias[0] += 1.0
        changed = model_fingerprint(model)
        model.projection.bias[0] -= 1.0
    assert changed != before


def test_shipped_model_name_resolves_to_models_dir(model, tmp_path, monkeypatch):
    import cmirl_ros.paths

    save_checkpoint(model, tmp_path / "models" / "my_model")
    monkeypatch.setattr(cmirl_ros.paths, "models_dir", lambda: tmp_path / "models")
    assert model_fingerprint(load_model("my_model", device="cpu")) == model_fingerprint(model)


def test_config_name_gives_an_untrained_eval_model():
    loaded = load_model(SMALL, device="cpu")
    assert not loaded.training and loaded.name == SMALL
    # ImageNet-initialised: the RGB stem holds the Lite0 package weights.
    from cmirl_ros.models.backbones import create_timm_model

    reference = create_timm_model("efficientnet_lite0", "imagenet")
    assert torch.equal(loaded.encoder.rgb.trunk.conv_stem.weight, reference.conv_stem.weight)


def test_describe_matches_forward_in_batches(model):
    images, depths = _batch(5, seed=1)
    with torch.no_grad():
        expected = model(image=images, depth=depths).numpy()
    got = describe(model, images=list(images.numpy()), depths=depths.numpy(), batch_size=2)
    assert got.dtype == np.float32 and got.shape == (5, model.descriptor_dim)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    only_depth = describe(model, depths=depths, batch_size=4)
    np.testing.assert_allclose(np.linalg.norm(only_depth, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="5 images but 4 depth maps"):
        describe(model, images=images, depths=depths[:4])


def test_describer_tokens_per_batch_and_frames_need_their_inputs(model):
    from types import SimpleNamespace

    from cmirl_ros.models import Describer
    from cmirl_ros.mapdb.tokens import capture_local_features, pool_tokens

    describer = Describer(model)
    _, depths = _batch(3, seed=2)
    with torch.no_grad(), capture_local_features(model) as features:
        model(depth=depths)
    described = describer.describe(depths=depths, batch_size=2, tokens_grid=(2, 4))  # two batches: 2 + 1
    assert described.tokens.shape == (3, 8, described.tokens.shape[2]) and described.tokens.dtype == np.float16
    np.testing.assert_allclose(described.tokens.astype(np.float32),
                               pool_tokens(features[0], (2, 4)).astype(np.float32), atol=2e-3)
    assert describer.describe(depths=depths).tokens is None
    frame = SimpleNamespace(name="000007", image=np.zeros((32, 128, 3), np.uint8), points=None, calib=None)
    with pytest.raises(ValueError, match="seq frame 000007: a map needs a scan"):
        describer.frames([frame], use_image=False, use_scan=True, purpose="a map", dataset="seq")
    with pytest.raises(ValueError, match="needs the calibration"):
        describer.inputs(points=np.zeros((4, 4), np.float32))


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_bench_model_writes_the_figures(tmp_path, capsys):
    from cmirl_ros.benchmarks import model as benchmark

    parser = argparse.ArgumentParser()
    benchmark.add_arguments(parser)
    out = tmp_path / "bench.json"
    args = parser.parse_args(["--config", SMALL, "--height", "32", "--width", "128", "--warmup", "1",
                              "--repeats", "2", "--json", str(out)])
    assert benchmark.run(args) == 0
    result = json.loads(out.read_text())
    assert {"config", "params_m", "latency_ms_p50", "device"} <= set(result)
    assert result["config"] == SMALL and result["input"] == [32, 128]
    params = sum(p.numel() for p in build_model(SMALL, load_pretrained=False).parameters()) / 1e6
    assert result["params_m"] == pytest.approx(params, abs=1e-3)
    assert result["latency_ms_p50"] > 0
    assert "p50" in capsys.readouterr().out
