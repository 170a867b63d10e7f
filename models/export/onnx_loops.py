"""An ONNX file's Loop bodies made readable by OpenVINO's ONNX frontend (2026.4).

A TensorFlow while loop (the sliding window's window batches, models.pspnet.inference)
carries every value it captures (the model's weights, the image) as a loop variable that
each iteration passes through unchanged; tf2onnx's optimiser removes the Identity in between,
so the Loop body lists the same tensor as an input and as an output. onnxruntime runs that
(the ONNX spec allows it), but OpenVINO 2026.4 then counts one body parameter too many per
such value and refuses the model: "The provided loop body graph canonical inputs size (289),
does not match the sum of loop carried dependencies and two mandatory inputs (146)".
An Identity between the two restores what TensorFlow had; the results are unchanged.
"""


def add_loop_passthrough_identities(model):
    """Puts an Identity on every Loop-body output that is directly a body input (nested graphs too).

    model: an onnx.ModelProto, changed in place. Returns the number of Identity nodes added.
    """
    return _fix_graph(model.graph)


def _fix_graph(graph):
    added = 0
    for node in graph.node:
        for attribute in node.attribute:
            subgraphs = ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs)
            for subgraph in subgraphs:
                added += _fix_graph(subgraph)
                if node.op_type == "Loop":
                    added += _separate_outputs_from_inputs(subgraph)
    return added


def _separate_outputs_from_inputs(body):
    inputs = {value.name for value in body.input}
    added = 0
    for output in body.output:
        if output.name in inputs:
            passed = output.name + "/passthrough"
            body.node.add(op_type="Identity", input=[output.name], output=[passed], name=passed)
            output.name = passed
            added += 1
    return added
