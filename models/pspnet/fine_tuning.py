"""Start from a converted or trained PSPNet: copy its weights, with new classifiers when the class count differs.

    model, fresh = build_from("pspnet50_semseg.keras", num_classes=8)   # fresh == ["head_classifier", "aux_classifier"]

or, for a model built by hand with the source's layout and backbone:

    fresh = init_from(model, "pspnet50_semseg.keras")
"""
import keras

from models.pspnet.model import PSPNet, build_pspnet

CLASSIFIERS = ("head_classifier", "aux_classifier")


def build_from(source, **overrides):
    """A new PSPNet built as `source` was (its get_config()) with `overrides`, holding source's weights.

    Args:
      source: a `.keras` PSPNet file (loaded with safe_mode=True) or a PSPNet model.
      overrides: build_pspnet arguments to change, e.g. num_classes=8, sync_bn=True, dropout=0.2, aux=True.

    Returns:
      (model, fresh): the new PSPNet and the names of its layers left as initialised (see init_from).
    """
    source, label = _load(source)
    if not isinstance(source, PSPNet):
        raise ValueError(f"{label}: not a PSPNet that records how it was built (a .keras file from train.py or "
                         "models.convert); build the model yourself and call init_from.")
    model = build_pspnet(**{**source.get_config(), **overrides})
    return model, init_from(model, source)


def init_from(model, source):
    """Copies every weight of `source` into `model`, layer by layer (matched by name, backbone included).

    The classifiers (head_classifier, aux_classifier) keep their initial weights
    when the class counts differ, and the aux head when `source` has none;
    every other layer must fit exactly.

    Args:
      model: the PSPNet to initialise, built with the source's layout, backbone and base_width.
      source: a `.keras` PSPNet file (loaded with safe_mode=True) or a PSPNet model.

    Returns:
      The names of the layers left as initialised ([] when everything was copied).
    Raises:
      ValueError: (one line, naming the source) the layouts differ or a layer does not fit.
    """
    source, label = _load(source)
    if isinstance(model, PSPNet) and isinstance(source, PSPNet) and model.layout != source.layout:
        raise ValueError(f"{label}: its layout is {source.layout!r}, the model's {model.layout!r}: "
                         f"build the model with layout={source.layout!r}.")
    source_layers = dict(_layers_with_weights(source))
    fresh = []
    for path, layer in _layers_with_weights(model):
        shapes = [tuple(w.shape) for w in layer.weights]
        source_layer = source_layers.get(path)
        if source_layer is None and path.startswith("aux_"):
            fresh.append(path)
            continue
        if source_layer is None:
            raise ValueError(f"{label}: has no layer {path!r}: not the model's architecture.")
        source_shapes = [tuple(w.shape) for w in source_layer.weights]
        if shapes != source_shapes:
            if path in CLASSIFIERS:
                fresh.append(path)
                continue
            raise ValueError(f"{label}: layer {path!r} has weights {source_shapes}, the model's {shapes}: "
                             "build the model with the source's backbone and base_width.")
        layer.set_weights(source_layer.get_weights())
    return fresh


def _load(source):
    if isinstance(source, keras.Model):
        return source, source.name
    import models  # noqa: F401  (registers the layers a PSPNet file names)

    return keras.saving.load_model(source, compile=False, safe_mode=True), str(source)


def _layers_with_weights(model):
    """(path, layer) for every layer with weights; the backbone's layers as "backbone/<name>"."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            for inner in layer.layers:
                if inner.weights:
                    yield f"{layer.name}/{inner.name}", inner
        elif layer.weights:
            yield layer.name, layer
