"""skin_keras: train, evaluate, explain and ship skin-lesion classifiers with Keras 3."""

from skin_keras.errors import UserError

__all__ = ["UserError"]
