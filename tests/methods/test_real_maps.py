"""Every method on the default pretrained model and real photos: no map may be constant.

A map that is constant on a real image (flagged ``constant``, reported as zeros) is a bug
until shown otherwise: Eigen-CAM once oriented its projection negative on signed layers,
and the ReLU emptied every map. The layers: the head (the default, after a swish:
non-negative-ish) and ``_blocks.15`` (a linear projection: signed activations).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sacam
from sacam.images import sample_image

LAYERS = [None, "_blocks.15"]
PHOTOS = ("chelsea", "coffee")
# fewer forward passes for the perturbation methods, the same computation otherwise;
# a fixed batch size skips the timing of batch sizes (tests/test_speed_options.py)
FAST = {
    "smooth-grad-cam++": {"n_samples": 2},
    "score-cam": {"top_channels": 8, "inputs_per_pass": 8},
    "ss-cam": {"top_channels": 4, "n_samples": 2, "inputs_per_pass": 8},
    "is-cam": {"top_channels": 4, "n_samples": 2, "inputs_per_pass": 8},
    "ablation-cam": {"top_channels": 8, "inputs_per_pass": 8},
    "group-cam": {"groups": 8, "inputs_per_pass": 8},
    "sess": {"num_scales": 2},
    "opti-cam": {"steps": 5},
    "poly-cam": {"top_channels": 4, "inputs_per_pass": 8},
    "fd-cam": {"top_channels": 8, "inputs_per_pass": 8},
}
# CAM needs the classifier's input channels (1280): it refuses _blocks.15 (320 channels)
NOT_APPLICABLE = {("cam", "_blocks.15")}


@pytest.fixture(scope="module")
def photos(default_model) -> torch.Tensor:  # noqa: ANN001
    return default_model.preprocess.batch([sample_image(n) for n in PHOTOS])


# token-model methods (family "transformer") need a ViT: tests/test_legrad.py
CNN_METHODS = [m for m in sacam.list_methods() if sacam.method_info(m).family != "transformer"]


@pytest.mark.parametrize("layer", LAYERS, ids=["head", "blocks15"])
@pytest.mark.parametrize("method", CNN_METHODS)
def test_no_map_is_constant_on_real_photos(method: str, layer, default_model, photos) -> None:  # noqa: ANN001
    if (method, layer) in NOT_APPLICABLE:
        with pytest.raises(sacam.LayerError, match="nn.Linear"):
            sacam.explain(default_model.model, photos, method=method, layer=layer)
        return
    out = sacam.explain_full(
        default_model.model, photos, method=method, layer=layer, **FAST.get(method, {})
    )
    assert not out.constant.any(), f"{method} at {layer}: constant map(s) {out.constant}"
    flat = out.maps.flatten(1)
    assert (flat.amax(1) - flat.amin(1) == 1).all()


def _hook_activations(model: torch.nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """Output of ``layer`` ("name" or "name@call") on ``x``, read by a plain forward hook."""
    module, _, call = layer.partition("@")
    store = []
    handle = model.get_submodule(module).register_forward_hook(lambda m, i, o: store.append(o))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        handle.remove()
    return store[int(call or 0)].clone()


def _get_2d_projection(acts: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam 1.5.7's get_2d_projection, then BaseCAM's ReLU and min-max scale."""
    out = []
    for a in acts:  # (K, h, w)
        rows = a.reshape(a.shape[0], -1).transpose()
        rows = rows - rows.mean(axis=0)
        _, _, vt = np.linalg.svd(rows, full_matrices=True)
        proj = (rows @ vt[0, :]).reshape(a.shape[1:])
        proj = np.maximum(proj, 0)
        proj = proj - proj.min()
        out.append(proj / (1e-7 + proj.max()))
    return np.stack(out)


@pytest.mark.parametrize("layer", ["_blocks.15", "_swish@1"])
def test_eigencam_pytorch_grad_cam_variant(layer: str, default_model, photos) -> None:  # noqa: ANN001
    model = default_model.model
    acts = _hook_activations(model, layer, photos)  # _swish@1: the head (second call)
    expect = torch.from_numpy(_get_2d_projection(acts.numpy().astype(np.float32)))
    got = sacam.explain(
        model, photos, method="eigen-cam", layer=layer, variant="pytorch-grad-cam", upsample=False
    )
    for g, e in zip(got, expect, strict=True):
        r = torch.corrcoef(torch.stack([g.flatten(), e.flatten()]))[0, 1]
        assert r > 0.999
        # the same float32 arithmetic; pytorch-grad-cam divides by max + 1e-7
        assert torch.allclose(g, e, atol=1e-5)
