"""PyTorch checkpoint reading and the shared ResNet mapping, against torchvision's ResNet on the same weights."""
import numpy as np
import pytest
import torch
import torchvision

from benchmarks.torch_pspnet import randomize_torch_batch_norms
from models.resnet import build_resnet
from models.convert.torch_reader import CheckpointMismatch, read_state_dict, set_resnet


@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_matches_torchvision_on_the_same_weights(tmp_path, torch_seed, depth):
    generator = torch.Generator().manual_seed(1)
    reference = getattr(torchvision.models, f"resnet{depth}")(weights=None).eval()
    randomize_torch_batch_norms(reference, generator)
    path = tmp_path / "resnet.pth"
    torch.save(reference.state_dict(), path)  # as torchvision publishes its ImageNet weights

    state, meta = read_state_dict(path)
    assert meta == {}
    ours = build_resnet(depth, stem="standard", output_stride=32, stride_on="3x3", bn_epsilon=1e-5)
    set_resnet(ours, state, "")
    state.ignore(lambda key: key.startswith("fc."))
    state.check_all_used()

    image = np.random.default_rng(0).normal(size=(1, 3, 67, 101)).astype(np.float32)
    with torch.no_grad():
        x = reference.maxpool(reference.relu(reference.bn1(reference.conv1(torch.from_numpy(image)))))
        expected = {}
        for stage in range(1, 5):
            x = getattr(reference, f"layer{stage}")(x)
            expected[f"C{stage + 1}"] = x.numpy().transpose(0, 2, 3, 1)
    got = ours(image.transpose(0, 2, 3, 1))
    for key, value in expected.items():
        scale = np.abs(value).max()
        np.testing.assert_allclose(got[key].numpy(), value, rtol=1e-4, atol=1e-4 * scale, err_msg=key)


def test_stride_on_1x1_computes_something_else(torch_seed):
    # The layout matters: with torchvision's weights, the Keras Applications layout gives other features.
    reference = torchvision.models.resnet50(weights=None).eval()
    state_dict = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    from models.convert.torch_reader import StateDict
    tensors = {k: v.float().numpy() for k, v in state_dict.items()}
    image = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype(np.float32)
    outputs = {}
    for stride_on in ("1x1", "3x3"):
        model = build_resnet(50, stem="standard", output_stride=32, stride_on=stride_on, bn_epsilon=1e-5)
        set_resnet(model, StateDict(tensors, "mem"), "")
        outputs[stride_on] = model(image)["C3"].numpy()
    assert np.abs(outputs["1x1"] - outputs["3x3"]).max() > 1e-2 * np.abs(outputs["3x3"]).max()


def test_a_checkpoint_that_does_not_fit_is_refused_with_its_keys(tmp_path, torch_seed):
    reference = torchvision.models.resnet18(weights=None)
    state = reference.state_dict()
    del state["layer2.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, path)  # DataParallel + wrapper
    loaded, _ = read_state_dict(path)
    model = build_resnet(18, stem="standard", output_stride=32)
    set_resnet(model, loaded, "")
    loaded.ignore(lambda key: key.startswith("fc."))
    with pytest.raises(CheckpointMismatch, match=r"missing keys \[layer2\.0\.conv1\.weight\].*extra\.weight"):
        loaded.check_all_used()


def test_a_shape_that_does_not_fit_names_the_key(tmp_path, torch_seed):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    state, _ = read_state_dict(tmp_path / "r18.pth")
    with pytest.raises(CheckpointMismatch, match="conv1.weight"):
        set_resnet(build_resnet(18, stem="standard", base_width=32), state, "")


def test_files_that_are_not_weights_are_refused_without_running_code(tmp_path):
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(CheckpointMismatch, match="text.pth: not a PyTorch weights checkpoint"):
        read_state_dict(tmp_path / "text.pth")

    class Payload:  # a pickled object: weights_only=True refuses to construct it
        def __reduce__(self):
            return (print, ("ran code",))

    torch.save({"state_dict": {"a": Payload()}}, tmp_path / "code.pth")
    with pytest.raises(CheckpointMismatch, match="code.pth: not a PyTorch weights checkpoint"):
        read_state_dict(tmp_path / "code.pth")
