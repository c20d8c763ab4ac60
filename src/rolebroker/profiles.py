"""The user's AWS profiles, read through botocore, turned into top chains."""

from __future__ import annotations

import configparser
import dataclasses
import getpass
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import botocore.exceptions
import botocore.session

from rolebroker.awsfiles import aws_config_paths
from rolebroker.credentials import Credentials
from rolebroker.errors import (
    BrokerError,
    ConfigFileError,
    ConflictingMfaSerial,
    InternalError,
    ProfileConfigError,
    ProfileNotFound,
    SourceProfileLoop,
    SourceProfileMissing,
    SourceProfileNotFound,
    UnsupportedCredentialSource,
)
from rolebroker.hops import (
    Hop,
    MfaSessionHop,
    RoleHop,
    SessionTokenHop,
    SourceHop,
    chain_of,
)
from rolebroker.hops.mfa_session import clamp_mfa_duration
from rolebroker.hops.sts import StsClients

FileSignature = tuple[tuple[str, int, int], ...]


def default_session_name() -> str:
    """Names the human in CloudTrail: ``rolebroker-alice``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "user"
    return ("rolebroker-" + re.sub(r"[^\w+=,.@-]", "-", user))[:64]


def files_signature(paths: tuple[Path, ...]) -> FileSignature:
    """Cheap change detection: a reload re-reads only when a file really changed."""
    signature = []
    for path in paths:
        try:
            info = path.stat()
            signature.append((str(path), info.st_mtime_ns, info.st_size))
        except OSError:
            signature.append((str(path), -1, -1))
    return tuple(signature)


def syntax_error_at(path: Path) -> str:
    """Where in ``path`` the syntax error is (" at line N ..."), or "" if unknown.

    botocore's ConfigParseError names only the file. The profiles are always read by
    botocore; configparser here only re-reads a file botocore rejected, for the line number.
    The line itself is never quoted: in the credentials file it may hold a secret key."""
    parser = configparser.RawConfigParser()
    try:
        with path.open(encoding="utf-8") as handle:
            parser.read_file(handle)
    except configparser.MissingSectionHeaderError as exc:
        return f" at line {exc.lineno}, which is not a [section] header (or comes before the first one)"
    except configparser.ParsingError as exc:
        lineno = exc.errors[0][0] if exc.errors else 0
        return f" at line {lineno}, which is neither a [section] header nor a key = value line"
    except (configparser.Error, OSError, UnicodeDecodeError):
        return ""
    return ""


@dataclass
class ProfileCatalog:
    """A snapshot of the AWS config; hops are built lazily and kept for the snapshot."""

    profiles: Mapping[str, Mapping[str, str]]
    sso_sessions: Mapping[str, Mapping[str, str]]
    paths: tuple[Path, ...]
    signature: FileSignature
    session_name: str = field(default_factory=default_session_name)
    sts: StsClients = field(default_factory=StsClients)
    _built: dict[str, Hop | BrokerError] = field(default_factory=dict)

    @classmethod
    def load(cls, sts: StsClients | None = None) -> ProfileCatalog:
        """Blocking (file I/O): call off the event loop."""
        paths = aws_config_paths()
        signature = files_signature(paths)
        try:
            full = botocore.session.Session().full_config
        except botocore.exceptions.ConfigParseError as exc:
            where = syntax_error_at(Path(str(exc.kwargs.get("path", ""))))
            raise ConfigFileError(
                f"cannot parse the AWS config: {exc}{where}; fix the file, then retry"
            ) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise ConfigFileError(f"cannot read the AWS config: {exc}; fix the file, then retry") from None
        profiles = {name: dict(values) for name, values in full.get("profiles", {}).items()}
        sso_sessions = {name: dict(values) for name, values in full.get("sso_sessions", {}).items()}
        return cls(profiles, sso_sessions, paths, signature, sts=sts or StsClients())

    def changed_on_disk(self) -> bool:
        return files_signature(self.paths) != self.signature

    def names(self) -> list[str]:
        return sorted(self.profiles)

    def hop(self, name: str) -> Hop:
        """What to call to serve profile ``name``. No I/O; memoised per snapshot."""
        built = self._built.get(name)
        if built is None:
            try:
                built = self._serving_hop(name)
            except ProfileNotFound:
                raise  # not memoised: any local client can invent names without end
            except BrokerError as exc:
                built = exc
            self._built[name] = built
        if isinstance(built, BrokerError):
            raise built.copy()
        return built

    def _serving_hop(self, name: str) -> Hop:
        if name not in self.profiles:
            known = ", ".join(self.names()[:20]) or "none"
            raise ProfileNotFound(
                f"no AWS profile named {name!r} in {self.paths[0]} or {self.paths[1]} (known: {known}); "
                "add it, then retry"
            )
        top = self._chain(name, ())
        mfa = self._mfa_session(name, chain_of(top))
        if mfa is not None:
            return _above_root(top, mfa)
        if isinstance(top, SourceHop):
            # Serving a role-less profile: hand out a session, never the long-term keys.
            return SessionTokenHop(
                profile=name,
                source=top,
                duration_seconds=self._int_setting(name, "duration_seconds"),
                sts=self.sts,
            )
        return top

    def _chain(self, name: str, path: tuple[str, ...]) -> Hop:
        if name in path:
            loop = " -> ".join((*path, name))
            raise SourceProfileLoop(
                f"source_profile loop: {loop}; point one of them at a profile with credentials"
            )
        if name not in self.profiles:
            raise SourceProfileNotFound(
                f"profile {path[-1]!r} has source_profile = {name}, which does not exist; "
                "add that profile or fix source_profile"
            )
        profile = self.profiles[name]
        role_arn = profile.get("role_arn")
        if not role_arn:
            return SourceHop(
                profile=name, fingerprint=self._fingerprint(name), sso_login_hint=self._sso_hint(name)
            )
        source_name = profile.get("source_profile")
        credential_source = profile.get("credential_source")
        if source_name and credential_source:
            raise ProfileConfigError(
                f"profile {name!r} sets both source_profile and credential_source; keep one"
            )
        if source_name == name:
            source: Hop = self._own_keys(name)
        elif source_name:
            source = self._chain(source_name, (*path, name))
        elif credential_source:
            raise UnsupportedCredentialSource(
                f"profile {name!r} uses credential_source = {credential_source}, which rolebroker does not "
                "support; use source_profile instead"
            )
        else:
            raise SourceProfileMissing(
                f"profile {name!r} has role_arn but no source_profile; add source_profile = <profile with "
                "credentials>"
            )
        return RoleHop(
            profile=name,
            role_arn=role_arn,
            source=source,
            session_name=profile.get("role_session_name") or self.session_name,
            external_id=profile.get("external_id") or None,
            duration_seconds=self._int_setting(name, "duration_seconds"),
            sts=self.sts,
        )

    def _mfa_session(self, name: str, hops: list[Hop]) -> MfaSessionHop | None:
        """One MFA session above the root when any profile of the chain sets mfa_serial; its
        settings come from the first profile (root first) that has them."""
        names = list(dict.fromkeys(hop.profile for hop in hops))

        def first(key: str) -> str | None:
            return next((n for n in names if str(self.profiles[n].get(key) or "").strip()), None)

        serials = {
            serial: n for n in names if (serial := str(self.profiles[n].get("mfa_serial") or "").strip())
        }
        if not serials:
            return None
        if len(serials) > 1:
            raise ConflictingMfaSerial(
                f"profiles {', '.join(sorted(serials.values()))} in the chain of {name!r} set different "
                "mfa_serial values; one MFA session carries one device, keep one"
            )
        duration_from, process_from = first("mfa_session_duration"), first("mfa_process")
        return MfaSessionHop(
            profile=hops[0].profile,
            mfa_serial=next(iter(serials)),
            source=hops[0],
            duration_seconds=clamp_mfa_duration(
                self._int_setting(duration_from, "mfa_session_duration") if duration_from else None
            ),
            mfa_process=self.profiles[process_from]["mfa_process"].strip() if process_from else None,
            unlock_profile=name,
            sts=self.sts,
        )

    def _own_keys(self, name: str) -> SourceHop:
        profile = self.profiles[name]
        key_id, secret = profile.get("aws_access_key_id"), profile.get("aws_secret_access_key")
        if not key_id or not secret:
            raise ProfileConfigError(
                f"profile {name!r} is its own source_profile but has no "
                "aws_access_key_id/aws_secret_access_key"
            )
        keys = Credentials(key_id, secret, profile.get("aws_session_token") or None)
        return SourceHop(profile=name, fingerprint=self._fingerprint(name), static=keys)

    def _int_setting(self, name: str, key: str) -> int | None:
        raw = self.profiles[name].get(key)
        if raw is None or str(raw).strip() == "":
            return None
        try:
            return int(str(raw).strip())
        except ValueError:
            raise ProfileConfigError(
                f"profile {name!r}: {key} = {raw!r} is not a whole number of seconds"
            ) from None

    def _fingerprint(self, name: str) -> str:
        """A digest of everything that defines the profile's credentials (secrets only hashed)."""
        profile = self.profiles[name]
        material: dict[str, object] = {"profile": dict(profile)}
        sso_session = profile.get("sso_session")
        if sso_session:
            material["sso_session"] = dict(self.sso_sessions.get(sso_session, {}))
        blob = json.dumps(material, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def _sso_hint(self, name: str) -> str:
        profile = self.profiles.get(name, {})
        if profile.get("sso_session") and not profile.get("sso_start_url"):
            return f"aws sso login --sso-session {profile['sso_session']}"
        return f"aws sso login --profile {name}"


def _above_root(top: Hop, mfa: MfaSessionHop) -> Hop:
    """``top``'s chain with ``mfa`` between the root and the first role."""
    source = top.source
    if source is None:
        return mfa  # a role-less profile is served by its MFA session
    if not isinstance(top, RoleHop):
        raise InternalError(f"cannot add an MFA session to {top.label}")
    if source.source is None:
        return dataclasses.replace(top, source=mfa)
    return dataclasses.replace(top, source=_above_root(source, mfa))
