"""`${NAME}` in a webhook header or an MCP server's env names a secret, so keys stay out
of vagent.toml: the value comes from the environment or VAGENT_SECRETS_FILE."""

from __future__ import annotations

import re

from settings.config import ConfigError, secret

_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand(value: str, where: str) -> str:
    def one(match: re.Match[str]) -> str:
        found = secret(match.group(1))
        if found is None:
            raise ConfigError(f"{where}: ${{{match.group(1)}}} is not set (environment or "
                              "VAGENT_SECRETS_FILE)")
        return found

    return _REF.sub(one, value)


def expand_all(values: dict[str, str], where: str) -> dict[str, str]:
    return {key: expand(value, f"{where}.{key}") for key, value in values.items()}
