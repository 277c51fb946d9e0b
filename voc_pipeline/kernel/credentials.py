"""Which credentials the `kaggle` client (2.2.x with kagglesdk) will find, case by case as it decides.

Read from the client's own code (kagglesdk/kaggle_env.py `get_access_token_from_env`, kaggle_creds.py
`KaggleCredentials.load`, kaggle/api/kaggle_api_extended.py `authenticate` and `config_dir`), in its order:
1. inside a Kaggle notebook (`KAGGLE_KERNEL_RUN_TYPE` and `KAGGLE_DATA_PROXY_URL` set), the token file
   named by `KAGGLE_API_V1_TOKEN`;
2. `KAGGLE_API_TOKEN`: when it names an existing file, that file's stripped text (an empty file gives no
   token, and the client does not fall back to ~/.kaggle/access_token), else the value itself;
3. else `~/.kaggle/access_token`, then `~/.kaggle/access_token.txt`, each only if not blank;
4. a legacy key: `username` and `key` from `kaggle.json` in `KAGGLE_CONFIG_DIR`, else `~/.kaggle`, else
   (on Linux only, and only while `~/.kaggle` does not exist) `$XDG_CONFIG_HOME/kaggle`, overridden by
   `KAGGLE_USERNAME`/`KAGGLE_KEY`;
5. `~/.kaggle/credentials.json` of `kaggle auth login`, only with a refresh token.
When none works, the client sends no request at all and prints its authentication help, so only this
check can say what is wrong. It looks at the structure of files (empty or not, JSON keys present) and
never keeps, prints or copies a value.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

CREDENTIALS_HELP = (
    "create an API token at https://www.kaggle.com/settings/api and either export KAGGLE_API_TOKEN=<token> or "
    "save it in ~/.kaggle/access_token (or run `kaggle auth login`; a legacy ~/.kaggle/kaggle.json or "
    "KAGGLE_USERNAME with KAGGLE_KEY also work)"
)


@dataclass
class CredentialCheck:
    """`found`: the credentials the client can use, by name, in the order it tries them; `problems`: those
    present that it cannot use, each with the reason."""

    found: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def explain(self) -> str:
        """One line for a user who has none that work."""
        problems = "; ".join(self.problems)
        return f"no Kaggle credentials the kaggle client can use{': ' + problems if problems else ''}; {CREDENTIALS_HELP}"


def has_text(path: Path) -> bool:
    """Whether a file holds anything but white space (what the client requires of a token file)."""
    try:
        return bool(path.read_bytes().strip())
    except OSError:
        return False


def json_object(path: Path) -> dict | None:
    """The JSON object in `path`, or None when it is not one (the client then ignores the file)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def check_credentials(environment: dict | None = None, home: Path | None = None,
                      platform: str | None = None) -> CredentialCheck:
    """What the kaggle client would find in `environment` (default os.environ) and `home`, on `platform`."""
    environment = os.environ if environment is None else environment
    home = Path(home or Path.home())
    platform = platform or sys.platform
    check = CredentialCheck()
    token_found = check_notebook_token(environment, check)
    if not token_found:
        check_access_token(environment, home, check)
    check_legacy_key(environment, home, platform, check)
    credentials = home / ".kaggle" / "credentials.json"
    if credentials.exists():
        data = json_object(credentials)
        if data and data.get("refresh_token"):
            check.found.append("~/.kaggle/credentials.json")
        else:
            check.problems.append("~/.kaggle/credentials.json holds no refresh token (run `kaggle auth login` again)")
    return check


def check_notebook_token(environment, check: CredentialCheck) -> bool:
    """Inside a Kaggle notebook, the token file named by KAGGLE_API_V1_TOKEN comes first."""
    if environment.get("KAGGLE_KERNEL_RUN_TYPE") is None or not environment.get("KAGGLE_API_V1_TOKEN"):
        return False
    if environment.get("KAGGLE_DATA_PROXY_URL") is None:
        check.problems.append("KAGGLE_API_V1_TOKEN is ignored: KAGGLE_DATA_PROXY_URL is not set")
        return False
    if has_text(Path(environment["KAGGLE_API_V1_TOKEN"])):
        check.found.append("KAGGLE_API_V1_TOKEN (Kaggle notebook)")
        return True
    check.problems.append(f"KAGGLE_API_V1_TOKEN names {environment['KAGGLE_API_V1_TOKEN']}, which is missing or empty")
    return False


def check_access_token(environment, home: Path, check: CredentialCheck) -> None:
    """KAGGLE_API_TOKEN (a value or a file's name), else ~/.kaggle/access_token[.txt]."""
    value = environment.get("KAGGLE_API_TOKEN")
    if value:
        if not Path(value).exists():
            check.found.append("KAGGLE_API_TOKEN")
        elif has_text(Path(value)):
            check.found.append("KAGGLE_API_TOKEN (a token file)")
        else:
            # An existing path is a file name, not a token: naming it leaks nothing.
            check.problems.append(f"KAGGLE_API_TOKEN names {value}, which is empty (the client then reads no "
                                  f"token and does not fall back to ~/.kaggle/access_token)")
        return
    for name in ("access_token", "access_token.txt"):
        path = home / ".kaggle" / name
        if path.exists():
            if has_text(path):
                check.found.append(f"~/.kaggle/{name}")
                return
            check.problems.append(f"~/.kaggle/{name} is empty")


def legacy_config_dir(environment, home: Path, platform: str) -> Path:
    """The folder whose kaggle.json the client reads (decided once, when it is imported)."""
    if environment.get("KAGGLE_CONFIG_DIR"):
        return Path(environment["KAGGLE_CONFIG_DIR"])
    dot_kaggle = home / ".kaggle"
    if platform.startswith("linux") and not dot_kaggle.exists():
        return Path(environment.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"
    return dot_kaggle


def check_legacy_key(environment, home: Path, platform: str, check: CredentialCheck) -> None:
    """A username and key from kaggle.json, each overridden by KAGGLE_USERNAME / KAGGLE_KEY."""
    config = legacy_config_dir(environment, home, platform) / "kaggle.json"
    xdg = Path(environment.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle" / "kaggle.json"
    if xdg != config and xdg.exists():
        check.problems.append(f"{xdg} is not read: the client reads {config} ("
                              f"$XDG_CONFIG_HOME/kaggle only on Linux, and only while ~/.kaggle does not exist)")
    from_file = json_object(config) if config.exists() else None
    if config.exists() and from_file is None:
        check.problems.append(f"{config} is not a JSON object")
    sources = {}
    for key, variable in (("username", "KAGGLE_USERNAME"), ("key", "KAGGLE_KEY")):
        if environment.get(variable, "").strip():
            sources[key] = variable
        elif isinstance((from_file or {}).get(key), str) and from_file[key].strip():
            sources[key] = str(config)
    if len(sources) == 2:
        names = list(dict.fromkeys(sources.values()))
        check.found.append("KAGGLE_USERNAME and KAGGLE_KEY" if names == ["KAGGLE_USERNAME", "KAGGLE_KEY"]
                           else " with ".join(names))
    elif from_file is not None:
        missing = [key for key in ("username", "key") if key not in sources]
        check.problems.append(f"{config} lacks a non-empty {' and '.join(missing)}")
