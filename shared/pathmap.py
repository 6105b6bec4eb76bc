"""Maps the paths artists' Windows and macOS machines give onto the Linux nodes' (`path_map`).

Each entry names one share: the prefix Windows clients use (`P:\\` or `\\\\server\\share`), the
one macOS clients use (`/Volumes/projects`) and the one the Linux nodes mount it at
(`/mnt/projects`). A worker rewrites a task's argv, working directory and environment through
the map just before the task starts (`PathMap.map_task`); what was submitted stays as it was.

How a prefix is found and replaced: RULES (docs/configuration.md shows them).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

WINDOWS_PREFIX = re.compile(r"(?:[A-Za-z]:|[\\/]{2}[^\\/]+[\\/]+[^\\/]+)(?:[\\/].*)?")
"""A drive (`P:`, `P:\\projects`) or a share (`\\\\server\\share`, `\\\\server\\share\\x`)."""

RULES = (
    "A prefix matches at path-component boundaries only: `P:\\projects` maps `P:\\projects\\a` "
    "and `P:\\projects` but not `P:\\projects2`; of several prefixes that match, the longest "
    "wins.",
    "Windows prefixes match in any case (`p:\\Projects` is `P:\\projects`) and with either "
    "slash; macOS and Linux prefixes match exactly as written.",
    "Paths are found inside an argument or a variable's value too (`--output=P:\\renders\\"
    "f_####.exr`, lists separated by `;` or `:` such as `PATH`): a path starts at the start of "
    "the text or after a character that cannot be part of a name (`=`, `;`, `:`, a space, a "
    "quote...), so an option glued to its path (`-oP:\\out`) is left alone.",
    "A mapped Windows path's backslashes become slashes up to the end of the argument or value, "
    "the next `;`, `\"`, `<`, `>`, `|`, tab or line end, its closing quote when a quote opened "
    "it, or the next mapped path (`P:\\my shot\\a.blend` becomes `/mnt/projects/my shot/"
    "a.blend`); in a shell command (`shell: true`) also up to a space, `'`, `&`, `(`, `)` or "
    "a backtick outside quotes.",
    "The stored task keeps what was submitted; the worker maps it just before the task starts "
    "and, when anything changed, the task's log begins with a line "
    "`corral: paths mapped for this node: argv ...; cwd ...; NAME=...` giving what ran.",
)
"""How the map finds and replaces prefixes, one rule a line (docs/configuration.md lists them)."""

_NAME_BEFORE = r"(?<![\w.~/\\$%-])"
"""A path starts where the character before it cannot be part of a name."""
_ENDS = frozenset('";<>|\t\r\n\0')
"""Characters that end a mapped path anywhere."""
_SHELL_ENDS = _ENDS | frozenset(" '&()`")
"""Characters that also end one in a shell command, outside quotes."""


class PathMapEntry(BaseModel):
    """One share of the path map: the prefix its clients use and the one the Linux nodes use."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    linux: str
    """Where the Linux nodes mount the share, an absolute path (`/mnt/projects`)."""
    windows: str | None = None
    """The prefix Windows clients use: a drive (`P:\\`), a folder on one (`P:\\projects`) or a
    share (`\\\\fileserver\\projects`); any case, either slash."""
    macos: str | None = None
    """The prefix macOS clients use, an absolute path (`/Volumes/projects`)."""

    @field_validator("linux", "macos")
    @classmethod
    def _posix_folder(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith("/") or "\\" in value:
            raise ValueError(f"{value!r} is not an absolute path with forward slashes "
                             "(such as /mnt/projects)")
        return value.rstrip("/") or "/"

    @field_validator("windows")
    @classmethod
    def _windows_folder(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not WINDOWS_PREFIX.fullmatch(value):
            raise ValueError(f"{value!r} is not a Windows path prefix (a drive such as P:\\, a "
                             "folder such as P:\\projects, or a share such as \\\\server\\share)")
        return _windows_key(value)

    @model_validator(mode="after")
    def _a_client_prefix(self) -> PathMapEntry:
        if self.windows is None and self.macos is None:
            raise ValueError("give the prefix clients use: windows, macos or both")
        if self.macos == "/":
            raise ValueError("macos: '/' would map every path; name the share's folder")
        return self

    def client_prefixes(self) -> list[str]:
        """This entry's client prefixes, as compared: Windows ones lower-cased, with `\\`."""
        return [prefix for prefix in (self.windows, self.macos) if prefix is not None]


def _windows_key(prefix: str) -> str:
    """A Windows prefix in one spelling: backslashes, single ones past a share's leading two,
    lower case, no trailing separator."""
    text = prefix.replace("/", "\\")
    lead = "\\\\" if text.startswith("\\\\") else ""
    return lead + re.sub(r"\\+", r"\\", text[len(lead):]).rstrip("\\").lower()


def check_entries(entries: Iterable[PathMapEntry]) -> None:
    """Refuse two entries that give the same client prefix: which one wins would be a guess."""
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        for prefix in entry.client_prefixes():
            if prefix in seen:
                raise ValueError(f"entries {seen[prefix]} and {index} both give the client "
                                 f"prefix {prefix!r} (Windows prefixes compared in any case)")
            seen[prefix] = index


@dataclass(frozen=True)
class _Rule:
    pattern: re.Pattern[str]
    target: str
    windows: bool
    length: int

    def join(self, rest: str) -> str:
        joined = self.target.rstrip("/") + rest
        return joined or "/"


@dataclass(frozen=True)
class MappedTask:
    """A task's argv, working directory and environment as the node sees them."""

    command: list[str]
    cwd: str | None
    env: dict[str, str]
    changed_env: tuple[str, ...]

    def log_line(self) -> str:
        """What the task's log says before its output, so its page shows what really ran."""
        parts = [f"argv {shlex.join(self.command)}"]
        if self.cwd is not None:
            parts.append(f"cwd {self.cwd}")
        parts += [f"{name}={self.env[name]}" for name in self.changed_env]
        return "paths mapped for this node: " + "; ".join(parts)


class PathMap:
    """The farm's path map, ready to apply (no entries: every text stays as it is)."""

    def __init__(self, entries: Iterable[PathMapEntry] = ()) -> None:
        rules = []
        for entry in entries:
            if entry.windows is not None:
                share = entry.windows.startswith("\\\\")
                parts = (entry.windows[2:] if share else entry.windows).split("\\")
                pattern = (r"[\\/]{2}" if share else "") + r"[\\/]+".join(map(re.escape, parts))
                rules.append(_Rule(re.compile(f"(?i:{pattern})"), entry.linux, True,
                                   len(entry.windows)))
            if entry.macos is not None:
                rules.append(_Rule(re.compile(re.escape(entry.macos)), entry.linux, False,
                                   len(entry.macos)))
        self._rules = sorted(rules, key=lambda rule: -rule.length)
        self._starts = (re.compile(_NAME_BEFORE + "(?:" + "|".join(
            rule.pattern.pattern for rule in self._rules) + ")") if self._rules else None)

    def __bool__(self) -> bool:
        return bool(self._rules)

    def map_text(self, text: str, shell: bool = False) -> str:
        """`text` with every client path in it mapped (`shell`: it is a shell command)."""
        if self._starts is None:
            return text
        out, pos = [], 0
        while (hit := self._next(text, pos, len(text), shell)) is not None:
            start, end, rule = hit
            out.append(text[pos:start])
            stop = end
            if rule.windows:
                quote = text[start - 1] if start and text[start - 1] in "\"'" else None
                stop = _path_end(text, end, shell, quote)
                following = self._next(text, end, stop, shell)
                stop = following[0] if following is not None else stop
            out.append(rule.join(text[end:stop].replace("\\", "/")))
            pos = stop
        out.append(text[pos:])
        return "".join(out)

    def _next(self, text: str, pos: int, limit: int, shell: bool
              ) -> tuple[int, int, _Rule] | None:
        """The first client prefix that starts in text[pos:limit] at a boundary: where it starts
        and ends, and its rule (the longest whose end is a boundary too)."""
        assert self._starts is not None
        while (found := self._starts.search(text, pos, limit)) is not None:
            start = found.start()
            quote = text[start - 1] if start and text[start - 1] in "\"'" else None
            for rule in self._rules:
                match = rule.pattern.match(text, start)
                if match is not None and _boundary(text, match.end(), rule.windows, shell, quote):
                    return start, match.end(), rule
            pos = start + 1
        return None

    def map_task(self, command: list[str], cwd: str | None, env: Mapping[str, str],
                 shell: bool = False) -> MappedTask | None:
        """A task's argv (a shell command when `shell`), cwd and env mapped; None when the map
        changes none of them."""
        mapped_command = [self.map_text(item, shell) for item in command]
        mapped_cwd = None if cwd is None else self.map_text(cwd)
        mapped_env = {name: self.map_text(value) for name, value in env.items()}
        changed_env = tuple(name for name in env if mapped_env[name] != env[name])
        if mapped_command == command and mapped_cwd == cwd and not changed_env:
            return None
        return MappedTask(mapped_command, mapped_cwd, mapped_env, changed_env)


def _ends(shell: bool, quote: str | None) -> frozenset[str]:
    if quote is not None:
        return _ENDS | {quote}  # inside quotes a space is part of the name, also in a shell
    return _SHELL_ENDS if shell else _ENDS


def _boundary(text: str, end: int, windows: bool, shell: bool, quote: str | None) -> bool:
    """Whether a prefix ending at `end` ends a path component there."""
    if end == len(text):
        return True
    char = text[end]
    return char == "/" or (windows and char == "\\") or char == ":" or char in _ends(shell, quote)


def _path_end(text: str, start: int, shell: bool, quote: str | None) -> int:
    """Where the rest of a Windows path that goes on at `start` ends."""
    ends = _ends(shell, quote)
    for index in range(start, len(text)):
        if text[index] in ends:
            return index
    return len(text)
