"""The backend's bearer token file: read bounded, its content and its ownership checked.

A token is one line of printable ASCII without spaces; anything else cannot travel in an
``Authorization`` header and would make every batch fail. The file decides who can present
or learn the agent's credential, so its ownership is checked too:

- refused: a symlink (whoever controls the link chooses which file root reads and sends to
  the network), a file owned by another user or writable by group/others (they can swap in a
  token of their own, and the server's audit trail goes where that token says);
- warned: a file group/others can read (the token is disclosed: rotate it and ``chmod 600``;
  refusing would stop the audit trail without taking the disclosure back).

Messages name the path and never show the token.
"""

from __future__ import annotations

import os
import stat

#: a token file larger than this is not a token
MAX_TOKEN_BYTES = 8192


class TokenError(ValueError):
    """The token file cannot be used; the message says why and how to fix it."""


def check_token_bytes(raw: bytes) -> str:
    """The token in ``raw`` (surrounding whitespace stripped); empty when there is none.

    Raises :class:`TokenError` for content that cannot be sent: non-ASCII bytes, a control
    character or a space inside, more than :data:`MAX_TOKEN_BYTES`.
    """
    if len(raw) > MAX_TOKEN_BYTES:
        raise TokenError(f"larger than {MAX_TOKEN_BYTES} bytes: not a token")
    token = raw.strip(b" \t\r\n")
    for i, b in enumerate(token):
        if b >= 0x80:
            raise TokenError(f"byte {i} of the token is not ASCII (0x{b:02x}); a token is printable ASCII")
        if b <= 0x20 or b == 0x7F:
            what = "a line break" if b in (0x0A, 0x0D) else "a space" if b == 0x20 else f"control character 0x{b:02x}"
            raise TokenError(f"the token holds {what} at byte {i}; a token is one line of printable ASCII")
    return token.decode("ascii")


def check_token_file(path: str) -> list[str]:
    """Refuse (:class:`TokenError`) a token file that others control; return warnings about one they can read."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise TokenError(f"{path}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise TokenError(f"{path} is a symlink: point token_file at the file itself "
                         f"({os.path.realpath(path)})")
    if not stat.S_ISREG(st.st_mode):
        raise TokenError(f"{path} is not a regular file")
    if st.st_uid not in (0, os.geteuid()):
        raise TokenError(f"{path} is owned by uid {st.st_uid}, who can change or read the token: "
                         f"chown root:root {path}")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise TokenError(f"{path} has mode {mode:04o}: other users can change the token: chmod 600 {path}")
    if mode & 0o044:
        return [f"{path} has mode {mode:04o}: other users can read the token; chmod 600 {path} and rotate it"]
    return []


def read_token(path: str) -> str | None:
    """The token in ``path`` (checked, at most :data:`MAX_TOKEN_BYTES` read), or None when it is empty."""
    with open(path, "rb") as f:
        raw = f.read(MAX_TOKEN_BYTES + 1)
    return check_token_bytes(raw) or None
