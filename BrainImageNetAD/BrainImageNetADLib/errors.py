"""Exceptions that the command line and the GUIs turn into clear messages."""


class BrainImageNetError(Exception):
    """Base class of the errors this library raises on purpose."""


class InputError(BrainImageNetError):
    """The user's input (image file, array, option) cannot be used as given.

    The command line maps it to exit code 2 and a one-line ``error: ...`` message.
    """


class BundleError(BrainImageNetError):
    """A model bundle is missing, corrupt, unsafe (pickle) or does not match its card."""


class Cancelled(BrainImageNetError):
    """The user cancelled a long run (preprocessing, training, occlusion)."""


class SubjectsFailed(BrainImageNetError):
    """A cohort run finished, but some subjects failed (their rows in the table say why). The
    command line maps it to exit code 3."""
