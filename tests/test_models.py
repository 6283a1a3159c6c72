"""The default pretrained model, its preprocessing, and loading users' models."""

from __future__ import annotations

import pytest
import torch

import sacam
from sacam.errors import InputError, ModelError
from sacam.models import (
    TF_LITE_MEAN,
    TF_LITE_STD,
    Preprocess,
    imagenet_class_names,
    load_image,
    load_model,
    sample_image,
)

from .conftest import small_cnn


def test_default_preprocessing_is_pinned(default_model) -> None:
    pre = default_model.preprocess
    assert pre.size == 224 and pre.resize == "crop"
    assert pre.mean == pytest.approx((127 / 255,) * 3) and pre.std == pytest.approx(
        (128 / 255,) * 3
    )
    assert pre.mean == TF_LITE_MEAN and pre.std == TF_LITE_STD
    # pixel p in [0, 1] -> (255 p - 127) / 128, TensorFlow's EfficientNet-Lite input
    assert torch.allclose(pre.normalize(torch.ones(3, 1, 1)), torch.full((3, 1, 1), 1.0))
    assert torch.allclose(pre.normalize(torch.zeros(3, 1, 1)), torch.full((3, 1, 1), -127 / 128))


def test_default_model_top1_on_chelsea_is_egyptian_cat(default_model) -> None:
    x = default_model.preprocess(sample_image("chelsea"))[None]
    with torch.inference_mode():
        probs = torch.softmax(default_model.model(x), 1)[0]
    assert int(probs.argmax()) == 285
    assert default_model.class_name(285) == "Egyptian cat"
    top3 = set(probs.topk(3).indices.tolist())
    assert top3 == {281, 282, 285}  # tabby, tiger cat, Egyptian cat


def test_default_model_on_coffee_is_espresso(default_model) -> None:
    x = default_model.preprocess(sample_image("coffee"))[None]
    with torch.inference_mode():
        probs = torch.softmax(default_model.model(x), 1)[0]
    assert int(probs.argmax()) == 967 and float(probs[967]) > 0.9


def test_default_model_parameter_count(default_model) -> None:
    assert sum(p.numel() for p in default_model.model.parameters()) == 4_652_008


def test_auto_layer_of_default_model_is_the_head_activation(default_model) -> None:
    x = default_model.preprocess(sample_image("chelsea"))[None]
    out = sacam.explain_full(default_model.model, x, upsample=False)
    assert out.layers == ["_swish@1"]  # the shared ReLU6 runs at the stem (@0) and the head (@1)
    assert out.maps.shape == (1, 7, 7)
    assert out.class_idx.tolist() == [285]
    stem = sacam.explain_full(default_model.model, x, layer="_swish@0", upsample=False)
    assert stem.maps.shape == (1, 112, 112)
    named = sacam.explain(default_model.model, x, layer="_swish", upsample=False)
    assert torch.allclose(named, out.maps)
    block = sacam.explain(default_model.model, x, layer="_blocks.15", upsample=False)
    assert block.shape == (1, 7, 7)


def test_default_model_cam_looks_at_the_cat(default_model) -> None:
    """The map's mass lies on the cat's face (centre), not the image border."""
    x = default_model.preprocess(sample_image("chelsea"))[None]
    m = sacam.explain(default_model.model, x, method="grad-cam")[0]
    centre = m[56:168, 56:168].mean()
    border = torch.cat([m[:28].flatten(), m[-28:].flatten()]).mean()
    assert centre > 2 * border


def test_class_names() -> None:
    names = imagenet_class_names()
    assert len(names) == 1000 and names[0] == "tench" and names[285] == "Egyptian cat"


def test_preprocess_modes() -> None:
    img = sample_image("chelsea")  # 451 x 300
    crop = Preprocess(size=64).pixels(img)
    squash = Preprocess(size=64, resize="squash").pixels(img)
    assert crop.shape == squash.shape == (3, 64, 64)
    assert not torch.allclose(crop, squash)
    assert crop.min() >= 0 and crop.max() <= 1


def test_load_image_errors(tmp_path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_image(tmp_path / "missing.png")
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    with pytest.raises(InputError, match="cannot read image"):
        load_image(bad)
    with pytest.raises(InputError, match="unknown sample"):
        load_image("sample:lena")


def test_state_dict_with_known_architecture(tmp_path, default_model) -> None:
    path = tmp_path / "lite0.pth"
    torch.save(default_model.model.state_dict(), path)
    loaded = load_model("efficientnet-lite0", weights=path)
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(loaded.model(x), default_model.model(x))
    torch.save({"nope": 1}, tmp_path / "bad.pth")
    with pytest.raises(ModelError, match="do not fit"):
        load_model("efficientnet-lite0", weights=tmp_path / "bad.pth")


def test_import_path_factory_and_pt2(tmp_path) -> None:
    loaded = load_model("tests.conftest:small_cnn")
    assert loaded.class_names == [] and loaded.class_name(3) == "class 3"
    torch.save(loaded.model.state_dict(), tmp_path / "w.pth")
    again = load_model("tests.conftest:small_cnn", weights=tmp_path / "w.pth")
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(again.model(x), loaded.model(x))
    # torch.export: a .pt2 file keeps named, hookable modules
    net = small_cnn().eval()
    ep = torch.export.export(net, (x,))
    torch.export.save(ep, str(tmp_path / "net.pt2"))
    exported = load_model(str(tmp_path / "net.pt2"))
    assert torch.allclose(
        sacam.explain(exported.model, x, layer="4"), sacam.explain(net, x, layer="4"), atol=1e-5
    )


def test_model_errors(tmp_path) -> None:
    with pytest.raises(ModelError, match="unknown model"):
        load_model("resnet-9000")
    with pytest.raises(ModelError, match="cannot import"):
        load_model("no_such_package.mod:factory")
    plain = tmp_path / "plain.pth"
    torch.save(small_cnn().state_dict(), plain)
    with pytest.raises(ModelError, match="neither a TorchScript"):
        load_model(str(plain))
