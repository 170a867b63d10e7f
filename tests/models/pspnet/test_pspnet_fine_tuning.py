"""Fine-tuning from a saved PSPNet: every weight copied, only the classifiers new when the class count differs."""
import keras
import numpy as np
import pytest

from models.pspnet import build_from, build_pspnet, init_from


def _source(tmp_path, num_classes=5, layout="semseg", aux=True):
    model = build_pspnet(num_classes, "resnet50", aux, base_width=4, layout=layout)
    rng = np.random.default_rng(0)
    for weight in model.weights:  # every weight (BN statistics too) distinct from a fresh model's
        weight.assign(rng.uniform(0.5, 1.5, weight.shape).astype(np.float32))
    path = tmp_path / "source.keras"
    model.save(path)
    return model, path


def _weights_by_path(model):
    out = {}
    for layer in model.layers:
        inner = layer.layers if isinstance(layer, keras.Model) else [layer]
        for sub in inner:
            for weight in sub.weights:
                out[f"{layer.name}/{sub.name}/{weight.name}"] = weight.numpy()
    return out


def test_same_classes_copies_everything_and_gives_the_same_logits(tmp_path):
    source, path = _source(tmp_path)
    model, fresh = build_from(path)
    assert fresh == [] and model.get_config() == source.get_config()
    x = np.random.default_rng(1).normal(size=(1, 41, 33, 3)).astype(np.float32)
    np.testing.assert_allclose(model(x)["main"].numpy(), source(x)["main"].numpy(), rtol=1e-5, atol=1e-5)


def test_new_class_count_reinitialises_only_the_classifiers(tmp_path):
    source, path = _source(tmp_path, num_classes=5)
    model, fresh = build_from(path, num_classes=3, dropout=0.2)
    assert sorted(fresh) == ["aux_classifier", "head_classifier"]
    assert model.output["main"].shape[-1] == 3 and model.get_config()["layout"] == "semseg"
    ours, theirs = _weights_by_path(model), _weights_by_path(source)
    assert set(ours) == set(theirs)
    for key, value in ours.items():
        if "classifier" in key:
            assert value.shape != theirs[key].shape or not np.array_equal(value, theirs[key]), key
        else:
            np.testing.assert_array_equal(value, theirs[key], err_msg=key)


def test_source_without_aux_head_leaves_the_aux_head_new(tmp_path):
    _, path = _source(tmp_path, aux=False)
    model = build_pspnet(5, "resnet50", True, base_width=4, layout="semseg")
    assert sorted(init_from(model, path)) == ["aux_bn", "aux_classifier", "aux_conv"]


def test_a_model_of_another_layout_or_width_is_refused(tmp_path):
    _, path = _source(tmp_path)
    with pytest.raises(ValueError, match=r"source\.keras: its layout is 'semseg', the model's 'mmseg'"):
        init_from(build_pspnet(5, "resnet50", base_width=4, layout="mmseg"), path)
    with pytest.raises(ValueError, match=r"source\.keras: layer 'backbone/conv1_1_conv' has weights"):
        init_from(build_pspnet(5, "resnet50", base_width=8, layout="semseg"), path)
