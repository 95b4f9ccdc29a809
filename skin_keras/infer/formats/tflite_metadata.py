"""TFLite Metadata inside an exported .tflite file: what MediaPipe Tasks and the LiteRT support
libraries read, so that a phone app needs no hand-written preprocessing or label lookup.

`embed` writes, in the TFLite Metadata schema (the "TFLITE_METADATA" buffer of the model):
the image input (RGB, values in [0, 255]: normalisation mean 0, std 1), the probabilities
output with the class names as its axis labels, and (for a model with an unknown rule) the
score output. Associated files are packed the way the schema's own populator packs them: a zip
archive appended to the flatbuffer, holding labels.txt and our metadata.json (the unknown rule
and the patient-metadata encoding), so one file carries everything `artifacts.load_model` and
`predict.py` need. `read` gets them back (None from a plain converted file).

Written with the schema's generated flatbuffer classes that ship in `mediapipe`
(`mediapipe/tasks/metadata`, loaded alone by `schema()`): its `metadata_writers` do not import
from the PyPI wheels (`No module named 'mediapipe.tasks.cc'`, a compiled helper missing from
1.2.3), and tflite-support, which had a working writer, cannot be installed beside TensorFlow
2.21 (its last release, 0.4.4, requires protobuf < 4; TensorFlow 2.21 requires >= 6.31.1).
"""

import functools
import importlib.util
import io
import json
import zipfile
from pathlib import Path

import numpy as np

METADATA_NAME = "TFLITE_METADATA"  # The schema's name for the buffer.
METADATA_IDENTIFIER = b"M001"
MODEL_IDENTIFIER = b"TFL3"
LABELS_FILE = "labels.txt"
DESCRIPTION_FILE = "metadata.json"
# 1.0.0: the schema members written here are all in its first version (no vocabulary files,
# no subgraph process units), as the populator's own version check would compute.
MIN_PARSER_VERSION = "1.0.0"


def embed(content: bytes, description: dict, class_names: list[str], *, name: str) -> bytes:
    """`content` (a .tflite flatbuffer) with TFLite Metadata and its associated files.

    `description` is the metadata.json export writes beside the file (about.describe): it says
    whether the model takes a second input (its "metadata input": encoded patient metadata)
    and answers a second output (its "unknown" rule's score per image).
    """
    import flatbuffers  # pylint: disable=g-import-not-at-top
    from ai_edge_litert import schema_py_generated as schema  # pylint: disable=g-import-not-at-top

    model = schema.ModelT.InitFromPackedBuf(content, 0)
    _probabilities_first(model.subgraphs[0])
    metadata = _model_metadata(description, class_names, name=name)
    builder = flatbuffers.Builder(0)
    builder.Finish(metadata.Pack(builder), METADATA_IDENTIFIER)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(bytes(builder.Output()), np.uint8)
    model.metadata = [entry for entry in (model.metadata or [])
                      if entry.name.decode() != METADATA_NAME]
    model.buffers = list(model.buffers or []) + [buffer]
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata.append(entry)
    builder = flatbuffers.Builder(len(content) + 4096)
    builder.Finish(model.Pack(builder), MODEL_IDENTIFIER)
    packed = io.BytesIO(bytes(builder.Output()))
    packed.seek(0, io.SEEK_END)
    with zipfile.ZipFile(packed, "a") as archive:  # Appended after the flatbuffer.
        archive.writestr(LABELS_FILE, "\n".join(class_names) + "\n")
        archive.writestr(DESCRIPTION_FILE, json.dumps(description, indent=2))
    return packed.getvalue()


def _probabilities_first(subgraph) -> None:
    """Orders the outputs probabilities [1, classes] first, then the score [1] (the converter
    may list them the other way round): MediaPipe reports them as heads in this order, and the
    metadata describes them in it. Only the list of output tensors changes."""
    subgraph.outputs = sorted(subgraph.outputs,
                              key=lambda index: -len(subgraph.tensors[index].shape))


def read(content: bytes) -> dict | None:
    """{"class_names": [...], "description": metadata.json's dict or None} from a file `embed`
    wrote; None for a file without packed labels (a plain converted file)."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            names = set(archive.namelist())
            if LABELS_FILE not in names:
                return None
            labels = [line for line in archive.read(LABELS_FILE).decode().splitlines() if line]
            description = (json.loads(archive.read(DESCRIPTION_FILE))
                           if DESCRIPTION_FILE in names else None)
    except (zipfile.BadZipFile, ValueError, UnicodeDecodeError):
        return None
    return {"class_names": labels, "description": description}


@functools.cache
def schema():
    """The TFLite Metadata schema's generated classes, the file `mediapipe` ships
    (mediapipe/tasks/metadata/metadata_schema_py_generated.py), loaded on its own: it needs
    only flatbuffers, while importing the `mediapipe` package loads OpenCV and its graph runtime
    (4 s, and libGL)."""
    spec = importlib.util.find_spec("mediapipe")  # Finds the package without importing it.
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the mediapipe package is not installed (requirements.txt)")
    path = Path(spec.submodule_search_locations[0]) / "tasks" / "metadata" / (
        "metadata_schema_py_generated.py")
    module_spec = importlib.util.spec_from_file_location("tflite_metadata_schema", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _model_metadata(description: dict, class_names: list[str], *, name: str):
    """The ModelMetadataT of a file, as the schema's populator builds it."""
    # Long: one flat description of the schema's tree (inputs, outputs, their files), read
    # top to bottom as the schema nests it; split up, the nesting would be lost.
    fb = schema()

    def stats(low, high):
        value = fb.StatsT()
        value.min, value.max = [float(low)], [float(high)]
        return value

    def content(properties_type, properties):
        value = fb.ContentT()
        value.contentPropertiesType, value.contentProperties = properties_type, properties
        return value

    def tensor(tensor_name, text, tensor_content, tensor_stats=None, process_units=None,
               files=None):
        value = fb.TensorMetadataT()
        value.name, value.description = tensor_name, text
        value.content, value.stats = tensor_content, tensor_stats
        value.processUnits, value.associatedFiles = process_units, files
        return value

    size = description["input"]["shape"][1]
    image_properties = fb.ImagePropertiesT()
    image_properties.colorSpace = fb.ColorSpaceType.RGB
    normalization = fb.NormalizationOptionsT()
    normalization.mean, normalization.std = [0.0], [1.0]  # The model takes values in [0, 255].
    unit = fb.ProcessUnitT()
    unit.optionsType, unit.options = fb.ProcessUnitOptions.NormalizationOptions, normalization
    inputs = [tensor("image", f"RGB image, {size}x{size} pixels, values in [0, 255] "
                     f"({description['input']['dtype']}); the model normalises it itself",
                     content(fb.ContentProperties.ImageProperties, image_properties),
                     stats(0, 255), [unit])]
    if "metadata input" in description:
        inputs.append(tensor("metadata", "encoded patient metadata (see metadata.json packed in "
                             "this file: order, vocabularies, scaling)",
                             content(fb.ContentProperties.FeatureProperties,
                                     fb.FeaturePropertiesT())))
    labels = fb.AssociatedFileT()
    labels.name, labels.type = LABELS_FILE, fb.AssociatedFileType.TENSOR_AXIS_LABELS
    labels.description = "Class names, one per line, in the order of the output."
    outputs = [tensor("probability", "probabilities of the classes (calibrated when the run was)",
                      content(fb.ContentProperties.FeatureProperties, fb.FeaturePropertiesT()),
                      stats(0, 1), files=[labels])]
    if "unknown" in description:
        rule = description["unknown"]
        outputs.append(tensor("unknown_score", f"out-of-distribution score ({rule['score']}): "
                              f"the image is none of the classes below {rule['threshold']}",
                              content(fb.ContentProperties.FeatureProperties,
                                      fb.FeaturePropertiesT())))
    subgraph = fb.SubGraphMetadataT()
    subgraph.inputTensorMetadata, subgraph.outputTensorMetadata = inputs, outputs
    described = fb.AssociatedFileT()
    described.name, described.type = DESCRIPTION_FILE, fb.AssociatedFileType.DESCRIPTIONS
    described.description = "skin_keras's description of the model (export.py's metadata.json)."
    metadata = fb.ModelMetadataT()
    metadata.name = name
    metadata.description = (f"Skin lesion classifier ({description['model']}, "
                            f"{description['format']}) exported by skin_keras.")
    metadata.subgraphMetadata = [subgraph]
    metadata.associatedFiles = [described]
    metadata.minParserVersion = MIN_PARSER_VERSION
    return metadata
