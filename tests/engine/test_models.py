"""The default pretrained model, its preprocessing, and loading users' models."""

from __future__ import annotations

import contextlib
import json
import pickle

import numpy as np
import pytest
import torch

import sacam
from sacam.errors import InputError, ModelError
from sacam.images import load_image, sample_image
from sacam.models import check_device, imagenet_class_names, load_model
from sacam.preprocess import TF_LITE_MEAN, TF_LITE_STD, Preprocess
from tests.support.files import exported_cnn, pickled_sample_inputs, pickled_weight, rewrite_archive
from tests.support.nets import small_cnn


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


def test_load_model_changes_only_the_size_and_resize_it_is_given() -> None:
    lm = load_model("efficientnet-lite0", size=160, resize="squash")
    pre = lm.preprocess
    assert (pre.size, pre.resize) == (160, "squash")
    assert (pre.mean, pre.std) == (TF_LITE_MEAN, TF_LITE_STD)  # the model's own kept
    assert lm.class_names[:1] == imagenet_class_names()[:1]
    own = Preprocess(size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    lm = load_model(small_cnn(), preprocess=own, resize="squash")
    assert lm.preprocess == Preprocess(32, "squash", (0.5,) * 3, (0.25,) * 3)
    assert load_model(small_cnn(), preprocess=own).preprocess is own
    assert load_model(small_cnn(), size=np.int64(40)).preprocess.size == 40
    for bad, what in [
        ({"size": 0}, "size"),
        ({"size": 2.5}, "size"),
        ({"size": True}, "size"),
        ({"resize": "stretch"}, "resize"),
    ]:
        with pytest.raises(ModelError, match=f"{what} must be"):
            load_model(small_cnn(), **bad)  # type: ignore[arg-type]


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
    loaded = load_model("tests.support.nets:small_cnn")
    assert loaded.class_names == [] and loaded.class_name(3) == "class 3"
    torch.save(loaded.model.state_dict(), tmp_path / "w.pth")
    again = load_model("tests.support.nets:small_cnn", weights=tmp_path / "w.pth")
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


# --- model files that would run code while loading -------------------------------------


def test_pt2_with_a_pickled_weight_is_refused_without_running_it(tmp_path) -> None:
    marker = tmp_path / "marker"
    evil = exported_cnn(tmp_path / "evil.pt2")
    rewrite_archive(evil, pickled_weight(marker))
    with pytest.raises(ModelError, match=r"pickle.*trust_model_file=True.*--trust-model-file"):
        load_model(str(evil))
    assert not marker.exists()
    # the file really is malicious: trusting it runs the payload (harmless here)
    with pytest.raises(ModelError):
        load_model(str(evil), trust_model_file=True)
    assert marker.exists()


def test_pt2_with_pickled_sample_inputs_is_refused(tmp_path) -> None:
    """torch retries sample inputs that fail weights_only=True with weights_only=False."""
    marker = tmp_path / "marker"
    evil = exported_cnn(tmp_path / "evil.pt2")
    rewrite_archive(evil, pickled_sample_inputs(marker))
    with pytest.raises(ModelError, match="sample inputs.*trust_model_file"):
        load_model(str(evil))
    assert not marker.exists()
    with contextlib.suppress(Exception):
        load_model(str(evil), trust_model_file=True)
    assert marker.exists()


def _set_first_target(target: str):
    def change(files: dict[str, bytes]) -> None:
        program = json.loads(files["models/model.json"])
        program["graph_module"]["graph"]["nodes"][0]["target"] = target
        files["models/model.json"] = json.dumps(program).encode()

    return change


def _add_expression(expr: str):
    def change(files: dict[str, bytes]) -> None:
        program = json.loads(files["models/model.json"])
        program["graph_module"]["graph"]["sym_int_values"] = {
            "n": {"as_expr": {"expr_str": expr, "hint": None}}
        }
        files["models/model.json"] = json.dumps(program).encode()

    return change


def _add_file(name: str):
    def change(files: dict[str, bytes]) -> None:
        files[name] = b"\0"

    return change


def _guards(files: dict[str, bytes]) -> None:
    program = json.loads(files["models/model.json"])
    program["guards_code"] = ["__import__('os').system('true')"]
    files["models/model.json"] = json.dumps(program).encode()


def _opaque_constant(files: dict[str, bytes]) -> None:
    name = "data/constants/model_constants_config.json"
    config = {"config": {"c": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True}}}
    files[name] = json.dumps(config).encode()
    files["data/constants/opaque_obj_0"] = pickle.dumps(1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set_first_target("torch.serialization.os.system"), "not a torch operator"),
        (_set_first_target("_operator.methodcaller"), "not a torch operator"),
        (_set_first_target("builtins.eval"), "not a torch operator"),
        (_add_expression("eval(chr(49))"), "not plain arithmetic"),
        (_add_expression("Symbol('s0').__class__"), "not plain arithmetic"),
        (_add_file("data/aotinductor/model/model.so"), "a plain exported model has not"),
        (_add_file("data/weights/model.pt"), "a plain exported model has not"),
        (_guards, "guard code"),
        (_opaque_constant, "opaque_obj_0"),
    ],
)
def test_pt2_holding_code_is_refused(tmp_path, change, message) -> None:
    path = exported_cnn(tmp_path / "net.pt2")
    rewrite_archive(path, change)
    with pytest.raises(ModelError, match=f"{message}.*trust_model_file"):
        load_model(str(path))


def test_plain_pt2_loads_with_or_without_trust(tmp_path) -> None:
    path = exported_cnn(tmp_path / "net.pt2")
    b = torch.export.Dim("b", min=1, max=8)
    h = torch.export.Dim("h", min=4, max=32)
    dynamic = tmp_path / "dynamic.pt2"  # symbolic shapes: srepr expressions such as Mul(...)
    ep = torch.export.export(
        small_cnn().eval(), (torch.rand(2, 3, 16, 16),), dynamic_shapes=({0: b, 2: 2 * h},)
    )
    torch.export.save(ep, str(dynamic))
    for spec, x in ((path, torch.rand(1, 3, 16, 16)), (dynamic, torch.rand(3, 3, 20, 16))):
        expected = small_cnn().eval()(x)
        for trust in (False, True):
            loaded = load_model(str(spec), trust_model_file=trust)
            with torch.inference_mode():
                assert torch.allclose(loaded.model(x), expected, atol=1e-5)


def test_torchscript_needs_trust(tmp_path) -> None:
    path = tmp_path / "net.ts"
    torch.jit.save(torch.jit.script(small_cnn().eval()), str(path))
    with pytest.raises(ModelError, match="TorchScript.*trust_model_file"):
        load_model(str(path))
    loaded = load_model(str(path), trust_model_file=True)
    x = torch.rand(1, 3, 16, 16)
    assert torch.allclose(loaded.model(x), small_cnn().eval()(x), atol=1e-5)


def test_check_device(monkeypatch) -> None:
    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(ModelError, match="not a torch device.*cpu, cuda, cuda:N or mps"):
        check_device("nonsense")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelError, match="CUDA is not available"):
        check_device("cuda")
    with pytest.raises(ModelError, match="CUDA is not available"):
        load_model("tests.support.nets:small_cnn", device="cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ModelError, match=r"2 CUDA device\(s\), cuda:0..cuda:1"):
        check_device("cuda:2")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ModelError, match="MPS is not available"):
        check_device("mps")
