"""``rolebroker help [TOPIC]``: the whole manual in the terminal (every command's help, the
settings and the files), generated from the CLI and the settings so it cannot go stale."""

from __future__ import annotations

import os
import textwrap

import click

from rolebroker.config import default_config_file, default_state_dir, default_token_file, settable_settings
from rolebroker.discovery import discovery_file

TOPICS = ("settings", "files")


def settings_text() -> str:
    rows = settable_settings(os.environ)
    width = max(len(key) for key, _env, _default in rows)
    intro = (
        "Settings: flags beat the environment, which beats the config file "
        f"({default_config_file(os.environ)}, or $ROLEBROKER_CONFIG), which beats the defaults."
    )
    lines = [
        *textwrap.wrap(intro, 78),
        "",
        f"  {'config.toml key':<{width}}  environment variable                default",
    ]
    lines += [f"  {key:<{width}}  {env:<34}  {default}" for key, env, default in rows]
    return "\n".join(lines)


def files_text() -> str:
    state = default_state_dir(os.environ)
    token = default_token_file(os.environ)
    entries = [
        (token, "the master token (0600, no newline); `rolebroker token --rotate` replaces it"),
        (discovery_file(os.environ), "where the running daemon listens (never the token); removed at stop"),
        (default_config_file(os.environ), "rolebroker's own settings (optional; docs/config.example.toml)"),
        (state / "warm.json", "names of the profiles used lately, warmed at the next start"),
        (state / "grants.json", "grant metadata (names, profiles, expiry; never a grant secret)"),
        (state / "audit.jsonl", "one line per credential request (rotated, bounded)"),
    ]
    return "Files (for this environment):\n\n" + "\n".join(
        f"  {path}\n      {what}" for path, what in entries
    )


@click.command("help")
@click.argument("topic", required=False)
@click.pass_context
def help_command(ctx: click.Context, topic: str | None) -> None:
    """The manual: every command's help, the settings and the files (or one TOPIC: a
    command name, `settings` or `files`)."""
    group = ctx.parent.command if ctx.parent is not None else None
    if not isinstance(group, click.Group) or ctx.parent is None:
        raise click.UsageError("help runs as: rolebroker help [TOPIC]")
    parent = ctx.parent
    names = sorted(n for n in group.list_commands(parent) if n != "help")
    if topic == "settings":
        click.echo(settings_text())
        return
    if topic == "files":
        click.echo(files_text())
        return
    if topic is not None and topic not in names:
        raise click.UsageError(f"no help topic {topic!r}; topics: {', '.join([*names, *TOPICS])}")
    sections = [group.get_help(parent)] if topic is None else []
    for name in [topic] if topic else names:
        command = group.get_command(parent, name)
        if command is not None:
            with click.Context(command, info_name=name, parent=parent) as sub:
                sections.append(command.get_help(sub))
    if topic is None:
        sections += [settings_text(), files_text()]
    click.echo(("\n\n" + "-" * 78 + "\n\n").join(sections))


COMMANDS: tuple[click.Command, ...] = (help_command,)
