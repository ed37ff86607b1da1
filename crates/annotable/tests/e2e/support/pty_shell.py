"""Drives `annotable query` through a pseudo-terminal, as a person at a terminal would.

Usage: pty_shell.py BINARY WORKDIR HISTORY < lines.json

Starts BINARY `query` on a new pty (200x50), waits for the shell's prompt before typing each
line of the JSON list (`<ctrl-c>` instead types Ctrl-C two seconds after the line before),
answers cursor-position queries, and after the last line waits for the
process to exit. Prints the screen output with terminal escapes removed, then a last line
`exit: N`.
"""

import fcntl
import json
import os
import pty
import re
import select
import struct
import sys
import termios
import time

PROMPTS = ("annotable=> ", "annotable-> ")
STEP_TIMEOUT = 120.0


def main():
    binary, workdir, history = sys.argv[1:4]
    lines = json.load(sys.stdin)
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(workdir)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANNOTABLE_")}
        env["ANNOTABLE_HISTORY"] = history
        env["TERM"] = "xterm"
        os.execve(binary, [binary, "query"], env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    out = bytearray()

    def pump(deadline):
        """Reads what is there until the deadline; False once the child has gone."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            ready, _, _ = select.select([fd], [], [], min(left, 0.2))
            if not ready:
                return True
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return False
            if not chunk:
                return False
            if b"\x1b[6n" in chunk:
                os.write(fd, b"\x1b[1;1R")
            out.extend(chunk)

    def wait_prompt(start):
        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline:
            text = out[start:].decode("utf-8", "replace")
            if any(p in text for p in PROMPTS):
                return True
            if not pump(time.monotonic() + 0.2):
                return False
        raise SystemExit("no prompt after %.0f s; screen so far:\n%s" % (STEP_TIMEOUT, clean(out)))

    start = 0
    for line in lines:
        if line == "<ctrl-c>":
            # Interrupt whatever runs now (no prompt to wait for).
            pump(time.monotonic() + 2.0)
            os.write(fd, b"\x03")
            continue
        if not wait_prompt(start):
            break
        start = len(out)
        os.write(fd, line.encode() + b"\r")
    # Let the last command finish and the process exit.
    deadline = time.monotonic() + STEP_TIMEOUT
    status = None
    while time.monotonic() < deadline:
        if not pump(time.monotonic() + 0.2):
            pass
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            pump(time.monotonic() + 0.2)
            break
    else:
        os.kill(pid, 9)
        raise SystemExit("the shell did not exit; screen:\n%s" % clean(out))
    print(clean(out))
    print("exit: %d" % os.waitstatus_to_exitcode(status))


def clean(raw):
    text = raw.decode("utf-8", "replace")
    text = re.sub(r"\x1b\[[0-9;?]*[ -/]*[@-~]", "", text)
    text = re.sub(r"\x1b[()][0-9A-Za-z]|\x1b[=>]", "", text)
    return text.replace("\r\n", "\n").replace("\r", "\n")


if __name__ == "__main__":
    main()
