"""`hj212gw check-config`: print the effective settings as JSON, every secret shown as ***."""

import argparse
import json
import re
from collections.abc import Callable
from typing import Any

from hj212gw.settings import Settings

# Setting names whose values are secrets wherever they appear (a password, token or key).
_SECRET_NAME = re.compile(r"pass(word)?|secret|token|key", re.IGNORECASE)
# libpq query parameters that carry a secret: `?password=`, and `sslpassword=` for the client key.
# Also the `key=value` form (`host=db password=x`).
_SECRET_DSN_PARAM = re.compile(r"((?:^|[?&\s])(?:ssl)?password=)[^&#\s]*", re.IGNORECASE)


def add_parser(
    commands: "argparse._SubParsersAction[argparse.ArgumentParser]",
    settings_flags: Callable[[argparse.ArgumentParser], None],
) -> None:
    settings_flags(commands.add_parser("check-config", help="print the effective settings (secrets hidden)"))


def run(settings: Settings) -> int:
    print(json.dumps(redacted(settings), indent=2, ensure_ascii=False))
    return 0


def redact_dsn(url: str) -> str:
    """`url` with the password of its user-info and of its query string shown as ***."""
    scheme, sep, rest = url.partition("//")
    if sep:
        authority, slash, tail = rest.partition("/")
        userinfo, at, host = authority.rpartition("@")
        if at and ":" in userinfo:
            authority = f"{userinfo.split(':', 1)[0]}:***@{host}"
        url = f"{scheme}//{authority}{slash}{tail}"
    return _SECRET_DSN_PARAM.sub(r"\1***", url)


def _redact_secrets(data: Any) -> Any:
    """Every value under a secret-looking name, at any depth, as ***; *_file names stay (a path)."""
    if isinstance(data, dict):
        return {
            key: "***" if _SECRET_NAME.search(key) and not key.endswith("_file") and value else _redact_secrets(value)
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [_redact_secrets(value) for value in data]
    return data


def redacted(settings: Settings) -> dict[str, Any]:
    """The settings as JSON data, secrets as ***."""
    data: dict[str, Any] = _redact_secrets(settings.model_dump(mode="json"))
    if data.get("database_url"):
        data["database_url"] = redact_dsn(data["database_url"])
    return data
