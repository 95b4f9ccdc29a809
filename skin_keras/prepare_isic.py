r"""Turns the official ISIC 2019 download into lesion-grouped train/val class folders.

    python -m skin_keras.prepare_isic \
        --images=ISIC_2019_Training_Input --ground_truth=ISIC_2019_Training_GroundTruth.csv \
        --metadata=ISIC_2019_Training_Metadata.csv --out_dir=data --val_fraction=0.3

Writes data/train/<Class name>/, data/val/<Class name>/ (files hard-linked, else symlinked, else
copied; --resize=N writes smaller JPEG copies instead), data/split.csv, data/audit.json, and
prints the counts per class and split and every bad row or file (left out, never fatal).
"""

import sys

from absl import flags

from skin_keras import UserError, cli, isic

_IMAGES = flags.DEFINE_string("images", None, "Folder of ISIC_*.jpg (ISIC_2019_Training_Input).")
_GROUND_TRUTH = flags.DEFINE_string(
    "ground_truth", None, "ISIC_2019_Training_GroundTruth.csv: image + one-hot class columns.")
_METADATA = flags.DEFINE_string(
    "metadata", None, "ISIC_2019_Training_Metadata.csv, for lesion_id. Without it every image "
    "is its own group and images of one lesion may land on both sides.")
_OUT_DIR = flags.DEFINE_string("out_dir", "data", "Where train/, val/, split.csv and audit.json go.")
_VAL_FRACTION = flags.DEFINE_float("val_fraction", 0.3, "Share of each class that goes to val.")
_FOLDS = flags.DEFINE_integer(
    "folds", 0, "K > 1: lesion-grouped stratified K-fold cross-validation instead of a holdout.")
_FOLD = flags.DEFINE_integer("fold", 0, "Which fold (0..K-1) is val when --folds is set.")
_SEED = flags.DEFINE_integer("seed", 0, "The split is deterministic for a given seed.")
_LINK = flags.DEFINE_enum("link", "auto", list(isic.LINK_MODES),
                          "auto: hard link, else symlink, else copy.")
_RESIZE = flags.DEFINE_integer(
    "resize", 0, "N > 0: write JPEG copies whose longest side is N (faster training input).")
_JPEG_QUALITY = flags.DEFINE_integer("jpeg_quality", 95, "JPEG quality of --resize copies.")
_SEED_NAMES = flags.DEFINE_boolean(
    "seed_names", False, "Name the NV folder 'None of the above', as the seed tutorial did.")
_OVERWRITE = flags.DEFINE_boolean(
    "overwrite", False, "Replace the train/ and val/ folders of a different earlier split.")

flags.mark_flags_as_required(["images", "ground_truth"])


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = isic.PrepareConfig(
        images=_IMAGES.value, ground_truth=_GROUND_TRUTH.value, metadata=_METADATA.value,
        out_dir=_OUT_DIR.value, val_fraction=_VAL_FRACTION.value, folds=_FOLDS.value,
        fold=_FOLD.value, seed=_SEED.value, link=_LINK.value, resize=_RESIZE.value,
        jpeg_quality=_JPEG_QUALITY.value, seed_names=_SEED_NAMES.value,
        overwrite=_OVERWRITE.value)
    audit = isic.prepare(config)
    print(isic.describe_audit(audit))
    print(f"wrote {config.out_dir}/train, {config.out_dir}/val, split.csv and audit.json",
          file=sys.stdout)


if __name__ == "__main__":
    cli.run(main)
