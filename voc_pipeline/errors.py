"""Errors that the command line reports as one line (without importing TensorFlow to know them)."""


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint was kept."""


class KernelError(RuntimeError):
    """The Kaggle bundle cannot be built, checked or pushed; the message says what to do."""
