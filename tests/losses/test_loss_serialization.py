"""Loss classes survive a .keras round trip with their settings."""
import numpy as np
import keras

import losses


def _round_trip(model, tmp_path):
    path = tmp_path / "model.keras"
    model.save(path)
    return keras.saving.load_model(path, safe_mode=True)


def test_pixelwise_loss_round_trips_through_keras_file(tmp_path):
    inputs = keras.Input((4, 4, 3))
    main = keras.layers.Conv2D(7, 1, name="main")(inputs)
    aux = keras.layers.Conv2D(7, 1, name="aux")(inputs)
    model = keras.Model(inputs, {"main": main, "aux": aux})
    model.compile(optimizer="sgd",
                  loss={"main": losses.PixelwiseSoftmaxCrossEntropy(7, ignore_label=250),
                        "aux": losses.PixelwiseSoftmaxCrossEntropy(7, upsample_logits=True)},
                  loss_weights={"main": 1.0, "aux": 0.4})
    loaded = _round_trip(model, tmp_path)
    restored = loaded.loss
    assert isinstance(restored["main"], losses.PixelwiseSoftmaxCrossEntropy)
    assert restored["main"].get_config() == model.loss["main"].get_config()
    assert restored["aux"].upsample_logits and restored["main"].ignore_label == 250

    x = np.random.default_rng(0).normal(size=(2, 4, 4, 3)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 7, size=(2, 4, 4))
    y[0, 0] = 250
    np.testing.assert_allclose(loaded.evaluate(x, {"main": y, "aux": y}, verbose=0),
                               model.evaluate(x, {"main": y, "aux": y}, verbose=0), rtol=1e-6)


def test_loss_objects_serialize_and_deserialize():
    for loss in (losses.PixelwiseSoftmaxCrossEntropy(19, ignore_label=255, upsample_logits=True),
                 losses.MaskRCNNMaskLoss(from_logits=True)):
        config = keras.saving.serialize_keras_object(loss)
        back = keras.saving.deserialize_keras_object(config)
        assert type(back) is type(loss) and back.get_config() == loss.get_config()
