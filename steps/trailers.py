"""Commit-message trailers (`Model: …`): written by commit and retire, read by history.

Model names, run ids and triggers are arbitrary strings. A value that could break the trailer
block (a line break, a control character, surrounding blanks, a leading quote) is written as a
JSON string instead; `parse_trailer_value` reverses `trailer_value`. No Hera here: the CLI's
history reads trailers without paying for Hera's import.
"""

import json
from typing import Mapping


def trailer_value(text: str) -> str:
    """``text`` as a one-line trailer value: itself when that is safe, else a JSON string."""
    if text.isprintable() and text == text.strip() and not text.startswith('"'):
        return text
    return json.dumps(text)  # ASCII-only: no line or paragraph separator can survive


def parse_trailer_value(value: str) -> str:
    return json.loads(value) if value.startswith('"') else value


def one_line(text: str, most: int = 300) -> str:
    """A reason as one printable line (it becomes an annotation, a tag and a commit trailer, and
    travels between Argo tasks, where `{{` would start a template variable: it is kept apart)."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split()).replace("{{", "{ {")
    return flat if len(flat) <= most else flat[: most - 1] + "…"


def argo_safe_json(values: dict[str, str]) -> str:
    """Registry text as one JSON object in which no `{{` appears: Argo substitutes `{{…}}` in every
    parameter it passes from task to task (a description saying "{{7*7}}" failed the run), while
    a JSON reader turns `\u007b` back into `{`. The receiving step json-loads it: byte for byte."""
    fields = (f"{json.dumps(key)}:{json.dumps(value).replace('{', chr(92) + 'u007b').replace('}', chr(92) + 'u007d')}"
              for key, value in values.items())
    return "{" + ",".join(fields) + "}"


def trailer_lines(trailers: Mapping[str, str]) -> list[str]:
    """``Key: value`` lines, in the mapping's order; an empty value leaves its trailer out."""
    return [f"{key}: {trailer_value(value)}" for key, value in trailers.items() if value]
