r"""Merges the outputs of predict.py's N `--shard=i/N` parts into one.

    python -m skin_keras.merge_predictions --output=out

Writes out/predictions.csv and predictions.json, the parts' rows in order: what one process
would have written. Refuses (one line, exit 2) unless every part finished, all of one job (model,
settings) and cut from the same listing of the sources: parts run at different times over a
folder that changed would otherwise miss or repeat files. The flags are the fields of
skin_keras.infer.shards.MergeConfig.
"""

from skin_keras.core import cli
from skin_keras.infer import shards

cli.define_flags(shards.MergeConfig)


def main(argv):
    config = cli.config_from_flags(shards.MergeConfig, argv)
    print(f"wrote {shards.merge(config.output, config.overwrite)} and predictions.json")


if __name__ == "__main__":
    cli.run(main)
