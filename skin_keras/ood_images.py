r"""Makes a folder of images that are none of the classes, to measure the "unknown" answer.

    python -m skin_keras.ood_images --output=data/ood --lesions=data/val --count=40

Far kinds (noise, stripes, checkerboard, gradient, photos) and, with --lesions, near kinds
(hue_shift, corrupted lesions), `count` seeded JPEGs each; then `evaluate.py --ood=data/ood`.
The flags are the fields of skin_keras.data.ood_synthesis.OodConfig.
"""

from skin_keras.core import console

console.quiet_tensorflow_startup()  # Before anything imports TensorFlow (the lesions' decoder).

from skin_keras.core import cli  # noqa: E402
from skin_keras.data import ood_synthesis  # noqa: E402


def main(argv):
    config = cli.config_from_flags(ood_synthesis.OodConfig, argv)
    counts = ood_synthesis.make_ood_folder(config)
    print(f"wrote {sum(counts.values())} images to {config.output}: "
          + ", ".join(f"{kind} {n}" for kind, n in counts.items()))


if __name__ == "__main__":
    cli.define_flags(ood_synthesis.OodConfig)
    cli.run(main)
