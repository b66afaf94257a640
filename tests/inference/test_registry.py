"""The official weights registry: names, aliases, artifact order and facts (spec §11.1)."""

from __future__ import annotations

import dataclasses
from urllib.parse import urlsplit

import pytest

from shitu_features.errors import UnknownModelError
from shitu_features.inference.registry import (
    DEFAULT_MODEL,
    OFFICIAL_MODELS,
    list_official_models,
    resolve_official,
)


@pytest.mark.parametrize(
    "name", ["PP-ShiTuV2", "PP-ShiTuV2_rec", "general_PPLCNetV2_base_pretrained_v1.0", "pp-shituv2", " PP-SHITUV2_REC "]
)
def test_names_and_aliases_resolve_case_insensitively(name: str) -> None:
    assert resolve_official(name).name == "PP-ShiTuV2"


def test_listing_and_default() -> None:
    assert list_official_models() == ["PP-ShiTuV2"]
    assert DEFAULT_MODEL in OFFICIAL_MODELS


def test_default_model_facts() -> None:
    model = resolve_official(DEFAULT_MODEL)
    assert model.embedding_size == 512 and model.input_size == 224
    pre = model.preprocessing
    assert pre.size_hw == (224, 224) and pre.interpolation == "bilinear" and pre.channel_order == "RGB"
    assert pre.mean == (0.485, 0.456, 0.406) and pre.std == (0.229, 0.224, 0.225)
    assert abs(pre.scale - 0.00392157) < 1e-8 and pre.l2_normalize


def test_artifacts_are_ordered_pir_then_legacy_then_checkpoint() -> None:
    artifacts = resolve_official("PP-ShiTuV2").artifacts
    assert [a.format for a in artifacts] == ["paddle_pir_tar", "paddle_legacy_tar", "pdparams"]
    assert [a.filename for a in artifacts] == [
        "PP-ShiTuV2_rec_infer.tar",
        "general_PPLCNetV2_base_pretrained_v1.0_infer.tar",
        "general_PPLCNetV2_base_pretrained_v1.0.pdparams",
    ]
    for artifact in artifacts:
        parts = urlsplit(artifact.url)
        assert parts.scheme == "https" and parts.netloc.endswith(".bcebos.com")
        assert parts.path.endswith("/" + artifact.filename)


def test_only_the_third_party_hash_is_recorded_and_it_says_so() -> None:
    pir, legacy, pdparams = resolve_official("PP-ShiTuV2").artifacts
    assert pir.sha256 is None and pdparams.sha256 is None
    assert legacy.sha256 == "b55f63f2f93eb42b0ff232154180f5e54d99da0891a200a2439d7a0a0ef8c026"
    assert legacy.sha256_source is not None and "third party" in legacy.sha256_source


def test_entries_are_frozen() -> None:
    model = resolve_official("PP-ShiTuV2")
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.artifacts[0].url = "http://evil"  # type: ignore[misc]


@pytest.mark.parametrize(("typo", "suggestion"), [("PP-ShiTuV3", "PP-ShiTuV2"), ("PP-ShiTu_rec", "PP-ShiTuV2_rec")])
def test_unknown_name_lists_close_matches(typo: str, suggestion: str) -> None:
    with pytest.raises(UnknownModelError) as info:
        resolve_official(typo)
    message = str(info.value)
    assert f"Did you mean '{suggestion}'" in message and "Official models: PP-ShiTuV2" in message
    assert isinstance(info.value, KeyError)


def test_unrelated_name_has_no_suggestion_but_lists_options() -> None:
    with pytest.raises(UnknownModelError) as info:
        resolve_official("resnet50")
    assert "Did you mean" not in str(info.value) and "PP-ShiTuV2" in str(info.value)
