"""User-facing errors.

Convention:
    Anything a user can cause (bad input file, unwritable output, refused resume) raises a
    ``VideoStyleError`` subclass whose message is ONE line naming what was expected and what came.
    The CLI prints ``videostyle: error: <message>`` and exits 2; any other exception is an internal
    error (exit 1).
"""


class VideoStyleError(Exception):
    """Base class for errors caused by the user's input or environment (CLI exit status 2)."""


class InputError(VideoStyleError):
    """The input file (video, image, style) cannot be used."""


class OutputError(VideoStyleError):
    """The output cannot be written (path, directory, extension, disk space)."""


class ResumeError(VideoStyleError):
    """A work dir cannot be resumed (different config or source, corrupt manifest)."""


class WeightsError(VideoStyleError):
    """Requested VGG weights cannot be loaded (missing, damaged, unsafe, or of the other model)."""
