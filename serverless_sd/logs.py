"""One JSON line per event on stderr; prompt text only when LOG_PROMPTS=1, never a header value."""

import json
import logging
import os
import sys
import time
from typing import Any, TextIO

_stream: TextIO = sys.stderr


def setup() -> None:
    """Write to a private copy of stderr, so Potassium's per-request prefixing of fd 2 cannot split our JSON."""
    global _stream
    _stream = os.fdopen(os.dup(2), "w", buffering=1)


def event(name: str, **fields: Any) -> None:
    record = {"ts": round(time.time(), 3), "event": name, **fields}
    _stream.write(json.dumps(record, default=str) + "\n")


def prompt_fields(inputs: object, log_prompts: bool) -> dict:
    """The prompt texts, or only their lengths: the text is the user's, not ours to keep."""
    if not isinstance(inputs, dict):
        return {}
    texts = {k: v for k, v in inputs.items() if k in ("prompt", "negative_prompt", "negative") and isinstance(v, str)}
    if log_prompts:
        return texts
    return {f"{k}_chars": len(v) for k, v in texts.items()}


class _NoPromptText(logging.Filter):
    """diffusers logs the part of a prompt past CLIP's 77 tokens, word for word: keep the fact, drop the words."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "was truncated because" in record.getMessage():
            record.msg, record.args = "part of a prompt was truncated at the text encoder's token limit", ()
        return True


def redact_library_warnings() -> None:
    from diffusers.utils import logging as diffusers_logging

    # A filter on a handler sees every record that reaches it, those of the library's child loggers included.
    for handler in diffusers_logging.get_logger("diffusers").handlers:
        handler.addFilter(_NoPromptText())
