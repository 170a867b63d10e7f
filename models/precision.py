"""--precision float32|bfloat16 for inference: a loaded model recomputed in bfloat16, and whether the CPU can.

    model = with_precision(load_inference_model(path), "bfloat16")   # or load_detector(path)

with_precision gives a copy of the model (the same weights, float32 variables) built under Keras's
"mixed_bfloat16" policy: the layers compute in bfloat16. A .keras file records each layer's dtype policy, so
loading under a global policy changes nothing; the copy is rebuilt from the model's config instead:
- a model whose config holds its builder's arguments (models.pspnet.model.PSPNet) is rebuilt by its builder
  under the policy, which keeps the layers it builds as float32 (classifiers, resizes) float32;
- a functional model's config lists its layers with their float32 policies, which are replaced by
  mixed_bfloat16 except for two kinds of layers: those that set autocast=False, the detector's geometry
  (anchors, proposals, detections, RoIAlign: boxes never round to bfloat16, whose 8-bit mantissa would move
  a box edge by 4 px at 1000 px), and the layers that give the model's outputs (their float32 policy casts
  bfloat16 inputs back, so logits, masks and scores come back float32 for the code that reads them).
Sublayers a layer creates in its __init__ follow the policy, or the dtype its code gives them.

bfloat16 is fast on CPUs with AVX512_BF16 or AMX_BF16 (PSPNet-50 about 1.7x, BENCHMARKS.md); elsewhere
TensorFlow emulates it and it is slower than float32: bfloat16_note says so where it applies.
"""
import keras

PRECISIONS = ("float32", "bfloat16")
MIXED = "mixed_bfloat16"
# CPU flags of native bfloat16 arithmetic: x86's (/proc/cpuinfo "flags") and ARM's ("Features").
NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


def with_precision(model, precision):
    """The model computing in `precision`: itself for "float32"; for "bfloat16" a copy with the same weights.

    model: a functional keras.Model (a PSPNet from load_inference_model, a detector from load_detector).
    The copy's variables are float32 and its layers compute in bfloat16, except the geometry and output
    layers (module docstring): its outputs keep their float32 dtypes. Raises ValueError for another precision.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "float32":
        return model
    config = model.get_config()
    if "layers" in config:  # a functional graph: each layer records its policy
        _set_policies(config, model, outputs=_output_layer_names(config["output_layers"]))
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(MIXED)  # sublayers created in __init__, and a builder's layers
    try:
        copy = type(model).from_config(config)
    finally:
        keras.config.set_dtype_policy(previous)
    _copy_weights(model, copy)
    return copy


def _set_policies(config, model, outputs):
    """Rewrites in place the policy of every layer listed in a functional config (nested models too)."""
    for entry in config["layers"]:
        layer = model.get_layer(entry["config"]["name"])
        if isinstance(layer, keras.layers.InputLayer):
            continue  # its dtype is the input's (float32 images, int32 sizes), not a policy
        if "layers" in entry["config"]:  # a nested functional model: its own layers; its outputs are inner ones
            _set_policies(entry["config"], layer, outputs=())
        keep_float32 = not layer.autocast or layer.name in outputs
        entry["config"]["dtype"] = "float32" if keep_float32 else MIXED


def _output_layer_names(output_layers):
    """The layer names in a functional config's "output_layers": [name, node, tensor] lists, in a list or dict."""
    if isinstance(output_layers, dict):
        output_layers = list(output_layers.values())
    if len(output_layers) == 3 and isinstance(output_layers[0], str):
        return {output_layers[0]}
    return set().union(*(_output_layer_names(item) for item in output_layers))


def _copy_weights(source, target):
    """Assigns source's weights to target's, in order (the same config builds them in the same order)."""
    if len(source.weights) != len(target.weights):
        raise ValueError(f"the rebuilt {source.name} has {len(target.weights)} weights, the model "
                         f"{len(source.weights)}")
    for src, dst in zip(source.weights, target.weights):
        if tuple(src.shape) != tuple(dst.shape):
            raise ValueError(f"the rebuilt {source.name}'s {dst.path} has shape {tuple(dst.shape)}, "
                             f"the model's {src.path} {tuple(src.shape)}")
        dst.assign(src)


def bfloat16_note(cpu_flags=None):
    """One line saying that bfloat16 is emulated (likely slower than float32) on this CPU, or None where it is
    native (AVX512_BF16, AMX_BF16, ARM's BF16).

    cpu_flags: the CPU's feature flags (default: /proc/cpuinfo's "flags" and "Features"; none outside
    Linux, where the line says it is unknown).
    """
    from data.cli import cpu_feature_flags, cpuinfo_field

    if cpu_flags is None:
        cpu_flags = cpu_feature_flags() | set((cpuinfo_field("Features") or "").split())
    cpu_flags = {flag.lower() for flag in cpu_flags}
    if cpu_flags & NATIVE_BF16_FLAGS:
        return None
    if not cpu_flags:
        return ("--precision bfloat16: whether this CPU computes bfloat16 natively is unknown (no /proc/cpuinfo "
                "flags); without AVX512_BF16 / AMX_BF16 it is emulated and likely slower than float32")
    return ("--precision bfloat16: this CPU lacks AVX512_BF16 and AMX_BF16, so bfloat16 is emulated and likely "
            "slower than float32 here")
