"""Grad-CAM heat maps: where in the image the model found its evidence for a class.

The map is computed on the output of EfficientNetV2's last convolutional block (the backbone's
`top_activation`, the feature map the head pools), weighted by the gradient of the class logit
(Selvaraju et al., 2017). With our head (global average pooling -> Dense) this equals the class
activation map. A dermatologist should see at a glance whether the model looked at the lesion or
at a ruler, a hair or the vignette.
"""

import keras
import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw

from skin_keras.model import io, parts


def grad_cam(model: keras.Model, images, class_indices=None,
             records=None) -> tuple[np.ndarray, np.ndarray]:
    """Heat maps [B, H, W] in [0, 1] at the model's input size, and the classes they explain.

    Args:
      model: A classifier built by `builder.build_model` (or loaded from a .keras file of one).
      images: [B, H, W, 3] RGB values in [0, 255], at the model's input size.
      class_indices: Class explained per image; the predicted class when None.
      records: The patient record of each image (data.patient_metadata.Record) for a metadata
        model (None: all missing); they change the logits, not the image path the map is
        computed on.
    """
    backbone = parts.backbone_of(model)
    encoding = parts.metadata_encoding_of(model)
    # The model's other inputs: what the records say, else (model_inputs) nothing known.
    given = {} if records is None or encoding is None else {
        io.METADATA: encoding.encode_records(records)}
    head = parts.head_of(model)
    pooling, dense = head.pooling, head.classifier
    images = tf.convert_to_tensor(images, tf.float32)
    with tf.GradientTape() as tape:
        feature_map = backbone(parts.backbone_input(model, images), training=False)
        tape.watch(feature_map)
        logits = tf.matmul(parts.dense_input(model, pooling(feature_map), given),
                           dense.kernel) + dense.bias
        if class_indices is None:
            class_indices = tf.argmax(logits, axis=-1)
        class_indices = tf.cast(class_indices, tf.int32)
        scores = tf.gather(logits, class_indices, batch_dims=1)
    gradients = tape.gradient(scores, feature_map)
    weights = tf.reduce_mean(gradients, axis=(1, 2))
    cams = tf.nn.relu(tf.einsum("bhwc,bc->bhw", feature_map, weights))
    cams = tf.image.resize(cams[..., None], images.shape[1:3], method="bilinear")[..., 0]
    peak = tf.reduce_max(cams, axis=(1, 2), keepdims=True)
    cams = tf.math.divide_no_nan(cams, peak)
    return cams.numpy(), class_indices.numpy()


def resize_map(heat_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A heat map resized to (width, height) of the original image, still in [0, 1]."""
    resized = tf.image.resize(heat_map[..., None], (size[1], size[0]), method="bilinear")
    return np.clip(resized.numpy()[..., 0], 0.0, 1.0)


def overlay(image: Image.Image, heat_map: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """The image with the heat map (resized to it) blended over it."""
    from skin_keras.core import plots  # pylint: disable=g-import-not-at-top  (matplotlib: when drawn)

    image = image.convert("RGB")
    colours = plots.heat_colours(resize_map(heat_map, image.size))
    blended = (1 - alpha) * np.asarray(image, np.float32) + alpha * colours
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))


def overlay_figure(image: Image.Image, heat_map: np.ndarray, caption: str,
                   alpha: float = 0.45) -> Image.Image:
    """The original and the heat-map overlay side by side, with a caption underneath."""
    image = image.convert("RGB")
    width, height = image.size
    canvas = Image.new("RGB", (2 * width + 10, height + 28), "white")
    canvas.paste(image, (0, 0))
    canvas.paste(overlay(image, heat_map, alpha), (width + 10, 0))
    ImageDraw.Draw(canvas).text((4, height + 6), caption, fill="black")
    return canvas
