from __future__ import annotations

from pathlib import Path

import numpy as np
import paddle
import pytest

from shitu_features.errors import CheckpointMismatchError
from shitu_features.models import build_rec_model, load_checkpoint, pplcnetv2_base


@pytest.fixture(scope="module")
def ckpt(reference_dir: Path) -> dict:
    return paddle.load(str(reference_dir / "model" / "rec_model.pdparams"))


def test_full_checkpoint_loads_completely(ckpt: dict) -> None:
    report = load_checkpoint(build_rec_model(class_num=100), ckpt)
    assert report.complete and len(report.loaded) == 287


def test_other_class_count_skips_head_with_reason(ckpt: dict) -> None:
    model = build_rec_model(class_num=7)
    head_before = model.head.fc.weight.numpy().copy()
    report = load_checkpoint(model, ckpt)
    assert list(report.skipped) == ["head.fc.weight"]
    assert "[512, 100] in checkpoint vs [512, 7]" in report.skipped["head.fc.weight"]
    assert "class count" in report.summary()
    np.testing.assert_array_equal(model.head.fc.weight.numpy(), head_before)
    np.testing.assert_array_equal(model.neck.feat_bn.weight.numpy(), ckpt["neck.feat_bn.weight"].numpy())


def test_checkpoint_without_head_loads_backbone_and_neck(ckpt: dict) -> None:
    no_head = {k: v for k, v in ckpt.items() if not k.startswith("head.")}
    report = load_checkpoint(build_rec_model(class_num=100), no_head)
    assert report.missing == ["head.fc.weight"] and len(report.loaded) == 286
    assert load_checkpoint(build_rec_model(), no_head).complete  # embedding-only model: exact fit


def test_backbone_shape_mismatch_fails_naming_keys(ckpt: dict) -> None:
    bad = dict(ckpt)
    bad["backbone.last_conv.weight"] = np.zeros([256, 1024, 1, 1], dtype="float32")
    with pytest.raises(CheckpointMismatchError, match=r"backbone\.last_conv\.weight: shape \[256, 1024, 1, 1\]"):
        load_checkpoint(build_rec_model(class_num=100), bad)


def test_missing_backbone_key_fails(ckpt: dict) -> None:
    bad = {k: v for k, v in ckpt.items() if k != "backbone.stem.0.conv.weight"}
    with pytest.raises(CheckpointMismatchError, match="missing key backbone.stem.0.conv.weight"):
        load_checkpoint(build_rec_model(class_num=100), bad)


def test_imagenet_backbone_checkpoint_loads_non_strict_with_report() -> None:
    """An ImageNet PPLCNetV2_base state dict (no prefix) initialises the ShiTu backbone (spec §2.6)."""
    imagenet = pplcnetv2_base().state_dict()
    model = build_rec_model(class_num=10)
    with pytest.raises(CheckpointMismatchError):
        load_checkpoint(model, imagenet)
    report = load_checkpoint(model, imagenet, strict=False)
    assert any("prefix" in n for n in report.notes)
    assert "backbone.last_conv.weight" in report.skipped  # 1280 vs 512 outputs
    assert {"backbone.fc.weight", "backbone.fc.bias"} <= set(report.unexpected)
    assert any("stages.3.0.dw_conv_list.2" in k for k in report.missing)  # the new 1x1 branch
    assert "backbone.last_conv.bias" in report.missing
    np.testing.assert_array_equal(model.backbone.stem[0].conv.weight.numpy(), imagenet["stem.0.conv.weight"].numpy())


def test_values_are_cast_to_each_parameters_dtype(ckpt: dict) -> None:
    # A float16 copy of the model (as after model.to(dtype=...)) takes the float32 checkpoint in its own dtype.
    model = build_rec_model(class_num=100)
    model.to(dtype="float16")
    report = load_checkpoint(model, ckpt)
    assert not report.skipped and not report.missing
    state = model.state_dict()
    key = next(k for k, v in state.items() if v.dtype == paddle.float16 and "weight" in k)
    got = state[key].numpy()
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, np.asarray(ckpt[key]).astype(np.float16))
