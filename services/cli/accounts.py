"""`corral login/logout`, `corral user ...`, `corral token ...`, `corral audit`: accounts from a terminal.

Accounts live in the registry (services.registry.accounts); these commands call it with the CLI's
own token (shared.credentials.cli_token: CORRAL_TOKEN, else the kept login, else the local farm's
admin credential). `corral login` keeps its token in the user's config folder.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from services.cli import app as cli
from services.cli.app import ConfigOption, JsonOption, app
from shared.credentials import farm_secret, forget_login, save_login
from shared.errors import ConfigError, CorralError
from shared.identity import Role, issue_token

user_app = typer.Typer(help="Farm accounts: add, list, remove (administrators).",
                       no_args_is_help=True)
token_app = typer.Typer(help="API tokens: create, list, revoke (administrators).",
                        no_args_is_help=True)

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str, option: str) -> float:
    """`90`, `90s`, `15m`, `12h`, `30d`, `2w` in seconds; anything else names the option."""
    match = _DURATION.match(text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"{option}: {text!r} is not a duration such as 3600, 15m, 12h or 30d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _call(config: Path | None, call: Any) -> Any:
    with cli.rpc_client(cli._settings(config)) as rpc:
        try:
            return call(rpc)
        except CorralError as exc:
            cli._fail(exc)


def _when(timestamp: float | None) -> str:
    return "never" if timestamp is None else time.strftime("%Y-%m-%d %H:%M",
                                                          time.localtime(timestamp))


def _read_password(password_stdin: bool, confirm: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\n")
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=confirm))


@app.command()
def login(username: str = typer.Argument(..., help="Your user name on the farm."),
          config: Path | None = ConfigOption,
          password_stdin: bool = typer.Option(False, "--password-stdin",
                                              help="Read the password from standard input."),
          ) -> None:
    """Log in: the token is kept in your config folder and sent with every later command."""
    settings = cli._settings(config)
    password = _read_password(password_stdin, confirm=False)
    with cli.rpc_client(settings) as rpc:
        try:
            answer = rpc.registry.authenticate(username, password)
        except CorralError as exc:
            cli._fail(exc)
    path = save_login(settings, answer)
    cli.console.print(f"logged in as [bold]{answer['user']}[/bold] ({answer['role']}) until "
                      f"{_when(answer['expires_at'])}; token kept in {path}")


@app.command()
def logout() -> None:
    """Forget the kept login (the token itself lasts until it expires or is revoked)."""
    cli.console.print("logged out" if forget_login() else "nobody was logged in")


@user_app.command("add")
def user_add(username: str = typer.Argument(...), config: Path | None = ConfigOption,
             role: str = typer.Option("artist", help="viewer, artist, wrangler, admin or worker."),
             no_password: bool = typer.Option(False, "--no-password",
                                              help="Tokens only (a pipeline, the workers)."),
             password_stdin: bool = typer.Option(False, "--password-stdin",
                                                 help="Read the password from standard input."),
             as_json: bool = JsonOption) -> None:
    """Add a user with a role (asks for a password unless --no-password)."""
    password = None if no_password else _read_password(password_stdin, confirm=True)
    created = _call(config, lambda rpc: rpc.registry.create_user(username, role, password))
    if as_json:
        cli._print_json(created)
    else:
        cli.console.print(f"user [bold]{created['username']}[/bold] added ({created['role']})")


@user_app.command("list")
def user_list(config: Path | None = ConfigOption, as_json: bool = JsonOption) -> None:
    """Every user, their role, and how many tokens they hold."""
    users = _call(config, lambda rpc: rpc.registry.list_users())
    if as_json:
        cli._print_json(users)
        return
    table = Table("user", "role", "password", "active tokens", "since")
    for user in users:
        table.add_row(user["username"], user["role"], "yes" if user["has_password"] else "no",
                      str(user["active_tokens"]), _when(user["created_at"]))
    cli.console.print(table)


@user_app.command("remove")
def user_remove(username: str = typer.Argument(...), config: Path | None = ConfigOption) -> None:
    """Remove a user; every token they hold is revoked."""
    removed = _call(config, lambda rpc: rpc.registry.remove_user(username))
    cli.console.print(f"user {removed['username']} removed; "
                         f"{len(removed['revoked'])} tokens revoked")


@token_app.command("create")
def token_create(username: str = typer.Argument(..., help="Whose token (their role is its role)."),
                 config: Path | None = ConfigOption,
                 name: str = typer.Option("api", help="What the token is for."),
                 ttl: str | None = typer.Option(None, help="Lifetime: 3600, 12h, 30d (default: "
                                                           "until revoked)."),
                 as_json: bool = JsonOption) -> None:
    """Create an API token; it is printed once and never stored."""
    try:
        ttl_seconds = None if ttl is None else parse_duration(ttl, "--ttl")
    except ValueError as exc:
        cli._fail(exc)
    issued = _call(config, lambda rpc: rpc.registry.create_token(username, name, ttl_seconds))
    if as_json:
        cli._print_json(issued)
        return
    cli.err_console.print(f"token {issued['token_id']} for {issued['user']} ({issued['role']}),"
                             f" expires {_when(issued['expires_at'])}:")
    sys.stdout.write(issued["token"] + "\n")


@token_app.command("list")
def token_list(config: Path | None = ConfigOption,
               username: str | None = typer.Option(None, "--user", help="One user's tokens."),
               as_json: bool = JsonOption) -> None:
    """Tokens issued (never the tokens themselves): id, user, name, expiry, revoked."""
    tokens = _call(config, lambda rpc: rpc.registry.list_tokens(username))
    if as_json:
        cli._print_json(tokens)
        return
    table = Table("id", "user", "role", "name", "kind", "expires", "state")
    for token in tokens:
        state = "active" if token["active"] else "revoked" if token["revoked_at"] else "expired"
        table.add_row(token["token_id"], token["username"], token["role"], token["name"],
                      token["kind"], _when(token["expires_at"]), state)
    cli.console.print(table)


@token_app.command("revoke")
def token_revoke(token_id: str = typer.Argument(...), config: Path | None = ConfigOption) -> None:
    """Revoke a token: every service refuses it within seconds."""
    revoked = _call(config, lambda rpc: rpc.registry.revoke_token(token_id))
    cli.console.print(f"token {revoked['token_id']} of {revoked['username']} revoked")


@token_app.command("bootstrap")
def token_bootstrap(config: Path | None = ConfigOption,
                    ttl: str = typer.Option("1h", help="Lifetime of the administrator's token."),
                    ) -> None:
    """Print an administrator's token signed with the farm secret of this machine's config, to
    add the first accounts of a new farm: `export CORRAL_TOKEN=$(corral token bootstrap)`."""
    settings = cli._settings(config)
    try:
        token = issue_token(farm_secret(settings), "admin", Role.ADMIN,
                            ttl_seconds=parse_duration(ttl, "--ttl"))
    except (ValueError, ConfigError) as exc:
        cli._fail(exc)
    sys.stdout.write(token + "\n")


@app.command()
def audit(config: Path | None = ConfigOption,
          since: str | None = typer.Option(None, help="Only the last 15m, 12h, 7d..."),
          actor: str | None = typer.Option(None, help="Only what this user did."),
          limit: int = typer.Option(100, min=1, max=10000),
          as_json: bool = JsonOption) -> None:
    """The audit log: who did what to which job, task, pool or account, when and from where."""
    try:
        start = None if since is None else time.time() - parse_duration(since, "--since")
    except ValueError as exc:
        cli._fail(exc)
    entries = _call(config, lambda rpc: rpc.registry.list_audit(start, actor, limit))
    if as_json:
        cli._print_json(entries)
        return
    table = Table("when", "who", "role", "did", "to", "from", "service")
    for entry in entries:
        table.add_row(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry["at"])),
                      entry["actor"], entry["role"], entry["action"], entry["target"],
                      entry["origin"], entry["service"])
    cli.console.print(table)


app.add_typer(user_app, name="user")
app.add_typer(token_app, name="token")


@app.command("broker-users")
def broker_users() -> None:
    """Print the rabbitmqctl script that makes the workers' and clients' broker users."""
    from services.cli.broker import setup_script

    sys.stdout.write(setup_script())
