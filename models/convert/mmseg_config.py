"""The config text mmsegmentation stores in its checkpoints, read by parsing it (never by matching strings).

mmsegmentation saves `cfg.pretty_text` in a checkpoint's meta ("config" in 0.x,
"cfg" in the mmengine era): Python source made of top-level assignments of
literals and `dict(...)` calls. Its formatter writes the same value in several
ways (`dilations=(1, 1, 2, 4)` on one line, or one element per line with a
trailing comma), so only a parse reads it reliably. The text is never executed:
the parse accepts literals, tuples, lists, dicts, `dict(key=value, ...)` calls,
unary minus, and names of earlier assignments (`norm_cfg = dict(...)` used
inside `model`); anything else leaves that one assignment unread (NOT_READ).
"""
import ast

from models.convert.torch_reader import CheckpointMismatch


class _NotRead:
    def __repr__(self):
        return "NOT_READ"


NOT_READ = _NotRead()  # the value of an assignment whose expression is not plain data


class _Unsupported(Exception):
    pass


def parse_config_text(text, source="config"):
    """mmsegmentation config text -> {name: value} of its top-level assignments.

    source: the checkpoint's path, for the message. Raises CheckpointMismatch when the
    text is not Python at all; values that are not plain data are NOT_READ.
    """
    try:
        tree = ast.parse(text)
    except SyntaxError as error:
        raise CheckpointMismatch(f"{source}: the config text stored in the checkpoint does not parse "
                                 f"(line {error.lineno}: {error.msg})") from None
    names = {}
    for statement in tree.body:
        if not (isinstance(statement, ast.Assign) and len(statement.targets) == 1
                and isinstance(statement.targets[0], ast.Name)):
            continue
        try:
            names[statement.targets[0].id] = _value(statement.value, names)
        except _Unsupported:
            names[statement.targets[0].id] = NOT_READ
    return names


def _value(node, names):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Tuple):
        return tuple(_value(item, names) for item in node.elts)
    if isinstance(node, ast.List):
        return [_value(item, names) for item in node.elts]
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {_value(k, names): _value(v, names) for k, v in zip(node.keys, node.values)}
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict"
            and not node.args and all(keyword.arg for keyword in node.keywords)):
        return {keyword.arg: _value(keyword.value, names) for keyword in node.keywords}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _value(node.operand, names)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value
    if isinstance(node, ast.Name) and names.get(node.id, NOT_READ) is not NOT_READ:
        return names[node.id]
    raise _Unsupported(ast.dump(node)[:80])


def pspnet_settings(config, source):
    """What a PSPNet's weights do not show, from a parsed config (parse_config_text's result).

    Returns dict(align_corners=bool, test_cfg=dict) for an "R-xx-D8" PSPNet: a ResNetV1c
    backbone with dilations (1, 1, 2, 4), strides (1, 2, 1, 1) and contract_dilation=True.
    test_cfg is the model's own test setting (mode "whole" or "slide" with crop_size and
    stride), {} where the config has none. Raises CheckpointMismatch, one line naming
    `source`, for any other model.
    """
    model = config.get("model")
    backbone = model.get("backbone") if isinstance(model, dict) else None
    head = model.get("decode_head") if isinstance(model, dict) else None
    if not isinstance(backbone, dict) or not isinstance(head, dict):
        raise CheckpointMismatch(f"{source}: the config stored in the checkpoint has no readable model.backbone "
                                 "and model.decode_head")
    found = {key: backbone.get(key) for key in ("type", "dilations", "strides", "contract_dilation")}
    found["dilations"], found["strides"] = _ints(found["dilations"]), _ints(found["strides"])
    wanted = {"type": "ResNetV1c", "dilations": (1, 1, 2, 4), "strides": (1, 2, 1, 1), "contract_dilation": True}
    if found["type"] is not None:  # mmengine-era configs may name it "mmseg.ResNetV1c"
        found["type"] = str(found["type"]).rpartition(".")[2]
    if head.get("type", "PSPHead").rpartition(".")[2] != "PSPHead":
        raise CheckpointMismatch(f"{source}: its config's decode head is {head.get('type')!r}, not a PSPHead")
    differ = {key: value for key, value in found.items() if value != wanted[key]}
    if differ:
        shown = ", ".join(f"{key}={value!r}" for key, value in differ.items())
        raise CheckpointMismatch(f"{source}: its config is not a ResNetV1c \"-D8\" backbone ({shown}; expected "
                                 "dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1), contract_dilation=True): only "
                                 "mmsegmentation's PSPNet R-xx-D8 models convert")
    test_cfg = model.get("test_cfg")
    return {"align_corners": bool(head.get("align_corners", False)),
            "test_cfg": dict(test_cfg) if isinstance(test_cfg, dict) else {}}


def _ints(value):
    return tuple(value) if isinstance(value, (tuple, list)) else value


def read_test_settings(config, test_cfg):
    """mmsegmentation's own test of the model: {mode, crop_size, stride, img_scale}, each where the config says it.

    config: parse_config_text's result; test_cfg: pspnet_settings(...)["test_cfg"]. mode is "whole"
    or "slide"; crop_size and stride [h, w] of a "slide" test_cfg; img_scale [long, short] of the
    test pipeline's MultiScaleFlipAug (0.x layout: data.test.pipeline, else test_pipeline), the
    size each image is rescaled to (mmcv.imrescale, aspect ratio kept). Values as lists (JSON).
    """
    settings = {}
    mode = test_cfg.get("mode")
    if mode in ("whole", "slide"):
        settings["mode"] = mode
    if mode == "slide":
        for key in ("crop_size", "stride"):
            pair = _pair(test_cfg.get(key))
            if pair is not None:
                settings[key] = pair
    img_scale = _test_img_scale(config)
    if img_scale is not None:
        settings["img_scale"] = img_scale
    return settings


def _test_img_scale(config):
    data = config.get("data")
    test = data.get("test") if isinstance(data, dict) else None
    pipelines = [test.get("pipeline") if isinstance(test, dict) else None, config.get("test_pipeline")]
    for pipeline in pipelines:
        for step in pipeline if isinstance(pipeline, (list, tuple)) else ():
            if isinstance(step, dict) and str(step.get("type", "")).rpartition(".")[2] == "MultiScaleFlipAug":
                scale = step.get("img_scale")
                if isinstance(scale, list) and len(scale) == 1:  # [(2048, 1024)]: one scale given as a list
                    scale = scale[0]
                return _pair(scale)
    return None


def _pair(value):
    """[a, b] for a pair of positive ints (a tuple or list), else None."""
    if (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        return [int(v) for v in value]
    return None
