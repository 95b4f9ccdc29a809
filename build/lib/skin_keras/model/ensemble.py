"""An ensemble as one model: its members side by side, their probabilities averaged."""

import keras

from skin_keras.core.errors import UserError
from skin_keras.model import io


def ensemble_model(members: list[keras.Model]) -> keras.Model:
    """One model with the members' named inputs (all members must take the same: image size,
    metadata vector) whose probabilities are the mean of the members' (renamed fold_1..fold_K)."""
    first = io.named(members[0])
    shapes = {name: tuple(tensor.shape) for name, tensor in io.input_dict(first).items()}
    named_inputs = {name: keras.Input(shape[1:], name=name) for name, shape in shapes.items()}
    outputs = []
    for index, member in enumerate(members, start=1):
        member = io.named(member)
        if {name: tuple(t.shape) for name, t in io.input_dict(member).items()} != shapes:
            raise UserError("the members take different inputs: they cannot be averaged")
        renamed = io.rebuilt(member, {io.PROBABILITIES: io.output_dict(member)[io.PROBABILITIES]},
                             name=f"fold_{index}")
        outputs.append(renamed(named_inputs)[io.PROBABILITIES])
    average = keras.layers.Average(name="ensemble_average", dtype="float32")(outputs)
    return keras.Model(named_inputs, {io.PROBABILITIES: average},
                       name=f"ensemble_{len(members)}x_{first.name}")
