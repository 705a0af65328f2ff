"""PyTorch ConvNeXt files (timm, official, MAM-CLIP's Lightning checkpoint) into the registry's Keras ConvNeXt.

The reference is timm itself: a randomly initialised timm ConvNeXt-T, saved the way each source saves it, must give
the Keras backbone the same feature map as timm's forward pass.
"""

import re

import numpy as np
import pytest

from keras_medimg.errors import InvalidInputError
from keras_medimg.models.backbones import build_backbone

timm = pytest.importorskip("timm")
torch = pytest.importorskip("torch")

SIZE = 64


class LightningHyperParameters:
    """Stands for the OmegaConf config a Lightning checkpoint pickles: a class torch's weights_only refuses."""

    def __init__(self):
        self.vision_model = {"name": "convnext_tiny"}


class RunsCodeWhenUnpickled:
    """What a hostile checkpoint holds: unpickling it would call `Path.touch(marker)`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return Path.touch, (Path(self.marker),)


@pytest.fixture(scope="module")
def reference():
    """A timm ConvNeXt-T with weights moved off their init values (layer scales at 1e-6 would hide a bad map)."""
    torch.manual_seed(0)
    model = timm.create_model("convnext_tiny", pretrained=False).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _expected(model, images):
    """timm's feature map with the head's LayerNorm at every position, channels last (what keras.applications'
    headless ConvNeXt returns)."""
    with torch.no_grad():
        features = model.forward_features(torch.from_numpy(images.transpose(0, 3, 1, 2)))
        return model.head.norm(features).numpy().transpose(0, 2, 3, 1)


def _features(path):
    import keras

    backbone = build_backbone("convnext_tiny", input_shape=(SIZE, SIZE, 3), weights=str(path))
    images = np.random.default_rng(0).random((2, SIZE, SIZE, 3), dtype="float32")
    return keras.ops.convert_to_numpy(backbone(images)), images


def _official(state):
    """timm keys renamed to facebookresearch/ConvNeXt's (written out here, independent of the loader's table)."""
    renamed = {}
    for key, value in state.items():
        key = re.sub(r"^stem\.", "downsample_layers.0.", key)
        key = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", key)
        key = re.sub(r"^stages\.(\d+)\.blocks\.", r"stages.\1.", key)
        key = key.replace(".conv_dw.", ".dwconv.").replace(".mlp.fc1.", ".pwconv1.").replace(".mlp.fc2.", ".pwconv2.")
        key = re.sub(r"^head\.norm\.", "norm.", key).replace("head.fc.", "head.")
        renamed[key] = value
    return renamed


def test_the_study_lightning_checkpoint_gives_timms_features(tmp_path, reference):
    """pretrain_convnext_tiny.ckpt: the image encoder under VLModel.vision_encoder., hyper-parameters pickled."""
    state = {f"VLModel.vision_encoder.{k}": v for k, v in reference.state_dict().items()}
    state["VLModel.logit_scale"] = torch.tensor(2.66)
    state["VLModel.text_encoder.embeddings.word_embeddings.weight"] = torch.zeros(10, 4)
    path = tmp_path / "pretrain_convnext_tiny.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": LightningHyperParameters(), "epoch": 3}, path)
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)  # what the loader has to get past

    features, images = _features(path)
    np.testing.assert_allclose(features, _expected(reference, images), rtol=1e-4, atol=1e-4)


def test_official_naming_and_safetensors_give_the_same_features(tmp_path, reference):
    from safetensors.torch import save_file

    official = tmp_path / "convnext_tiny_1k_224.pth"
    torch.save({"model": _official(reference.state_dict())}, official)
    hub = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(hub))
    for path in (official, hub):
        features, images = _features(path)
        np.testing.assert_allclose(features, _expected(reference, images), rtol=1e-4, atol=1e-4, err_msg=path.name)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_checkpoint_never_runs_code_when_read(tmp_path, reference, zip_format):
    marker = tmp_path / "ran"
    path = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": reference.state_dict(), "hyper_parameters": RunsCodeWhenUnpickled(marker)}, path,
               _use_new_zipfile_serialization=zip_format)
    features, images = _features(path)
    assert not marker.exists()
    np.testing.assert_allclose(features, _expected(reference, images), rtol=1e-4, atol=1e-4)


def test_the_wrong_model_or_variant_is_refused_by_name(tmp_path, reference):
    small = tmp_path / "convnext_small.pth"
    torch.save(timm.create_model("convnext_small", pretrained=False).state_dict(), small)
    with pytest.raises(InvalidInputError, match=r"convnext_small\.pth.*deeper ConvNeXt.*'stages\.2\.blocks\.\d\d?\."):
        build_backbone("convnext_tiny", input_shape=(SIZE, SIZE, 3), weights=str(small))

    tiny = tmp_path / "convnext_tiny.pth"
    torch.save(reference.state_dict(), tiny)
    with pytest.raises(InvalidInputError, match=r"convnext_tiny\.pth.*no 'stages\.2\.blocks\.9\."):
        build_backbone("convnext_small", input_shape=(SIZE, SIZE, 3), weights=str(tiny))

    resnet = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), resnet)
    with pytest.raises(InvalidInputError, match=r"resnet18\.pth.*holds no ConvNeXt.*conv1\.weight"):
        build_backbone("convnext_tiny", input_shape=(SIZE, SIZE, 3), weights=str(resnet))

    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(InvalidInputError, match=r"broken\.pth.*cannot be read"):
        build_backbone("convnext_tiny", input_shape=(SIZE, SIZE, 3), weights=str(broken))


def test_finetuning_from_the_study_checkpoint_starts_from_its_image_encoder(tmp_path, reference):
    """`medimg mamclip finetune --init vlm:pretrain_convnext_tiny.ckpt` reads the file's image encoder."""
    from keras_medimg.models.vlm_tasks import init_backbone

    path = tmp_path / "pretrain_convnext_tiny.ckpt"
    state = {f"VLModel.vision_encoder.{k}": v for k, v in reference.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": LightningHyperParameters()}, path)
    backbone = init_backbone("vlm", str(path), backbone="convnext_tiny", image_size=SIZE)
    stem = reference.state_dict()["stem.0.weight"].numpy().transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(np.asarray(backbone.weights[0]), stem)
