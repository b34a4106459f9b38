"""Reading a JSON file a user gave, with errors that name the file and the byte offset."""

from __future__ import annotations

import json


def read_json(path: str, error: type[Exception]):
    """The parsed JSON in the file at path; ``error(message)`` naming the file and where, when it cannot be
    read, is not UTF-8 (the byte offset of the first bad byte) or is not JSON (the byte offset of the fault)."""
    from .files import open_regular

    try:
        with open(open_regular(path), "rb") as f:  # a named pipe or a device is refused, never waited on
            data = f.read()
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: byte offset {exc.start}: not UTF-8") from None
    try:
        return json.loads(text)
    except RecursionError:
        raise error(f"{path}: nested too deeply to be read") from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}: byte offset {len(text[: exc.pos].encode('utf-8'))}: invalid JSON: {exc.msg}") from None
    except ValueError as exc:  # what json itself refuses past the grammar: an integer of over 4300 digits
        raise error(f"{path}: cannot be read: {exc}") from None
