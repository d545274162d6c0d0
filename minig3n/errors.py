"""Errors a user can act on. The command line prints their message on one line and exits with code 2."""


class Minig3nError(Exception):
    """Base class: bad input from the user (a file, an argument, a config). Never a bug in minig3n."""


class ConfigError(Minig3nError):
    """A config.json value the model cannot run with; the message names the key and the rule."""


class CheckpointError(Minig3nError):
    """A checkpoint file or tensor that is missing, corrupt, or not what the config says."""


class InputError(Minig3nError):
    """Bad model input: token ids, prompt, audio, image, sampling argument."""


class NumericsError(Minig3nError):
    """A computation produced NaN or infinity (corrupt weights, or a config the numbers cannot take); the
    message names the first tensor where it appeared."""
