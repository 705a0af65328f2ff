"""PyTorch ConvNeXt files (timm, official, MAM-CLIP's Lightning checkpoint) into the registry's Keras ConvNeXt.

The reference is timm itself: a randomly initialised timm ConvNeXt-T, saved the way each source saves it, must give
the Keras backbone the same feature map as timm's forward pass.
"""

import re

import numpy as np
import pytest

from keras_medimg.errors import InvalidInputError
from keras_medimg.models.backbones import build_backbone
from keras_medimg.models.torch_weights import read_state_dict

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
    with pytest.raises(InvalidInputError, match=r"hostile\.ckpt"):  # refused: it calls what it unpickles
        read_state_dict(path)
    assert not marker.exists()


def test_an_omegaconf_config_in_the_checkpoint_is_read_as_a_placeholder(tmp_path, reference):
    """The study's checkpoint pickles its Hydra config (OmegaConf DictConfig, nested, with lists and enums)."""
    omegaconf = pytest.importorskip("omegaconf")
    config = omegaconf.OmegaConf.create({"vision_model": {"name": "convnext_tiny"}, "embed_dim": 768,
                                         "optimizer": {"_target_": "torch.optim.AdamW", "lr": 1e-4},
                                         "text_model": {"mlm": True, "layers": [1, 2]}})
    path = tmp_path / "pretrain_convnext_tiny.ckpt"
    state = {f"VLModel.vision_encoder.{k}": v for k, v in reference.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": config, "epoch": 24}, path)
    features, images = _features(path)
    np.testing.assert_allclose(features, _expected(reference, images), rtol=1e-4, atol=1e-4)


def _code_running_pickle(marker):
    """A pickle whose global is a dotted name under an allowed torch module: `_rebuild_tensor.__builtins__.get`
    resolves to the builtins' dict.get, which hands out exec. A hand-made allow-list of module + name prefixes let
    this through and ran it."""
    def text(value):
        data = value.encode()
        return b"\x8c" + bytes([len(data)]) + data

    return (b"\x80\x04" + text("torch._utils") + text("_rebuild_tensor.__builtins__.get") + b"\x93" + text("exec")
            + b"\x85R" + text(f"open({str(marker)!r}, 'w').write('ran')") + b"\x85R.")


def test_a_crafted_pickle_runs_no_code_raw_or_zipped(tmp_path):
    import io
    import zipfile

    marker = tmp_path / "ran"
    raw = tmp_path / "raw.ckpt"
    raw.write_bytes(_code_running_pickle(marker))
    zipped = tmp_path / "zipped.ckpt"
    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(1)}, buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    with zipfile.ZipFile(zipped, "w") as out:  # torch's own zip layout, data.pkl replaced
        for info in source.infolist():
            out.writestr(info, _code_running_pickle(marker) if info.filename.endswith("/data.pkl")
                         else source.read(info))
    for path in (raw, zipped):
        with pytest.raises(InvalidInputError, match=path.name):
            read_state_dict(path)
        assert not marker.exists(), path.name


def test_a_whole_pickled_model_or_a_v2_or_headless_convnext_says_what_to_do(tmp_path, reference):
    whole = tmp_path / "whole_model.pth"
    torch.save(reference, whole)
    with pytest.raises(InvalidInputError, match=r"whole_model\.pth.*whole pickled model.*state_dict\(\)"):
        read_state_dict(whole)

    v2 = tmp_path / "convnextv2_tiny.pth"
    torch.save(timm.create_model("convnextv2_atto", pretrained=False).state_dict(), v2)
    with pytest.raises(InvalidInputError, match=r"convnextv2_tiny\.pth.*ConvNeXt V2.*convnextv2_\* backbone"):
        build_backbone("convnext_tiny", input_shape=(SIZE, SIZE, 3), weights=str(v2))

    headless = tmp_path / "features_only.pth"
    torch.save({k: v for k, v in reference.state_dict().items() if not k.startswith("head.")}, headless)
    with pytest.raises(InvalidInputError, match=r"features_only\.pth.*no 'head\.norm\.weight'.*LayerNorm"):
        build_backbone("convnext_tiny", input_shape=(SIZE, SIZE, 3), weights=str(headless))


def test_a_torch_init_is_checked_before_the_run_starts(tmp_path):
    from keras_medimg.errors import ConfigError
    from keras_medimg.models.vlm_tasks import check_vlm_init

    with pytest.raises(InvalidInputError, match=r"missing\.ckpt.*does not exist"):
        check_vlm_init(tmp_path / "missing.ckpt", "convnext_tiny")
    present = tmp_path / "pretrain_convnext_tiny.CKPT"
    present.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"model\.backbone=convnext_tiny"):
        check_vlm_init(present, "convnextv2_atto")
    check_vlm_init(present, "convnext_tiny")


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
