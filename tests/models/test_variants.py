"""Every registered variant: published parameter count and MACs, names and aliases, the export-clean contract."""
import pytest
import torch

import edgevit
from edgevit.analysis import check_export_clean, count_macs, count_params
from edgevit.errors import EdgevitError
from edgevit.models import build_model, get_variant, list_models
from helpers import TINY

ALL_VARIANTS = list_models()


def _meta_model(name):
    with torch.device("meta"):
        return build_model(name)


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_params_and_macs_match_published_figures(name):
    variant = get_variant(name)
    model = _meta_model(name)
    params = count_params(model)["total"] / 1e6
    assert abs(params - variant.reported.params_m) / variant.reported.params_m < 0.005, \
        f"{name}: {params:.3f} M params vs published {variant.reported.params_m}"
    gmacs = count_macs(model) / 1e9
    assert abs(gmacs - variant.reported.gmacs) / variant.reported.gmacs < 0.05, \
        f"{name}: {gmacs:.3f} GMACs vs published {variant.reported.gmacs}"


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_config_is_complete(name):
    variant = get_variant(name)
    cfg = variant.cfg
    assert len(cfg.input_size) == 3 and len(cfg.mean) == len(cfg.std) == cfg.input_size[0]
    assert 0 < cfg.crop_pct <= 1 and cfg.interpolation in ("bicubic", "bilinear")
    assert cfg.source and (cfg.has_weights or cfg.source.startswith("none"))
    for alias in variant.aliases:
        assert get_variant(alias).name == name


@pytest.mark.parametrize("config", list(TINY))
@pytest.mark.parametrize("layer_norm", ["native", "matmul"])
def test_small_configurations_export_clean(config, layer_norm):
    model = TINY[config]().eval()
    report = check_export_clean(model, layer_norm=layer_norm)
    assert not report.violations, report.violations
    assert report.max_rank <= 4
    if layer_norm == "matmul":
        assert "native_layer_norm.default" not in report.ops


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_VARIANTS)
@pytest.mark.parametrize("layer_norm", ["native", "matmul"])
def test_every_variant_exports_clean(name, layer_norm):
    report = check_export_clean(edgevit.create_model(name), layer_norm=layer_norm)
    assert not report.violations, report.violations


def test_unknown_name_suggests_close_names():
    with pytest.raises(EdgevitError, match="unknown model 'nest_tiyn'.*nest_tiny"):
        edgevit.create_model("nest_tiyn")


def test_aliases_and_timm_hub_names_resolve():
    assert edgevit.get_variant("tnt_s_patch16_224").name == "tnt_s"
    assert edgevit.get_variant("timm/crossvit_9_240.in1k").name == "crossvit_9_240"
    assert set(list_models("nest*_jx")) == {"nest_tiny_jx", "nest_small_jx", "nest_base_jx"}


def test_wrong_image_size_at_call_time_is_explained():
    model = TINY["tnt"]()
    with pytest.raises(EdgevitError, match=r"takes input of shape \(B, 3, 32, 32\), got \(1, 3, 48, 48\)"):
        model(torch.randn(1, 3, 48, 48))


def test_create_model_overrides_size_and_classes():
    model = edgevit.create_model("t2t_vit_7", img_size=64, num_classes=10)
    assert model.pretrained_cfg["input_size"] == [3, 64, 64] and model.pretrained_cfg["num_classes"] == 10
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
