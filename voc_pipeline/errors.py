"""Every problem a user can fix from the message alone, in one place.

The command line prints these as one line and exits with status 2; any other exception is a bug and
keeps its traceback. Importing this module costs nothing (no NumPy, no TensorFlow), so the pure core
and the command line can use it freely. Where a class also derives from ValueError or
FileNotFoundError, library users can keep catching the built-in kind.
"""


class VocPipelineError(Exception):
    """A problem with the user's input, files or environment; the message says what and how to fix it."""


class ConfigError(VocPipelineError, ValueError):
    """A configuration key or value that the pipeline cannot use."""


class DataError(VocPipelineError, ValueError):
    """Input data that does not follow the competition's layout; the message names the file."""


class RleError(VocPipelineError, ValueError):
    """A run-length string that does not follow the competition's encoding."""


class SubmissionError(VocPipelineError, ValueError):
    """A test frame or submission file that cannot become a valid submission."""


class ArtifactError(VocPipelineError):
    """A run-folder file that an earlier stage should have written is missing or unreadable."""


class StaleStageError(VocPipelineError):
    """An earlier stage's results no longer match the configuration, its inputs or the data."""


class OutputExistsError(VocPipelineError, FileExistsError):
    """An output folder exists and is not empty, and replacing it was not asked for."""


class OutputFolderError(VocPipelineError):
    """An output folder that cannot be written, or pruned safely."""


class DiskFullError(OutputFolderError):
    """A write found no space left on its file system (or the user's quota spent); nothing was replaced."""


class RunLockedError(VocPipelineError):
    """Another command is running a stage in the same run folder."""


class BackboneError(VocPipelineError, ValueError):
    """An unknown backbone, an unsupported image size or weights that cannot be had."""


class WeightsUnavailableError(BackboneError):
    """ImageNet weights could not be downloaded."""


class TrainingDivergedError(VocPipelineError, RuntimeError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint was kept."""


class KernelError(VocPipelineError, RuntimeError):
    """The Kaggle bundle cannot be built, checked or pushed; the message says what to do."""


class RunSelectionError(VocPipelineError, ValueError):
    """A run folder named on the command line (`compare`, `kernel build --experiments`) cannot be used as asked."""
