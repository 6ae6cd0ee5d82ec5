"""User-facing errors. Their message is one line that names the file or key at fault;
the CLI prints it without a traceback and exits non-zero."""


class EdgesegError(Exception):
    """A problem with what the user gave us (a file, a key, a value), not a bug."""

    def __init__(self, message: str = "") -> None:
        super().__init__(_one_line(_unwrap_worker_message(str(message))))


def _one_line(message: str) -> str:
    """A user's value quoted in a message may hold line breaks; show them escaped."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


def _unwrap_worker_message(message: str) -> str:
    """A DataLoader worker re-raises our error with its whole traceback as the message
    ("Caught DataError in DataLoader worker ... Original Traceback ..."); keep our line."""
    if not (message.startswith("Caught ") and "Original Traceback" in message):
        return message
    last = [line for line in message.splitlines() if line.strip()][-1]
    kind, sep, text = last.partition(": ")
    return text if sep and kind.rsplit(".", 1)[-1].endswith("Error") else last


class DataError(EdgesegError):
    """A dataset file is missing, unreadable or inconsistent."""


class ConfigError(EdgesegError):
    """A config file, key or value is wrong."""


class ModelError(EdgesegError):
    """A model directory or model name is wrong."""


class OutputError(EdgesegError):
    """An output path would overwrite or destroy something this command did not make."""
