"""Optimizer: Momentum + global L2 with the reference's exemptions (spec §7.3), portable optimizer state."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from shitu_features.models import build_rec_model
from shitu_features.training import OptimizerConfig, build_optimizer, parameter_groups
from shitu_features.training.optim import optimizer_state_from_named, optimizer_state_to_named


@pytest.fixture(scope="module")
def small_model():  # type: ignore[no-untyped-def]
    paddle.seed(0)
    return build_rec_model(5, embedding_size=8)


def test_parameter_groups_follow_the_reference(small_model) -> None:  # type: ignore[no-untyped-def]
    groups = parameter_groups(small_model)
    not_decayed = set(groups.not_decayed)
    # every backbone BN gamma/beta, and nothing else, is exempt from the global L2 (spec §7.3)
    bn_affine = {n for n in dict(small_model.named_parameters())
                 if n.startswith("backbone.") and ".bn." in n and n.endswith((".weight", ".bias"))}
    assert not_decayed == bn_affine and len(bn_affine) > 50
    assert {"backbone.stem.0.conv.weight", "backbone.last_conv.weight", "backbone.last_conv.bias",
            "neck.feat_bn.weight", "neck.feat_bn.bias", "head.fc.weight",
            "backbone.stages.2.0.se.conv1.bias"} <= set(groups.decayed)
    assert groups.lr_scaled == {"neck.feat_bn.bias": 1e-20}
    assert all(n.endswith(("_mean", "_variance")) for n in groups.frozen)


def test_paddle_applies_the_per_parameter_regularizer_over_the_global_one() -> None:
    """One Momentum step on a zero loss: only the L2 term moves the parameters."""
    paddle.seed(0)
    model = build_rec_model(5, embedding_size=8)
    params = dict(model.named_parameters())
    for name in ("backbone.stem.0.bn.weight", "backbone.stem.0.bn.bias", "neck.feat_bn.bias"):
        params[name].set_value(paddle.full_like(params[name], 2.0))
    before = {n: p.numpy().copy() for n, p in params.items()}
    lr, coeff = 0.5, 0.1
    opt = build_optimizer(model, OptimizerConfig(lr=lr, weight_decay=coeff))
    loss = paddle.add_n([(p * 0.0).sum() for p in model.parameters() if not p.stop_gradient])
    loss.backward()
    opt.step()
    after = {n: p.numpy() for n, p in params.items()}
    # decayed: p <- p - lr * (0 + coeff * p)
    for name in ("backbone.stem.0.conv.weight", "backbone.last_conv.bias", "neck.feat_bn.weight", "head.fc.weight"):
        np.testing.assert_allclose(after[name], before[name] * (1 - lr * coeff), rtol=1e-6, err_msg=name)
    # backbone BN gamma/beta carry L2Decay(0): unchanged although the global coefficient is 0.1
    for name in ("backbone.stem.0.bn.weight", "backbone.stem.0.bn.bias"):
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    # the neck bias is decayed but its lr multiplier is 1e-20: frozen in practice
    np.testing.assert_allclose(after["neck.feat_bn.bias"], before["neck.feat_bn.bias"], rtol=1e-15)


def test_optimizer_state_moves_between_models_built_in_one_process() -> None:
    """Paddle keys accumulators by internal tensor names, which differ between two builds of one model."""
    def build():  # type: ignore[no-untyped-def]
        paddle.seed(1)
        model = build_rec_model(5, embedding_size=8)
        return model, build_optimizer(model, OptimizerConfig(lr=0.1))

    model, opt = build()
    x = paddle.randn([4, 3, 32, 32])
    model(x)["logits"].sum().backward()
    opt.step()
    state = optimizer_state_to_named(opt, model)
    assert "backbone.stem.0.conv.weight@velocity_0" in state
    # one velocity per parameter that got a gradient (the unused fused dw_conv gets none, spec §4)
    assert len(state) == len([p for p in model.parameters() if not p.stop_gradient and p.grad is not None])

    model2, opt2 = build()
    assert model2.backbone.stem[0].conv.weight.name != model.backbone.stem[0].conv.weight.name
    model2.set_state_dict(model.state_dict())
    optimizer_state_from_named(opt2, model2, state)
    # the next step from the restored state equals the next step of the original
    for m, o in ((model, opt), (model2, opt2)):
        o.clear_grad()
        paddle.seed(7)  # same dropout mask in both
        m(x)["logits"].sum().backward()
        o.step()
    np.testing.assert_array_equal(model2.head.fc.weight.numpy(), model.head.fc.weight.numpy())
    np.testing.assert_array_equal(model2.backbone.stem[0].conv.weight.numpy(),
                                  model.backbone.stem[0].conv.weight.numpy())
