"""`edgevit train`: every family trains at 32x32, checkpoints rebuild the model, runs are deterministic and resumable.

Each run is a few batches of a class-balanced Fashion-MNIST subset, on one CPU thread (seconds each).
"""
import json

import pytest
import torch

import edgevit
from edgevit.cli import main
from edgevit.data import fashion_mnist
from edgevit.errors import EdgevitError
from edgevit.train import train

pytestmark = pytest.mark.skipif(not fashion_mnist.available(),
                                reason="Fashion-MNIST is absent (apt-get install dataset-fashion-mnist, or set "
                                       "EDGEVIT_FASHION_MNIST to a directory holding its IDX files)")
QUICK = dict(train_samples=256, eval_samples=128, batch_size=32, log=None)
RESUME = dict(QUICK, train_samples=64, eval_samples=32)  # NesT: drop path draws from the RNG


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _logits(model, in_chans):
    x = torch.randn(4, in_chans, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("name,in_chans", [("tnt_ti", 1), ("t2t_vit_7", 1), ("nest_tiny", 1),
                                           ("crossvit_tiny_240", 3)])
def test_each_family_trains_and_its_checkpoint_rebuilds_it(tmp_path, name, in_chans):
    result = train(name, epochs=1, in_chans=in_chans, out=tmp_path / name, **QUICK)
    metrics = json.loads((tmp_path / name / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result.metrics))
    assert metrics["model"] == name and metrics["seed"] == 0 and metrics["device"] == "cpu"
    assert metrics["arch"]["img_size"] == 32 and metrics["arch_overrides"]["in_chans"] == in_chans
    assert metrics["data"]["source"] == "fashion-mnist" and metrics["data"]["train_samples"] == 256
    assert metrics["data"]["test_samples"] == 128 and metrics["data"]["input_size"] == [in_chans, 32, 32]
    assert metrics["hyperparameters"]["steps_per_epoch"] == 8
    [epoch] = metrics["epochs"]
    assert epoch["epoch"] == 1 and 0 < epoch["train_loss"] < 10 and epoch["seconds"] > 0
    assert 0 <= epoch["top1"] <= epoch["top5"] <= 100
    assert metrics["best"]["epoch"] == 1 and len(result.step_losses) == 8

    # the checkpoint alone rebuilds the small-input model, its head, channels and preprocessing
    model = edgevit.create_model(name, weights=result.checkpoint)
    assert model.arch == result.model.arch and model.num_classes == 10
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == [in_chans, 32, 32] and cfg["mean"] == metrics["data"]["mean"]
    assert cfg["labels"] == "fashion-mnist" and cfg["class_names"][0] == "T-shirt/top"
    assert torch.equal(_logits(model, in_chans), _logits(result.model, in_chans))


def test_learns_beyond_chance(tmp_path):
    result = train("crossvit_tiny_240", epochs=2, out=tmp_path, train_samples=256, eval_samples=128, batch_size=16,
                   lr=5e-4, augment=False, log=None)
    losses = [epoch["train_loss"] for epoch in result.metrics["epochs"]]
    assert losses[-1] < losses[0] - 0.1, losses
    assert result.metrics["best"]["top1"] > 25, result.metrics["epochs"]  # chance: 10% (about 40% here)


def test_bf16_autocast_trains_and_is_recorded(tmp_path):
    result = train("t2t_vit_7", epochs=1, precision="bf16", out=tmp_path, **QUICK)  # T2T: the Performer stays fp32
    assert result.metrics["hyperparameters"]["precision"] == "bf16"
    assert all(torch.isfinite(torch.tensor(loss)) for loss in result.step_losses)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in result.model.parameters())
    with pytest.raises(EdgevitError, match="precision must be one of fp32, bf16"):
        train("t2t_vit_7", epochs=1, precision="fp8", out=tmp_path / "bad", **QUICK)


def test_deterministic_and_resume_continues_exactly(tmp_path):
    straight = train("nest_tiny", epochs=2, out=tmp_path / "straight", **RESUME)
    messages = []
    first = train("nest_tiny", epochs=2, stop_after=1, out=tmp_path / "resumed", **RESUME)
    assert [e["epoch"] for e in first.metrics["epochs"]] == [1]
    resumed = train("nest_tiny", out=tmp_path / "resumed", resume=True, log=messages.append)
    assert resumed.resumed_from == 1 and any("resuming" in m and "after epoch 1 of 2" in m for m in messages)
    assert [e["epoch"] for e in resumed.metrics["epochs"]] == [1, 2]
    assert resumed.metrics["resumed_after_epochs"] == [1]
    assert len(resumed.step_losses) == 2  # only epoch 2 ran
    # same seed, same weights: the resumed run equals the uninterrupted one, bit for bit
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    same = ("train_loss", "test_loss", "top1", "top5")
    assert [{k: e[k] for k in same} for e in straight.metrics["epochs"]] == \
        [{k: e[k] for k in same} for e in resumed.metrics["epochs"]]

    nothing = train("nest_tiny", out=tmp_path / "resumed", resume=True, log=messages.append)
    assert nothing.step_losses == [] and "nothing to train" in messages[-1]
    with pytest.raises(EdgevitError, match="started with img_size=32"):
        train("nest_tiny", out=tmp_path / "resumed", resume=True, img_size=64, log=None)
    with pytest.raises(EdgevitError, match="already holds a training run"):
        train("nest_tiny", out=tmp_path / "resumed", epochs=1, log=None)
    with pytest.raises(EdgevitError, match="nothing to resume"):
        train("nest_tiny", out=tmp_path / "empty", resume=True, log=None)


def test_cli_trains_resumes_and_the_checkpoint_converts_by_name(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "tnt_ti", "--data", "fashion-mnist", "--img-size", "32", "--in-chans", "1", "--epochs", "1",
            "--batch-size", "32", "--train-samples", "64", "--eval-samples", "64", "--seed", "3", "--out", str(out)]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "top-1 %" in captured.out and "best: epoch 1" in captured.out and str(out / "best.pt") in captured.out
    assert "epoch 1/1" in captured.err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seed"] == 3 and metrics["hyperparameters"]["batch_size"] == 32

    assert main(["train", "tnt_ti", "--out", str(out), "--epochs", "2", "--resume"]) == 0
    captured = capsys.readouterr()
    assert "resuming" in captured.err and "after epoch 1 of 2" in captured.err
    assert [e["epoch"] for e in json.loads((out / "metrics.json").read_text())["epochs"]] == [1, 2]

    model = edgevit.create_model("tnt_ti", weights=out / "best.pt")  # no --img-size / --in-chans needed
    assert model.pretrained_cfg["input_size"] == [1, 32, 32] and model.arch["patch_size"] == 8


@pytest.mark.parametrize("args,message", [
    (["--data", "mnist-typo"], "unknown image source 'mnist-typo'"),
    (["--epochs", "0"], "epochs must be at least 1, got 0"),
    (["--batch-size", "0"], "batch size must be at least 1"),
    (["--device", "tpu"], "use auto, cpu, cuda or cuda:N"),
])
def test_cli_bad_input(tmp_path, capsys, args, message):
    assert main(["train", "tnt_ti", "--out", str(tmp_path / "run"), *args]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cli_cuda_without_cuda(tmp_path, capsys):
    assert main(["train", "tnt_ti", "--device", "cuda", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and "--device cpu" in err


def test_unknown_model(tmp_path, capsys):
    assert main(["train", "tnt_tiny_typo", "--out", str(tmp_path / "run")]) == 1
    assert "unknown model 'tnt_tiny_typo'" in capsys.readouterr().err
