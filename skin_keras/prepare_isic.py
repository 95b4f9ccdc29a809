r"""Turns the official ISIC 2019 download into lesion-grouped train/val class folders.

    python -m skin_keras.prepare_isic \
        --images=ISIC_2019_Training_Input --ground_truth=ISIC_2019_Training_GroundTruth.csv \
        --metadata=ISIC_2019_Training_Metadata.csv --out_dir=data --val_fraction=0.3

Writes data/split.csv first, then data/train/<Class name>/ and data/val/<Class name>/ (files
hard-linked, else symlinked, else copied; --resize=N writes smaller JPEG copies instead), then
data/audit.json, and prints the counts per class and split and every bad row or file (left out,
never fatal). An interrupted run is finished by running the same command again. With
--groups=acquisition_centers.csv --holdout_group=center=rosendahl, one clinic's images (and
their lesions') go to data/test/ and none to train or val: a test on another clinic. The flags
are the fields of skin_keras.isic.PrepareConfig.
"""

from skin_keras.core import cli
from skin_keras.data import audit_report, isic

cli.define_flags(isic.PrepareConfig)


def main(argv):
    config = cli.config_from_flags(isic.PrepareConfig, argv)
    audit = isic.prepare(config)
    print(audit_report.describe_audit(audit))
    folders = ", ".join(f"{config.out_dir}/{name}" for name in isic.SPLITS
                        if name != "test" or config.holdout_group)
    print(f"wrote {folders}, split.csv and audit.json")


if __name__ == "__main__":
    cli.run(main)
