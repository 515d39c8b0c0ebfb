import pytest
import torch

from pam.detect.checkpoint import ModelError, load_checkpoint, model_id_of, save_checkpoint
from pam.detect.model import Architecture, ModelCard, PamNet, SpectrogramSettings


def card(**kw) -> ModelCard:
    base = dict(name="t", classes=["x", "y"], window_s=2.0, arch=Architecture(width=4, stages=2),
                spectrogram=SpectrogramSettings(sample_rate=8000, n_fft=256, hop_length=128, n_mels=32, f_max=4000),
                thresholds={"x": 0.3}, metrics={"macro_ap": 0.5}, training={"epochs": 1})
    base.update(kw)
    return ModelCard(**base)


def test_round_trip_keeps_everything(tmp_path):
    c = card()
    net = c.build()
    torch.manual_seed(0)
    for p in net.parameters():
        p.data.normal_()
    mid = save_checkpoint(tmp_path / "m.pt", net, c)
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert loaded.model_id == mid == model_id_of(tmp_path / "m.pt")
    assert loaded.card.classes == ["x", "y"] and loaded.card.window_s == 2.0
    assert loaded.card.sample_rate == 8000 and loaded.card.spectrogram == c.spectrogram
    assert loaded.card.thresholds == {"x": 0.3} and loaded.card.metrics == {"macro_ap": 0.5}
    assert loaded.card.threshold_vector().tolist() == pytest.approx([0.3, 0.5])
    x = torch.randn(3, 16000)
    net.eval()
    with torch.no_grad():
        assert torch.allclose(net(x), loaded.net(x), atol=1e-5)


def test_model_id_changes_with_thresholds(tmp_path):
    c = card()
    net = c.build()
    a = save_checkpoint(tmp_path / "a.pt", net, c)
    b = save_checkpoint(tmp_path / "b.pt", net, card(thresholds={"x": 0.31}))
    assert a != b


def test_saving_to_a_folder_is_a_clear_error_that_leaves_nothing(tmp_path):
    c = card()
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match=r"is a folder; give the checkpoint's file name, e\.g\. .*t\.pt"):
        save_checkpoint(tmp_path / "out", c.build(), c)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out"]


def test_front_end_runs_on_the_model_device():
    net = PamNet(2)
    assert any(name.startswith("frontend.mel") for name, _ in net.named_buffers())
    out = net.eval()(torch.randn(2, 48000))
    assert out.shape == (2, 2)


def _payload(tmp_path):
    c = card()
    save_checkpoint(tmp_path / "m.pt", c.build(), c)
    return torch.load(tmp_path / "m.pt", weights_only=True)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: p.pop("format"), "not a pam checkpoint"),
        (lambda p: p.update(version=99), "newer than this pam reads"),
        (lambda p: p.update(classes=["x", "y", "z"]), "3 classes are named"),
        (lambda p: p.update(classes=["x", "x"]), "distinct"),
        (lambda p: p.update(thresholds={"q": 0.5}), "classes the model does not have"),
        (lambda p: p.update(thresholds={"x": 1.5}), "between 0 and 1"),
        (lambda p: p.update(sample_rate=16000), "disagrees"),
        (lambda p: p.update(arch={**p["arch"], "width": 8}), "do not fit the declared architecture"),
        (lambda p: p.update(spectrogram={**p["spectrogram"], "bogus": 1}), "unknown spectrogram"),
        (lambda p: p.pop("window_s"), "no 'window_s'"),
    ],
)
def test_validation_names_the_problem(tmp_path, mutate, message):
    payload = _payload(tmp_path)
    mutate(payload)
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(ModelError, match=message) as e:
        load_checkpoint(tmp_path / "bad.pt")
    assert str(tmp_path / "bad.pt") in str(e.value) and "\n" not in str(e.value)


def test_garbage_and_missing_files(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelError, match=r"not a pam checkpoint \(torch.load failed: .*\); give a \.pt written by pam "
                                         r"train, an \.onnx file with its card, or a model's short name"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")  # PyTorch, but not pam's
    with pytest.raises(ModelError, match=r"not a pam checkpoint \(a PyTorch file without pam's format tag\); give"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(ModelError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")
