"""videostyle: video style transfer with temporal coherence, audio and timing kept, resumable."""

__version__ = "0.3.0"

from videostyle.config import RunOptions, StyleConfig  # noqa: E402


def stylize_video(*args, **kwargs):
    """See :func:`videostyle.run.api.stylize_video`."""
    from videostyle.run.api import stylize_video as run
    return run(*args, **kwargs)


def stylize_image(*args, **kwargs):
    """See :func:`videostyle.run.api.stylize_image`."""
    from videostyle.run.api import stylize_image as run
    return run(*args, **kwargs)


__all__ = ["StyleConfig", "RunOptions", "stylize_video", "stylize_image", "__version__"]
