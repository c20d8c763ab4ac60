"""The environment that points a client at the daemon, for ``env`` (printed) and ``exec``.

The container provider comes late in every SDK's default chain, so pointing at the
endpoint is not enough: everything that would win before it is removed too (see
docs/clients.md, "Why a client may never ask rolebroker"). Values are quoted for the target shell, and only
``AWS_CONTAINER_AUTHORIZATION_TOKEN`` is exported by default: the ``_FILE`` variant is
ignored by older CLIs and SDKs. Only one of the two is ever exported.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rolebroker.awsfiles import aws_config_paths

FULL_URI = "AWS_CONTAINER_CREDENTIALS_FULL_URI"
RELATIVE_URI = "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"
TOKEN = "AWS_CONTAINER_AUTHORIZATION_TOKEN"  # noqa: S105  (a variable name, not a secret)
TOKEN_FILE = "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"  # noqa: S105
CREDENTIALS_FILE = "AWS_SHARED_CREDENTIALS_FILE"
CONFIG_FILE = "AWS_CONFIG_FILE"
JS_V2_LOAD_CONFIG = "AWS_SDK_LOAD_CONFIG"
"""aws-sdk-js v2 (and Serverless v3 through it) honours AWS_SHARED_CREDENTIALS_FILE only
when this is set: without it, ``[default]`` keys in ~/.aws/credentials still win."""
PROFILE_MARK = "ROLEBROKER_PROFILE"
"""Which profile this shell uses, for prompts and for ``doctor``."""
REGION_MARK = "ROLEBROKER_REGION"
"""The region ``env`` set, so the next ``env`` knows that AWS_REGION is its own to replace."""
REGION_VARS = ("AWS_REGION", "AWS_DEFAULT_REGION")
EMPTY_FILE = "/dev/null"

PROFILE_VARS = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE")
KEY_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
WEB_IDENTITY_VARS = ("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME")
SHADOWING_VARS = (
    *PROFILE_VARS,
    *KEY_VARS,
    "AWS_CREDENTIAL_EXPIRATION",
    RELATIVE_URI,
    *WEB_IDENTITY_VARS,
)
"""Everything an SDK would use before (or instead of) FULL_URI."""

CREDENTIAL_KEYS = (
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "role_arn",
    "web_identity_token_file",
    "credential_process",
    "sso_session",
    "sso_start_url",
    "login_session",
)
"""Profile settings from which botocore's chain resolves credentials on its own."""

SHELLS = ("bash", "zsh", "fish", "sh")


@dataclass(frozen=True, slots=True)
class AwsConfigView:
    """What a client in this environment would read from the AWS config files, via botocore."""

    config_path: Path
    credentials_path: Path
    region: str | None = None
    default_in_credentials: tuple[str, ...] = ()
    """Credential settings of ``[default]`` in the shared credentials file (names only)."""
    default_in_config: tuple[str, ...] = ()
    """Credential settings of ``[default]`` in the config file (names only)."""
    errors: tuple[str, ...] = ()


def read_aws_config(environ: Mapping[str, str], profile: str | None = None) -> AwsConfigView:
    """The client side of the config (the files named by ``environ``), never a value of a
    secret: only setting names leave this function, and the profile's region."""
    config_path, credentials_path = aws_config_paths(environ)
    errors: list[str] = []
    config = _sections(config_path, errors, profiles=True)
    credentials = _sections(credentials_path, errors, profiles=False)
    region = config.get(profile, {}).get("region") if profile else None
    return AwsConfigView(
        config_path=config_path,
        credentials_path=credentials_path,
        region=str(region) if region else None,
        default_in_credentials=_credential_keys(credentials.get("default", {})),
        default_in_config=_credential_keys(config.get("default", {})),
        errors=tuple(errors),
    )


def _sections(path: Path, errors: list[str], *, profiles: bool) -> dict[str, dict[str, object]]:
    if str(path) == EMPTY_FILE:
        return {}
    import botocore.configloader  # only env, exec and doctor read the files: token and status do not
    import botocore.exceptions

    try:
        if profiles:
            loaded = botocore.configloader.load_config(str(path)).get("profiles", {})
        else:
            loaded = botocore.configloader.raw_config_parse(str(path))
    except botocore.exceptions.ConfigNotFound:
        return {}
    except botocore.exceptions.BotoCoreError as exc:
        errors.append(f"cannot parse {path}: {exc}")
        return {}
    return {str(name): dict(values) for name, values in loaded.items() if isinstance(values, dict)}


def _credential_keys(section: Mapping[str, object]) -> tuple[str, ...]:
    return tuple(key for key in CREDENTIAL_KEYS if section.get(key))


@dataclass(frozen=True, slots=True)
class ShellEnv:
    exports: dict[str, str] = field(default_factory=dict)
    unsets: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    """Things the user should know; printed on stderr, never a secret."""

    def apply(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The environment ``exec`` hands to the command."""
        result = {k: v for k, v in environ.items() if k not in self.unsets}
        result.update(self.exports)
        return result

    def render(self, shell: str, *, footer: str = "") -> str:
        if shell not in SHELLS:
            raise ValueError(f"unknown shell {shell!r}; use one of {', '.join(SHELLS)}")
        lines: list[str] = []
        if shell == "fish":
            lines += [f"set -q {name}; and set -e {name}" for name in self.unsets]
            lines += [f"set -gx {name} {fish_quote(value)}" for name, value in self.exports.items()]
        else:
            if self.unsets:
                lines.append("unset " + " ".join(self.unsets))
            lines += [f"export {name}={posix_quote(value)}" for name, value in self.exports.items()]
        if footer:
            lines.append(f"# {footer}")
        return "\n".join(lines) + "\n"


def plan(
    *,
    url: str,
    token: str,
    profile: str,
    environ: Mapping[str, str],
    aws_config: AwsConfigView,
    token_file: Path | None = None,
) -> ShellEnv:
    """What to set and unset so that every SDK in ``environ`` uses ``url``.

    ``token_file`` given: export AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE *instead of* the
    token. Never both: the JS SDK v3 prints two warnings on every credential load when both
    are set, and SDKs disagree on which one wins.
    """
    exports = {FULL_URI: url, PROFILE_MARK: profile}
    unsets = list(SHADOWING_VARS)
    notes: list[str] = []
    if token_file is not None:
        exports[TOKEN_FILE] = str(token_file)
        unsets.append(TOKEN)
    else:
        exports[TOKEN] = token
        unsets.append(TOKEN_FILE)

    if aws_config.default_in_credentials:
        exports[CREDENTIALS_FILE] = EMPTY_FILE
        exports[JS_V2_LOAD_CONFIG] = "1"
        if not aws_config.config_path.is_file():
            exports[CONFIG_FILE] = EMPTY_FILE  # js v2 with LOAD_CONFIG fails on a missing config file
        notes.append(
            f"[default] in {aws_config.credentials_path} has {', '.join(aws_config.default_in_credentials)}, "
            f"which every SDK would use instead of rolebroker, so this environment reads no credentials "
            f"file ({CREDENTIALS_FILE}={EMPTY_FILE}); to keep that file, move those keys to a named "
            "profile (e.g. [base]) and point source_profile at it"
        )
    if aws_config.default_in_config:
        notes.append(
            f"[default] in {aws_config.config_path} has {', '.join(aws_config.default_in_config)}: SDKs will "
            "use that instead of rolebroker; move it to a named profile (e.g. [profile base]) and point "
            "source_profile at it"
        )
    notes.extend(f"{error}; SDKs in this shell will fail to read it too" for error in aws_config.errors)

    region_exports, region_unsets, region_note = _region(aws_config.region, profile, environ)
    exports.update(region_exports)
    unsets.extend(region_unsets)
    if region_note:
        notes.append(region_note)
    return ShellEnv(exports, tuple(n for n in unsets if n not in exports), tuple(notes))


def _region(
    region: str | None, profile: str, environ: Mapping[str, str]
) -> tuple[dict[str, str], list[str], str | None]:
    """AWS_PROFILE would have brought the profile's region; unsetting it must not lose that.
    A region the user exported is theirs and kept; one a previous ``env`` set is replaced."""
    ours = environ.get(REGION_MARK)
    current = {name: environ[name] for name in REGION_VARS if environ.get(name)}
    if current and not (ours and all(value == ours for value in current.values())):
        if region and region not in current.values():
            shown = ", ".join(f"{k}={v}" for k, v in current.items())
            return {}, [], f"keeping {shown} from your environment; profile {profile!r} has region {region}"
        return {}, [], None
    if region:
        return {"AWS_REGION": region, "AWS_DEFAULT_REGION": region, REGION_MARK: region}, [], None
    return {}, [*REGION_VARS, REGION_MARK] if ours else [], None


def posix_quote(value: str) -> str:
    """Single quotes: nothing inside is special to sh, bash or zsh, except ``'`` itself."""
    return "'" + value.replace("'", "'\\''") + "'"


def fish_quote(value: str) -> str:
    """fish single quotes: only ``\\'`` and ``\\\\`` are escapes."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def detect_shell(environ: Mapping[str, str]) -> str:
    name = os.path.basename(environ.get("SHELL", ""))
    return name if name in SHELLS else "bash"


def eval_hint(shell: str, command: str) -> str:
    if shell == "fish":
        return f"{command} --shell fish | source"
    return f'eval "$({command})"'
