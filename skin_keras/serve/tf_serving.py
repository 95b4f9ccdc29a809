"""TF Serving's REST API, answered as the exported SavedModel's signatures answer it.

    POST /v1/models/<name>[/versions/<v>]:predict   {"signature_name": ..., "instances": [...]}
                                                    or {"inputs": ...} (columnar)
    GET  /v1/models/<name>[/versions/<v>]           the version's status
    GET  /v1/models/<name>[/versions/<v>]/metadata  the signatures (signature_def)

Request and response follow TF Serving's JSON mapping (tensorflow.org/tfx/serving/api_rest): in
the row format each instance is the value of the one input or an object of named inputs; a
binary string is {"b64": "..."}; outputs come back as {"predictions": [{output: value}]} (row)
or {"outputs": {output: [values]}} (columnar); errors as {"error": "..."}. The signatures are
`infer/formats/saved_model.signature_specs`, the declaration the SavedModel is traced with.
"""

import base64
import binascii
import json
import math

import numpy as np
import tensorflow as tf

from skin_keras.data.patient_metadata import Record
from skin_keras.infer.formats.saved_model import signature_specs
from skin_keras.serve.model_service import ModelService, RequestError, Upload

_DTYPES = {tf.float32: "DT_FLOAT", tf.string: "DT_STRING", tf.bool: "DT_BOOL"}


def signatures(service: ModelService) -> dict[str, tuple[list, dict]]:
    runner = service.runner
    return signature_specs(runner.img_size, len(runner.class_names), runner.inputs,
                           runner.outputs)


def status(version: str) -> dict:
    return {"model_version_status": [{"version": version, "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}}]}


def metadata(service: ModelService, name: str, version: str) -> dict:
    """GetModelMetadata's JSON: every signature's inputs and outputs."""
    def tensor(spec: tf.TensorSpec, tensor_name: str) -> dict:
        return {"dtype": _DTYPES[spec.dtype], "name": tensor_name, "tensor_shape": {
            "dim": [{"size": str(-1 if size is None else size), "name": ""}
                    for size in spec.shape.as_list()], "unknown_rank": False}}

    definitions = {}
    for signature, (inputs, outputs) in signatures(service).items():
        definitions[signature] = {
            "inputs": {spec.name: tensor(spec, f"{signature}_{spec.name}:0") for spec in inputs},
            "outputs": {output: tensor(spec, f"StatefulPartitionedCall:{index}")
                        for index, (output, spec) in enumerate(sorted(outputs.items()))},
            "method_name": "tensorflow/serving/predict", "defaults": {}}
    return {"model_spec": {"name": name, "signature_name": "", "version": version},
            "metadata": {"signature_def": {"signature_def": definitions}}}


def predict(service: ModelService, body: bytes) -> dict:
    """The JSON answer to a :predict request body; RequestError (400) for a body TF Serving
    would refuse."""
    try:
        request = json.loads(body)
    except ValueError as error:  # Not UTF-8, not JSON, or an integer of over 4,300 digits.
        raise RequestError(400, f"the body is not JSON this server reads: {error}") from None
    except RecursionError:
        raise RequestError(400, "the body is not JSON this server reads: nested too deeply"
                           ) from None
    if not isinstance(request, dict):
        raise RequestError(400, "the body must be a JSON object with \"instances\" or "
                           "\"inputs\"")
    name = request.get("signature_name", "serving_default")
    specs = signatures(service)
    if not isinstance(name, str) or name not in specs:
        raise RequestError(400, f"no signature named {name!r}: this model has "
                           f"{', '.join(sorted(specs))}")
    inputs, _ = specs[name]
    row_format = "instances" in request
    if row_format == ("inputs" in request):
        raise RequestError(400, "the body needs exactly one of \"instances\" (row format) and "
                           "\"inputs\" (columnar format)")
    columns = (_rows_to_columns(request["instances"], inputs) if row_format
               else _columns(request["inputs"], inputs))
    answer = _run(service, columns, inputs)
    if row_format:
        return {"predictions": [{output: values[i] for output, values in answer.items()}
                                for i in range(len(next(iter(answer.values()))))]}
    return {"outputs": answer}


def _rows_to_columns(instances, inputs: list) -> dict[str, list]:
    if not isinstance(instances, list) or not instances:
        raise RequestError(400, "\"instances\" must be a non-empty list")
    names = [spec.name for spec in inputs]
    columns = {name: [] for name in names}
    for index, instance in enumerate(instances):
        named = isinstance(instance, dict) and not _is_b64(instance)
        if not named:
            if len(names) > 1:
                raise RequestError(400, f"instance {index}: this signature has several inputs "
                                   f"({', '.join(names)}): give each instance as an object")
            instance = {names[0]: instance}
        missing = [name for name in names if name not in instance]
        extra = [name for name in instance if name not in names]
        if missing or extra:
            raise RequestError(400, f"instance {index}: " + "; ".join(
                [f"does not have named input: {', '.join(missing)}"] * bool(missing)
                + [f"has inputs the signature does not take: {', '.join(extra)}"] * bool(extra)))
        for name in names:
            columns[name].append(instance[name])
    return columns


def _columns(given, inputs: list) -> dict[str, list]:
    names = [spec.name for spec in inputs]
    if not isinstance(given, dict):
        given = {names[0]: given} if len(names) == 1 else given
    if not isinstance(given, dict) or sorted(given) != sorted(names):
        raise RequestError(400, f"\"inputs\" must be an object with the inputs "
                           f"{', '.join(names)}")
    lengths = {name: len(value) if isinstance(value, list) else -1 for name, value in
               given.items()}
    if len(set(lengths.values())) != 1 or -1 in lengths.values() or 0 in lengths.values():
        raise RequestError(400, f"every input needs a non-empty list of the same length "
                           f"(given: {lengths})")
    return given


def _run(service: ModelService, columns: dict[str, list], inputs: list) -> dict[str, list]:
    count = len(next(iter(columns.values())))
    records = None
    if "age_approx" in columns:
        ages = [_number(value, f"age_approx of instance {i}")
                for i, value in enumerate(columns["age_approx"])]
        sexes, sites = ([_text(value, f"{name} of instance {i}")
                         for i, value in enumerate(columns[name])]
                        for name in ("sex", "anatom_site_general"))
        records = [Record(None if age < 0 else age, sex, site)
                   for age, sex, site in zip(ages, sexes, sites)]
    if "images" in columns:
        items = _image_arrays(columns["images"], service.runner.img_size)
    else:
        items = [Upload(_bytes(value, f"image_bytes of instance {i}"))
                 for i, value in enumerate(columns["image_bytes"])]
    results = service.answer(items, records)  # Records None: every record missing.
    probabilities = results["probabilities"]
    class_names = service.runner.class_names
    best = np.argmax(probabilities, axis=-1)
    answer = {"probabilities": probabilities.tolist(),
              "label": [class_names[i] for i in best],
              "score": probabilities[np.arange(count), best].tolist()}
    if "unknown_score" in results:
        scores = results["unknown_score"]
        answer.update(unknown_score=scores.tolist(),
                      unknown=service.runner.unknown.flags(scores).tolist())
    return answer


def _is_b64(value) -> bool:
    return isinstance(value, dict) and list(value) == ["b64"]


def _bytes(value, what: str) -> bytes:
    if isinstance(value, str):  # A JSON string is its UTF-8 bytes, as in TF Serving.
        return value.encode()
    if not _is_b64(value) or not isinstance(value["b64"], str):
        raise RequestError(400, f"{what}: a binary input is {{\"b64\": \"<base64>\"}}")
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"{what}: not valid base64") from None


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
            value):
        raise RequestError(400, f"{what}: needs a number (negative = missing), not {value!r}")
    return float(value)


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise RequestError(400, f"{what}: needs a string (\"\" = missing), not {value!r}")
    return value


def _image_arrays(values: list, size: int) -> np.ndarray:
    try:
        images = np.asarray(values, np.float32)
    except (ValueError, TypeError):
        raise RequestError(400, "images: needs numbers in nested lists [H][W][3]") from None
    if images.shape[1:] != (size, size, 3):
        raise RequestError(400, f"images: each instance must be [{size}][{size}][3] "
                           f"(RGB in [0, 255]), not {list(images.shape[1:])}")
    if not np.isfinite(images).all():
        raise RequestError(400, "images: values must be finite numbers")
    return images
