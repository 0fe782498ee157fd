"""Checkpoint files: every container and format loads; bad files give one clear error; published weights fetch."""
import argparse
import pickle

import pytest
import torch
from safetensors.torch import save_file

import edgevit
from edgevit.errors import EdgevitError
from edgevit.models import build_model, read_state_dict
from edgevit.models.tnt import TNT


def tiny_tnt(**overrides):
    kwargs = dict(img_size=32, patch_size=8, embed_dim=32, inner_dim=4, depth=1, num_heads_outer=2,
                  num_heads_inner=1, num_classes=10)
    return TNT(**{**kwargs, **overrides}).eval()


@pytest.fixture
def source():
    torch.manual_seed(0)
    return tiny_tnt()


def _same_output(a, b):
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        return torch.equal(a(x), b(x))


@pytest.mark.parametrize("filename,wrap", [
    ("plain.pth", lambda sd: sd),
    ("timm_train.pth.tar", lambda sd: {"state_dict": {k: v * 0 for k, v in sd.items()}, "state_dict_ema": sd,
                                       "args": argparse.Namespace(lr=1e-3), "epoch": 300}),
    ("wrapped.bin", lambda sd: {"model": sd}),
    ("ddp.pth", lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}}),
])
def test_containers_and_formats_load(tmp_path, source, filename, wrap):
    path = tmp_path / filename
    torch.save(wrap(source.state_dict()), path)
    target = tiny_tnt()
    report = edgevit.load_checkpoint(target, path)
    assert _same_output(source, target)
    assert len(report.sha256) == 64
    if "ema" in filename or "train" in filename:
        assert report.container == "state_dict_ema"  # the EMA weights are the released ones


def test_safetensors_load(tmp_path, source):
    path = tmp_path / "model.safetensors"
    save_file(source.state_dict(), str(path))
    target = tiny_tnt()
    edgevit.load_checkpoint(target, path)
    assert _same_output(source, target)


def test_pickle_needing_code_is_refused(tmp_path, source):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": source.state_dict(), "hook": pickle.PicklingError}, path)
    with pytest.raises(EdgevitError, match="refusing to load .*arbitrary code"):
        read_state_dict(path)


def test_corrupt_and_missing_files(tmp_path, source):
    truncated = tmp_path / "truncated.pth"
    torch.save(source.state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with pytest.raises(EdgevitError, match="could not read checkpoint .*corrupt"):
        read_state_dict(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(EdgevitError, match="could not read .* as safetensors"):
        read_state_dict(garbage)
    with pytest.raises(EdgevitError, match="checkpoint not found"):
        read_state_dict(tmp_path / "nope.pth")
    empty = tmp_path / "empty.pth"
    torch.save({"epoch": 3}, empty)
    with pytest.raises(EdgevitError, match="holds no tensors"):
        read_state_dict(empty)


def test_weights_of_another_variant_list_what_differs(tmp_path, source):
    path = tmp_path / "other.pth"
    torch.save(tiny_tnt(embed_dim=48).state_dict(), path)
    with pytest.raises(EdgevitError) as error:
        edgevit.load_checkpoint(tiny_tnt(), path)
    message = str(error.value)
    assert "keys with another shape" in message and "cls_token: (1, 1, 48) vs (1, 1, 32)" in message
    assert "closest known variant" in message


def test_missing_keys_are_never_skipped(tmp_path, source):
    state_dict = source.state_dict()
    del state_dict["blocks.0.attn_in.v.weight"]
    with pytest.raises(EdgevitError, match=r"missing keys \(1\):\s+blocks\.0\.attn_in\.v\.weight"):
        edgevit.load_checkpoint(tiny_tnt(), state_dict)


def test_new_head_and_grayscale_stem_are_adapted(source):
    target = tiny_tnt(num_classes=3, in_chans=1)
    report = edgevit.load_checkpoint(target, source.state_dict(), reset_head=True)
    text = " ".join(report.messages)
    assert "classifier re-initialised for 3 classes" in text
    assert "adapted pixel_embed.proj.weight from 3 to 1 input channels" in text
    assert target(torch.randn(1, 1, 32, 32)).shape == (1, 3)


def test_pretrained_fetches_into_cache_and_reuses_it(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    weights = hub / "timm" / "tnt_s_patch16_224.in1k" / "resolve" / "main" / "model.safetensors"
    weights.parent.mkdir(parents=True)
    torch.manual_seed(1)
    published = build_model("tnt_s")
    save_file(published.state_dict(), str(weights))
    monkeypatch.setenv("HF_ENDPOINT", hub.as_uri())
    monkeypatch.setenv("EDGEVIT_CACHE", str(tmp_path / "cache"))
    model = edgevit.create_model("tnt_s", pretrained=True)
    assert torch.equal(model.head.weight, published.head.weight)
    assert (tmp_path / "cache" / "tnt_s" / "model.safetensors").is_file()
    weights.unlink()  # a second call must not need the network
    monkeypatch.setenv("EDGEVIT_OFFLINE", "1")
    assert torch.equal(edgevit.create_model("tnt_s", pretrained=True).head.weight, published.head.weight)


def test_pretrained_offline_fails_fast_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEVIT_CACHE", str(tmp_path))
    monkeypatch.setenv("EDGEVIT_OFFLINE", "1")
    with pytest.raises(EdgevitError, match="not cached.*--weights PATH"):
        edgevit.create_model("nest_tiny_jx", pretrained=True)
    monkeypatch.delenv("EDGEVIT_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(EdgevitError, match="could not download .*--weights PATH"):
        edgevit.create_model("tnt_b", pretrained=True)
    with pytest.raises(EdgevitError, match="no published weights"):
        edgevit.create_model("tnt_ti", pretrained=True)
