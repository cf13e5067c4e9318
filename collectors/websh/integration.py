"""Builds the command line and environment that start a shell with the recorder's hooks.

bash gets ``--rcfile collectors/websh/shell/bashrc`` (which reads the user's usual files first); zsh gets
a private ``ZDOTDIR`` whose files source the user's own and then add the hooks. Any other
shell (sh, dash, ksh …) and any explicit command runs as it is: the recorder falls back to the
lines typed at the PTY. Nothing in the user's home is touched.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

HOOKED_SHELLS = ("bash", "zsh")
#: programs whose typed lines are commands (a nested shell, or one behind sudo / su)
SHELL_NAMES = frozenset(
    {"sh", "dash", "bash", "zsh", "ksh", "ksh93", "mksh", "pdksh", "ash", "busybox", "fish",
     "tcsh", "csh", "rbash", "yash", "sudo", "su", "sudo-rs", "doas", "runuser"}
)


def new_nonce() -> str:
    """A fresh per-session secret that the hooks put in every mark."""
    return secrets.token_hex(12)


def shell_file(name: str) -> Path:
    """The path of a packaged shell integration file (``collectors/websh/shell/NAME``)."""
    return Path(str(resources.files("collectors.websh").joinpath("shell", name)))


@dataclass
class ShellLaunch:
    """What to exec for the session's shell, and what to clean up after it."""

    path: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    hooked: bool = False
    tempdir: str | None = None

    def cleanup(self) -> None:
        if self.tempdir:
            shutil.rmtree(self.tempdir, ignore_errors=True)
            self.tempdir = None


def _zdotdir(owner_uid: int | None) -> str:
    d = tempfile.mkdtemp(prefix="alpacon-websh-zsh-")
    for name in ("zshenv", "zprofile", "zshrc"):
        shutil.copyfile(shell_file(name), os.path.join(d, "." + name))
        os.chmod(os.path.join(d, "." + name), 0o644)
    os.chmod(d, 0o755)
    if owner_uid is not None and os.geteuid() == 0:
        os.chown(d, 0, 0)
    return d


def plan_shell(
    shell: str,
    args: list[str],
    *,
    nonce: str,
    login: bool = True,
    env: dict[str, str] | None = None,
    owner_uid: int | None = None,
) -> ShellLaunch:
    """The launch of ``shell`` (with ``args`` when the caller gave a command)."""
    env = env or {}
    name = os.path.basename(shell)
    if args or name not in HOOKED_SHELLS:
        argv0 = ("-" + name) if (login and not args) else name
        return ShellLaunch(shell, [argv0, *args])
    if name == "bash":
        rc = shell_file("bashrc")
        return ShellLaunch(
            shell,
            ["bash", "--rcfile", str(rc), "-i"],
            {"ALPACON_WEBSH_NONCE": nonce, "ALPACON_WEBSH_LOGIN": "1" if login else "0"},
            hooked=True,
        )
    zd = _zdotdir(owner_uid)
    extra = {"ALPACON_WEBSH_NONCE": nonce, "ZDOTDIR": zd}
    if "ZDOTDIR" in env:
        extra["ALPACON_WEBSH_USER_ZDOTDIR"] = env["ZDOTDIR"]
    return ShellLaunch(shell, ["-zsh" if login else "zsh", "-i"], extra, hooked=True, tempdir=zd)
