"""Export file names: render a job's ``filename_template`` into one safe file name.

Placeholders are ``{YYYY} {MM} {DD} {HH} {mm} {ss}`` (the run's start, in UTC) and
``{audience} {job} {partner}`` (the names, made safe: ASCII where a transliteration exists,
anything that could mean a path, an option or a hidden file replaced). Anything else in
braces is a validation error, caught when the job is saved rather than at 3 a.m.

The pipeline appends ``.gz`` / ``.pgp`` itself and, on a name collision, a counter
before the extension (``export-1.csv.pgp``).
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from dataclasses import dataclass

from django.core.exceptions import ValidationError

TIME_FIELDS = ("YYYY", "MM", "DD", "HH", "mm", "ss")
NAME_FIELDS = ("audience", "job", "partner")
PLACEHOLDERS = TIME_FIELDS + NAME_FIELDS

# Room left for what the pipeline adds after rendering: "-NNN" + ".gz.pgp" + ".part" or
# ".manifest.json.part". Most file systems cap a name at 255 bytes.
MAX_NAME_BYTES = 255
MAX_RENDERED_BYTES = 200
MAX_PART_BYTES = 60  # one {audience}/{job}/{partner} value
MANIFEST_SUFFIX = ".manifest.json"
PART_SUFFIX = ".part"

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
# Letters without a Unicode decomposition that still have an obvious ASCII spelling.
_TRANSLITERATE = str.maketrans(
    {
        "ß": "ss",
        "ẞ": "SS",
        "æ": "ae",
        "Æ": "AE",
        "œ": "oe",
        "Œ": "OE",
        "ø": "o",
        "Ø": "O",
        "đ": "d",
        "Đ": "D",
        "ð": "d",
        "Ð": "D",
        "ł": "l",
        "Ł": "L",
        "þ": "th",
        "Þ": "Th",
        "\u0131": "i",  # dotless i
        "ħ": "h",
        "Ħ": "H",
    }
)
_SAFE_ASCII = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


@dataclass(frozen=True)
class NameContext:
    """What a template can refer to."""

    when: dt.datetime
    audience: str = ""
    job: str = ""
    partner: str = ""


def validate_template(template: str) -> None:
    """Raise ValidationError listing every problem of ``template``."""
    problems: list[str] = []
    if not template or not template.strip():
        raise ValidationError("Enter a file name template.", code="missing")
    unknown = [p for p in _PLACEHOLDER.findall(template) if p not in PLACEHOLDERS]
    if unknown:
        known = " ".join("{" + p + "}" for p in PLACEHOLDERS)
        names = ", ".join("{" + p + "}" for p in dict.fromkeys(unknown))
        problems.append(f"Unknown placeholder {names}; use {known}.")
    literal = _PLACEHOLDER.sub("", template)
    if "{" in literal or "}" in literal:
        problems.append("Braces may only surround a placeholder such as {YYYY}.")
    if any(c in literal for c in "/\\") or any(ord(c) < 32 or ord(c) == 127 for c in literal):
        problems.append("The template must be a file name: no '/', '\\' or control characters.")
    if template.startswith((".", "-", " ")):
        problems.append("The name must not start with '.', '-' or a space.")
    if template.endswith(".part"):
        problems.append("'.part' marks files being uploaded; choose another extension.")
    if problems:
        raise ValidationError(problems, code="invalid_template")


def render(template: str, context: NameContext) -> str:
    """The file name for ``context``; raises ValidationError for a bad template."""
    validate_template(template)
    when = context.when.astimezone(dt.UTC)
    values = {
        "YYYY": f"{when.year:04d}",
        "MM": f"{when.month:02d}",
        "DD": f"{when.day:02d}",
        "HH": f"{when.hour:02d}",
        "mm": f"{when.minute:02d}",
        "ss": f"{when.second:02d}",
        "audience": safe_part(context.audience),
        "job": safe_part(context.job),
        "partner": safe_part(context.partner),
    }
    name = _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)
    return _bound(_clean_literal(name), MAX_RENDERED_BYTES) or "export"


def safe_part(value: str) -> str:
    """``value`` made safe to embed in a file name (never empty)."""
    text = unicodedata.normalize("NFKC", value or "").translate(_TRANSLITERATE)
    out: list[str] = []
    for char in text:
        if char in _SAFE_ASCII:
            out.append(char)
            continue
        ascii_form = _ascii_form(char)
        if ascii_form is not None:
            out.append(ascii_form)
        elif char.isalnum():
            out.append(char)  # no ASCII spelling (e.g. CJK): keep the letter, it is harmless
        else:
            out.append("_")  # spaces, punctuation, symbols, emoji, controls, separators
    # No leading "." (hidden file, "..") or "-" (read as an option by shell tools).
    cleaned = re.sub(r"_+", "_", "".join(out)).lstrip("._-")
    return _bound(cleaned, MAX_PART_BYTES).rstrip("._") or "unnamed"


def _ascii_form(char: str) -> str | None:
    """The ASCII letters of ``char`` once accents are removed ("é" -> "e"), if any."""
    decomposed = unicodedata.normalize("NFKD", char)
    base = "".join(c for c in decomposed if not unicodedata.combining(c))
    if base and all(c in _SAFE_ASCII for c in base):
        return base
    return None


def _clean_literal(name: str) -> str:
    # Placeholders are already safe; this guards against a template that was stored
    # without validation (e.g. written by a data migration).
    name = re.sub(r"[/\\\x00-\x1f\x7f]", "_", name)
    return name.lstrip(".- ")


def _bound(text: str, max_bytes: int) -> str:
    """Cut ``text`` to ``max_bytes`` of UTF-8 without splitting a character."""
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes].decode("utf-8", "ignore")


def with_counter(name: str, counter: int, suffixes: str = "") -> str:
    """``report.csv`` + 2 -> ``report-2.csv`` (the counter goes before the extension).

    ``suffixes`` (``.gz.pgp``) are what the pipeline appended to the rendered ``name``; the
    extension is the rendered name's last one (``.csv``), so the counter stays readable."""
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        return f"{name}-{counter}{suffixes}"
    return f"{stem}-{counter}.{ext}{suffixes}"


def made_by_template(name: str, template: str) -> bool:
    """Whether ``name`` (minus ``.part``, manifest/pipeline suffixes and a counter) is a name
    ``template`` renders to. Used to find this job's stale ``.part`` files after a crash."""
    base = name.removesuffix(".part").removesuffix(MANIFEST_SUFFIX)
    for suffix in (".pgp", ".gz"):
        base = base.removesuffix(suffix)
    pattern = _template_regex(template)
    uncounted = re.sub(r"-\d+(\.[^.]*)?$", r"\1", base)
    return bool(pattern.fullmatch(base) or pattern.fullmatch(uncounted))


def _template_regex(template: str) -> re.Pattern[str]:
    pieces: list[str] = []
    position = 0
    for match in _PLACEHOLDER.finditer(template):
        pieces.append(re.escape(template[position : match.start()]))
        field = match.group(1)
        pieces.append(r".+" if field in NAME_FIELDS else rf"\d{{{len(field)}}}")
        position = match.end()
    pieces.append(re.escape(template[position:]))
    return re.compile("".join(pieces))
