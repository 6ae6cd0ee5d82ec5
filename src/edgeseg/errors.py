"""User-facing errors. Their message is one line that names the file or key at fault;
the CLI prints it without a traceback and exits non-zero."""


class EdgesegError(Exception):
    """A problem with what the user gave us (a file, a key, a value), not a bug."""


class DataError(EdgesegError):
    """A dataset file is missing, unreadable or inconsistent."""


class ConfigError(EdgesegError):
    """A config file, key or value is wrong."""


class ModelError(EdgesegError):
    """A model directory or model name is wrong."""
