"""The report's data inlined into template.html: one file with its CSS, script and drawings."""
import html
import json
from importlib import resources


def render(data):
    """The HTML page of ``data`` (collect.py's dict)."""
    template = resources.files(__package__).joinpath("template.html").read_text(encoding="utf-8")
    before, after = template.split("__DATA__")
    # "</" inside a script element would end it early: JSON allows "<\/" for it
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    return before.replace("__TITLE__", html.escape(data["model"]["name"])) + payload + after
