"""Field rules for authorizations. Each function raises ValidationError for one field.

They are called from `Authorization.clean()`, which is the single validation path shared
by the admin forms, the REST API and the management commands.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata

from django.core.exceptions import ValidationError

# RFC 1123 host names: labels of letters, digits and inner hyphens, 253 characters at most.
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")

MANAGED_USERNAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{2,31}$")
PASSWORD_SPECIALS = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ ")


def validate_host(value: str) -> str:
    host = value.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # people paste IPv6 in URL brackets
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if (
        not name
        or len(name) > 253
        or not all(_LABEL.match(label) for label in labels)
        or labels[-1].isdigit()  # 999.1.1.1 is a broken IPv4 address, not a name
    ):
        raise ValidationError(
            "Enter a host name (sftp.example.com), an IPv4 address or an IPv6 address; "
            "no scheme, port or path.",
            code="invalid_host",
        )
    return name.lower()


def validate_port(value: int | None) -> None:
    if value is None or not 1 <= int(value) <= 65535:
        raise ValidationError("Port must be between 1 and 65535.", code="invalid_port")


def validate_folder(value: str) -> str:
    """A folder relative to the login directory; '' is the login directory itself."""
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise ValidationError(
            "The folder contains a NUL or control character.", code="folder_control"
        )
    folder = value.strip()
    if folder.startswith("/") or folder.startswith("~"):
        raise ValidationError(
            "Give the folder relative to the login directory (uploads/in, not /home/u/uploads/in).",
            code="folder_absolute",
        )
    parts = [part for part in folder.replace("\\", "/").split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ValidationError(
            "The folder may not contain '..': it must stay inside the login directory.",
            code="folder_parent",
        )
    return "/".join(parts)


def validate_managed_username(value: str) -> bool:
    if not MANAGED_USERNAME.match(value or ""):
        raise ValidationError(
            "Use 3 to 32 characters: letters a-z A-Z, digits 0-9, hyphen (-) and underscore (_);"
            " it cannot start with a hyphen.",
            code="invalid_username",
        )
    return True


def validate_managed_password(value: str) -> bool:
    problems = []
    if not 8 <= len(value) <= 32:
        problems.append("be 8 to 32 characters long")
    if not any(ch.isupper() for ch in value):
        problems.append("include an uppercase letter")
    if not any(ch.islower() for ch in value):
        problems.append("include a lowercase letter")
    if not any(ch.isdigit() for ch in value):
        problems.append("include a number")
    if not any(ch in PASSWORD_SPECIALS for ch in value):
        problems.append("include a special character such as ! @ # $ %")
    if problems:
        raise ValidationError(
            "The password must " + ", ".join(problems) + ".", code="weak_password"
        )
    return True
