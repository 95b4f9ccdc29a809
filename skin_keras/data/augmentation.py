"""What training augmentation does beyond flips and 90-degree turns: the `Augmentation` option
group, declared once (train.py's flags of the same names are generated from it). No TensorFlow
here; `augment_ops` applies it in the tf.data pipeline.

Every field's default is "off". Beyond the usual crops, rotations and colour jitter, a set of
changes mimics how images from another clinic differ: the dark circular field of view of a
contact dermatoscope, another zoom and framing, another illuminant and white balance, another
tone curve, a softer camera and stronger JPEG compression.
"""

import dataclasses
import math

from skin_keras.core.options import option


def _off(high: float, help_text: str):
    """A strength or probability from 0 (the default: off) to `high`."""
    return option(0.0, f"{help_text} 0 = off.", low=0.0, high=high)


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Training-only changes to each image (in the input pipeline, never inside the model)."""

    crop_scale: float = option(1.0, "Random resized crop keeping at least this fraction of the "
                               "area (1.0 = off).", low=0.05, high=1.0)
    crop_aspect: float = option(4 / 3, "Largest aspect ratio of that crop (its inverse the "
                                "smallest).", low=1.0, high=4.0)
    zoom_out: float = option(1.0, "Zoom out by up to this factor: the image shrinks inside a "
                             "border filled by reflection (1.0 = off; with --crop_scale, each "
                             "applies to half of the images).", low=1.0, high=2.5)
    rotation: bool = option(False, "Random rotation by any angle (borders reflected).")
    color_jitter: float = _off(0.9, "Strength s of random brightness (+-s*255), contrast and "
                               "saturation (x[1-s, 1+s]) and hue (+-s/4).")
    illuminant_jitter: float = _off(1.0, "Random white balance: each channel times exp(u), u in "
                                    "[-s, s].")
    gamma_jitter: float = _off(1.0, "Random tone curve (x/255)^g, g = exp(u), u in [-s, s].")
    vignette_prob: float = _off(1.0, "Probability of a dark circular field of view or black "
                                "corners (a contact dermatoscope's).")
    blur_prob: float = _off(1.0, "Probability of down-scaling to 30-80% and back (a softer "
                            "camera).")
    jpeg_prob: float = _off(1.0, "Probability of JPEG re-compression at quality 30-90.")
    randaugment_magnitude: float = _off(1.0, "keras.layers.RandAugment factor in (0, 1].")
    style_mix_prob: float = _off(1.0, "Probability that an image takes on colour statistics "
                                 "(per-channel mean and standard deviation) mixed with those of "
                                 "another image of its batch, by a Beta(0.1, 0.1) weight: "
                                 "MixStyle (Zhou et al. 2021) on the pixels; with --balance_by, "
                                 "statistics of other clinics.")
    mixup_alpha: float = _off(10.0, "MixUp alpha; labels become soft.")
    cutmix_alpha: float = _off(10.0, "CutMix factor; with MixUp too, each batch gets one of the "
                               "two.")

    def changes_images(self) -> list[str]:
        """Names of the fields that are on (differ from their declared default); `crop_aspect`
        only shapes the crop, so it counts only with `crop_scale`."""
        return [field.name for field in dataclasses.fields(Augmentation)
                if getattr(self, field.name) != field.default and field.name != "crop_aspect"]

    @property
    def mixes_batches(self) -> bool:
        return bool(self.randaugment_magnitude or self.mixup_alpha or self.cutmix_alpha
                    or self.style_mix_prob)

    def decode_size(self, img_size: int) -> int:
        """The shorter side an image must keep when decoded (JPEG DCT scaling) so that the
        smallest random crop still has `img_size` pixels across."""
        if self.crop_scale >= 1.0:
            return img_size
        return math.ceil(img_size * math.sqrt(self.crop_aspect / self.crop_scale))
