"""The recorder's stream parsers: OSC marks, typed lines, echo checks and the command tracker."""

from __future__ import annotations

import base64
import os
import random

import pytest

from collectors.websh.inputline import EchoCheck, LineEditor, TypedLine, visible_text
from collectors.websh.marks import Mark, MarkParser, alt_screen_change
from collectors.websh.tracker import CommandRecord, CommandTracker, cap_command

NONCE = b"abc123"


def mark(kind: str, *fields: bytes, nonce: bytes = NONCE) -> bytes:
    body = b";".join([kind.encode(), *fields])
    return b"\x1b]6973;" + nonce + b";" + body + b"\x07"


def start(text: str, cwd: str = "/w", kind: str = "T") -> bytes:
    return mark(kind, base64.b64encode(text.encode() + b"\0" + cwd.encode()))


def feed_all(p: MarkParser, chunks: list[bytes]) -> tuple[bytes, list[Mark]]:
    out, marks = b"", []
    for c in chunks:
        o, m = p.feed(c)
        out += o
        marks += m
    return out + p.flush(), marks


class TestMarkParser:
    def test_plain_output_passes_as_the_same_object(self) -> None:
        """With no ESC ] in a chunk, the chunk itself is returned (no copy, no per-byte work)."""
        data = b"hello world\r\n" * 100
        out, marks = MarkParser(NONCE).feed(data)
        assert out is data and marks == []

    def test_mark_removed_and_parsed(self) -> None:
        """A mark is cut out of the output and parsed into its type and fields."""
        out, marks = MarkParser(NONCE).feed(b"a" + mark("D", b"130", b"17") + b"b")
        assert out == b"ab"
        assert marks[0].type == "D" and marks[0].int(0) == 130 and marks[0].int(1) == 17

    def test_split_at_every_byte(self) -> None:
        """A mark split across reads at any byte boundary is still found and removed."""
        stream = b"x\x1b[31mred\x1b[0m" + start("ls -l | wc\nnext") + b"out\x1b" + mark("D", b"0") + b"\x1b"
        for step in (1, 2, 3, 5, 7):
            chunks = [stream[i : i + step] for i in range(0, len(stream), step)]
            out, marks = feed_all(MarkParser(NONCE), chunks)
            assert out == b"x\x1b[31mred\x1b[0mout\x1b\x1b"  # lone ESCs are not marks
            assert [m.type for m in marks] == ["T", "D"]
            assert marks[0].b64(0) == b"ls -l | wc\nnext\0/w"

    def test_other_nonce_and_other_osc_pass_through(self) -> None:
        """Marks with another nonce, window titles and hyperlinks reach the screen untouched."""
        data = mark("D", b"0", nonce=b"forged") + b"\x1b]0;title\x07\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\"
        out, marks = feed_all(MarkParser(NONCE), [data[:9], data[9:]])
        assert out == data and marks == []

    def test_garbage_never_crashes_and_keeps_bytes(self) -> None:
        """Random bytes (ESC ] included) come out unchanged when they hold no mark."""
        p = MarkParser(NONCE)
        for _ in range(200):
            data = os.urandom(512).replace(b"\x07", b"") + b"\x1b]69"
            out, marks = p.feed(data)
            out += p.feed(b"Z")[0]
            assert out == data + b"Z" and marks == []

    def test_hostile_marks_are_dropped_without_effect(self) -> None:
        """Marks with our nonce but a bad type or bad base64 vanish and yield nothing usable."""
        out, marks = MarkParser(NONCE).feed(mark("ZZ", b"1") + mark("T", b"!!!notbase64") + b"ok")
        assert out == b"ok"
        assert [m.type for m in marks] == ["T"] and marks[0].b64(0) is None and marks[0].int(5) is None

    def test_oversize_mark_is_capped(self) -> None:
        """A mark longer than the cap is consumed (never shown) and flagged as overflowed."""
        p = MarkParser(NONCE, max_mark_bytes=1000)
        out, marks = feed_all(p, [b"\x1b]6973;abc123;T;", b"A" * 600, b"A" * 600, b"\x07after"])
        assert out == b"after" and marks[0].overflow and marks[0].type == "T" and p.pending == 0

    def test_bad_nonce_is_rejected(self) -> None:
        """The nonce must be plain letters and digits."""
        with pytest.raises(ValueError):
            MarkParser(b"a;b")

    def test_alt_screen(self) -> None:
        """Switching to and from the alternate screen is noticed; the last switch wins."""
        assert alt_screen_change(b"x\x1b[?1049hvim") is True
        assert alt_screen_change(b"\x1b[?1049h..\x1b[?1049l") is False
        assert alt_screen_change(b"\x1b[?2004h") is None and alt_screen_change(b"plain") is None


class TestLineEditor:
    def test_editing_keys(self) -> None:
        """Backspace, Ctrl-U, Ctrl-W and Ctrl-C are applied like a terminal does."""
        e = LineEditor()
        lines = e.feed(b"echo abc\x7f\x7fX\rjunk\x15ls\rrm one two\x17three\rhalf\x03\r")
        assert [x.text for x in lines] == ["echo aX", "ls", "rm one three", ""]

    def test_escape_sequences_are_skipped_and_paste_kept(self) -> None:
        """Arrow keys and Alt-keys vanish; bracketed paste keeps its newlines inside one line."""
        e = LineEditor()
        lines = e.feed(b"ab\x1b[D\x1bOAc\x1bf\r\x1b[200~one\ntwo\x1b[201~\r")
        assert [x.text for x in lines] == ["abc", "one\ntwo"]

    def test_split_escape_and_utf8(self) -> None:
        """An escape sequence or a UTF-8 character split across reads is handled."""
        e = LineEditor()
        assert e.feed(b"\xc3") == [] and e.feed(b"\xa9\x1b[") == []
        assert e.feed(b"A\x7fx\r")[0].text == "x"  # arrow skipped, backspace took the whole é
        e = LineEditor()
        e.feed(b"h\xc3")
        e.feed(b"\xa9\x7f")
        assert e.feed(b"!\r")[0].text == "h!"

    def test_secret_lines_are_dropped(self) -> None:
        """A line any key of which was typed at a no-echo prompt never comes out."""
        e = LineEditor()
        e.feed(b"hunt", secret=False)
        assert e.feed(b"er2\r", secret=True) == []
        assert [x.text for x in e.feed(b"next\r")] == ["next"]

    def test_oversize_line_is_capped(self) -> None:
        """A huge line is cut at the cap and flagged."""
        e = LineEditor(max_line_bytes=100)
        (line,) = e.feed(b"x" * 10_000 + b"\r")
        assert len(line.text) == 100 and line.truncated

    def test_garbage_input(self) -> None:
        """Random bytes never crash the editor, and what comes out are capped lines without terminal
        control bytes, no more of them than line ends were fed."""
        rng = random.Random(20261201)
        e = LineEditor(max_line_bytes=64)
        lines: list[TypedLine] = []
        ends = 0
        for _ in range(200):
            chunk = rng.randbytes(256)
            ends += chunk.count(b"\r") + chunk.count(b"\n")
            lines += e.feed(chunk)
        assert 0 < len(lines) <= ends
        for line in lines:
            # each kept byte becomes at most 4 characters ("\\xff" for a byte that is not UTF-8)
            assert len(line.text) <= 4 * 64
            assert not any(c in "\r\x1b\x7f" or (ord(c) < 0x20 and c not in "\t\n") for c in line.text), line
        assert any(line.truncated for line in lines)


class TestEchoCheck:
    def test_line_echoed_with_edits(self) -> None:
        """A line whose echo (with backspaces and redraw escapes) ends a screen line counts as shown."""
        ec = EchoCheck()
        since = ec.offset
        ec.add(b"$ ls -lx\x08\x1b[K\x08 \x08a\r\n")
        assert ec.shown("ls -a", since)
        assert visible_text(b"ab\x08c\x1b[31m!\x1b]0;t\x07") == "ac!"

    def test_password_without_echo_is_not_shown(self) -> None:
        """Input that produced no echo is not confirmed, even if the prompt holds similar text."""
        ec = EchoCheck()
        since = ec.offset
        ec.add(b"\r\n[sudo] password for root: \r\n")
        assert not ec.shown("hunter2", since)
        assert ec.shown("echo hi", since) is False
        ec.add(b"$ echo hi\r\nhi\r\n")
        assert ec.shown("echo hi", since, index=2)


class TestCommandTracker:
    def _tracker(self, **kw: object) -> tuple[CommandTracker, list[CommandRecord]]:
        got: list[CommandRecord] = []
        return CommandTracker(got.append, **kw), got  # type: ignore[arg-type]

    def _m(self, data: bytes) -> list[Mark]:
        return MarkParser(NONCE).feed(data)[1]

    def test_start_done_is_one_record(self) -> None:
        """A start mark and a done mark make one record with exit code, cwd and duration."""
        t, got = self._tracker()
        for m in self._m(start("make all", "/src")):
            t.mark(m, 100.0)
        for m in self._m(mark("D", b"2")):
            t.mark(m, 100.25)
        assert [(r.seq, r.command, r.exit_code, r.cwd, r.duration_ms, r.source) for r in got] == [
            (1, "make all", 2, "/src", 250, "shell")]

    def test_malformed_numbers_in_done_mark(self) -> None:
        """A done mark whose status or history number is not a plain integer ends the command
        without an exit code instead of raising out of the relay loop."""
        t, got = self._tracker()
        for i, bad in enumerate((b"--5", b"-", b"5-", b"+5", b"1_000", "\u0663".encode(), b"-" * 30)):
            for m in self._m(start(f"cmd{i}") + mark("D", bad, bad)):
                t.mark(m, float(i))
        assert [(r.command, r.exit_code) for r in got] == [(f"cmd{i}", None) for i in range(7)]
        for m in self._m(start("ok") + mark("D", b"-1")):
            t.mark(m, 9.0)
        assert got[-1].exit_code == -1

    def test_prompt_without_command_is_no_record(self) -> None:
        """Done marks alone (empty Enter, Ctrl-C, PROMPT_COMMAND) give no record."""
        t, got = self._tracker()
        for _ in range(3):
            for m in self._m(mark("D", b"130")):
                t.mark(m, 1.0)
        assert got == []

    def test_bash_history_numbers(self) -> None:
        """A history line not newer than the last one is not trusted; typed lines are used instead."""
        t, got = self._tracker()
        for m in self._m(mark("D", b"0", b"5")):
            t.mark(m, 0.0)
        t.line("echo typed", 0.5, top_level=True, cwd="/t")
        for m in self._m(start("    4  old entry", kind="S") + mark("D", b"0", b"5")):
            t.mark(m, 1.0)
        for m in self._m(start("    5  echo new", kind="S") + mark("D", b"0", b"6")):
            t.mark(m, 2.0)
        assert [(r.command, r.source) for r in got] == [("echo typed", "input"), ("echo new", "shell")]

    def test_cap(self) -> None:
        """A command over the cap is cut with a marker and flagged."""
        text, cut = cap_command("x" * 100_000, 1000)
        assert cut and text.startswith("x" * 1000) and text.endswith("[truncated: 100000 bytes]")
        assert cap_command("short") == ("short", False)

    def test_exit_ends_open_command_with_shell_status(self) -> None:
        """The open command when the shell ends (``exit``) gets the shell's status."""
        t, got = self._tracker()
        for m in self._m(start("exit 4")):
            t.mark(m, 1.0)
        t.close(1.5, 4)
        assert [(r.command, r.exit_code) for r in got] == [("exit 4", 4)]

    def test_nested_shell_lines(self) -> None:
        """Lines typed to a nested shell are records of their own, source input."""
        t, got = self._tracker()
        t.line("  ", 1.0, top_level=False, cwd="/")
        t.line("# comment", 1.0, top_level=False, cwd="/")
        t.line("whoami", 1.0, top_level=False, cwd="/root")
        assert [(r.command, r.cwd, r.source, r.exit_code) for r in got] == [("whoami", "/root", "input", None)]
