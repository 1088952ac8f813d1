"""What every command does with an expected failure: one short message with the fix, exit status 2.

An expected failure is the user's to fix: an unknown config key or a bad flag, an invalid config, a missing or
unreadable file, a folder that cannot be written, bad data, a model that cannot be loaded. It ends as

    error: <what is wrong, naming the key / file / line>
    hint: <how to fix it>                       (only where there is more to say than the message)

on stderr with exit status 2 and no traceback. Anything else is a bug and keeps its traceback. ``--debug`` (or
the environment variable ``REMIX_DEBUG=1``) shows the traceback of expected failures too.

An absl program (``--config`` from ml_collections) uses ``run`` in place of ``absl.app.run``; it also turns
errors raised while flags are parsed (an unknown ``--config.KEY``, with ml_collections' "did you mean" answer)
into the short form::

    def main(argv): ...

    if __name__ == "__main__":
        cli.define_config_flag()     # instead of config_flags.DEFINE_config_file("config", ...)
        cli.run(main)

Any other program wraps its body::

    sys.exit(cli.guard(lambda: main(argv), argv))   # returns main's status, or 2 after an expected failure
"""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Callable, Sequence

EXIT_USER_ERROR = 2

# Expected failures by module and class name: looked up only in modules already imported (an exception of
# a module never imported cannot have been raised), so this module imports nothing of the package.
_EXPECTED = (
    ("remix_jax.cli", "UserError"),
    ("remix_jax.run_config", "ConfigError"),
    ("remix_jax.evaluation.eval_config", "EvalConfigError"),
    ("remix_jax.data.sources", "DataError"),
    ("remix_jax.models.model_config", "ModelLoadError"),
    ("remix_jax.adapters.adapter_config", "AdapterConfigError"),
    ("remix_jax.adapters.peft_io", "PeftFormatError"),
    ("remix_jax.sweep", "SweepError"),
    ("remix_jax.training.loop", "TrainingDivergedError"),
    ("remix_jax.rundir", "RunConfigError"),
    ("remix_jax.training.checkpointing", "CheckpointDamagedError"),
    ("remix_jax.training.checkpointing", "NoIntactCheckpointError"),
    ("remix_jax.evaluation.sandbox", "SandboxUnavailableError"),
    ("remix_jax.models.assets", "AssetError"),
)
_WRITE_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)
_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_CONFIG_FLAGS: list[str] = []  # names of the flags defined by define_config_flag


class UserError(Exception):
    """An expected failure that no more specific class describes; ``hint`` says how to fix it."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    """``--debug`` on the command line (the last of --debug / --nodebug wins) or REMIX_DEBUG=1."""
    on = os.environ.get("REMIX_DEBUG", "").lower() in ("1", "true", "yes")
    for arg in sys.argv if argv is None else argv:
        if arg == "--":
            break
        if arg in ("--debug", "-debug") or re.fullmatch(r"--?debug=(1|true|True|yes)", arg):
            on = True
        elif arg in ("--nodebug", "-nodebug") or re.fullmatch(r"--?debug=(0|false|False|no)", arg):
            on = False
    return on


def program(argv: Sequence[str] | None = None) -> str:
    """How the user called this program: "python -m remix_jax.main" (or argv[0])."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return f"python -m {spec.name.removesuffix('.__main__')}"
    argv = sys.argv if argv is None else argv
    return os.path.basename(argv[0]) if argv else "the command"


def _expected_types() -> tuple[type, ...]:
    main = sys.modules.get("__main__")
    main_name = getattr(getattr(main, "__spec__", None), "name", None)  # python -m remix_jax.sweep: __main__
    out = []
    for module, name in _EXPECTED:
        for m in (sys.modules.get(module), main if main_name == module else None):
            cls = getattr(m, name, None)
            if isinstance(cls, type):
                out.append(cls)
    return tuple(out)


def _one_line_config_message(message: str) -> str:
    """"invalid config:\\n  key: problem" with a single problem -> "invalid config: key: problem"."""
    head, _, rest = message.partition("\n")
    lines = [x.strip() for x in rest.splitlines() if x.strip()]
    if head.endswith(":") and len(lines) == 1:
        return f"{head} {lines[0]}"
    return message


def describe_os_error(e: OSError) -> tuple[str, str] | None:
    """(message, hint) for the file-system failures a user causes and can fix; None for any other."""
    name = e.filename if e.filename is not None else ""
    what = f"{name}: {e.strerror}" if name else (e.strerror or str(e))
    if isinstance(e, FileNotFoundError):
        return what, ""
    if isinstance(e, (NotADirectoryError, IsADirectoryError, FileExistsError)):
        return what, "the path is used for something else: choose another one"
    if isinstance(e, PermissionError) or e.errno in _WRITE_ERRNOS:
        return (f"cannot write {name}: {e.strerror}" if name else what,
                "choose a folder you can write to (for a training run: another --workdir)")
    if e.errno in _SPACE_ERRNOS:
        return what, "free some disk space or choose a folder on another disk"
    return None


def describe(e: BaseException) -> tuple[str, str] | None:
    """(message, hint) of an expected failure (see the module docstring); None for a bug."""
    if isinstance(e, UserError):
        return str(e), e.hint
    if isinstance(e, _expected_types()):
        return _one_line_config_message(str(e)), getattr(e, "hint", "")
    if isinstance(e, OSError):
        return describe_os_error(e)
    return None


def print_error(message: str, hint: str = "") -> None:
    print(f"error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    sys.stderr.flush()


def guard(fn: Callable[[], int | None], argv: Sequence[str] | None = None) -> int:
    """``fn()``'s exit status; 2 after an expected failure (reported in short), 130 after Ctrl-C. With
    --debug / REMIX_DEBUG=1 expected failures raise as they are."""
    debug = debug_requested(argv)
    try:
        return int(fn() or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        described = describe(e)
        if described is None or debug:
            raise
        print_error(*described)
        return EXIT_USER_ERROR


# ------------------------------------------------------------------------------------------ absl programs


def define_config_flag(name: str = "config", help_string: str = "Config file (configs/NAME.py[:VARIANT]).",
                       lock_config: bool = True):
    """ml_collections' ``DEFINE_config_file`` whose parsing errors ``run`` reports in short."""
    from ml_collections import config_flags

    _CONFIG_FLAGS.append(name)
    return config_flags.DEFINE_config_file(name, None, help_string, lock_config=lock_config)


def define_debug_flag() -> None:
    from absl import flags

    if "debug" not in flags.FLAGS:
        flags.DEFINE_bool("debug", False, "Show the Python traceback of expected failures (also REMIX_DEBUG=1).")


def _override_args(argv: Sequence[str]) -> list[tuple[str, str]]:
    """(flag name, dotted key) of every ``--NAME.KEY=...`` override of a config flag."""
    out = []
    for arg in argv:
        m = re.match(r"^--?(?:no)?([A-Za-z_]\w*)\.([^=]+)", arg)
        if m and m.group(1) in _CONFIG_FLAGS:
            out.append((m.group(1), m.group(2)))
    return out


def _unknown_key_message(e: Exception, argv: Sequence[str]) -> str | None:
    """The short form of ml_collections' error for an override of a key the config lacks."""
    inner = e.args[0] if e.args else ""
    text = str(inner.args[0]) if isinstance(inner, BaseException) and inner.args else str(inner)
    m = re.match(r"\s*'([^']*)'", text)
    if not m:
        return None
    key = m.group(1)
    suggestion = re.search(r'Did you mean "([^"]+)"', text)
    for flag, path in _override_args(argv):
        parts = path.split(".")
        if key in parts:
            i = parts.index(key)
            msg = f"--{flag}.{path}: no such config key {'.'.join(parts[:i + 1])!r}"
            if suggestion:
                fixed = ".".join([*parts[:i], suggestion.group(1), *parts[i + 1:]])
                return f"{msg}; did you mean --{flag}.{fixed}?"
            return msg + " (an override can only set a key the config file defines)"
    return None


def _flags_error_message(e: Exception) -> str:
    """absl's flag errors; a config file's own exception (shown by ml_collections as a whole traceback)
    shortened to its last line."""
    text = str(e)
    if "Traceback (most recent call last)" in text:
        head = text.split("\n", 1)[0].rstrip(":").replace(": Error whilst parsing config file", "")
        lines = [x.strip() for x in text.splitlines() if x.strip()]
        return f"{head.removeprefix('flag ')}: {lines[-1]}"
    return text.removeprefix("flag ")


def _check_config_files(argv: Sequence[str]) -> None:
    """A missing config file (ml_collections reports it only when the config is first used)."""
    for name in _CONFIG_FLAGS:
        for arg in argv:
            m = re.match(rf"^--?{name}=(.*)$", arg)
            if m:
                path = m.group(1).split(":", 1)[0]
                if path and not os.path.isfile(path):
                    raise UserError(f"--{name}={m.group(1)}: no such config file {path!r}",
                                    "config files live in configs/ (e.g. --config=configs/smoke.py)")


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing with every failure reported in short (exit status 2)."""
    from absl import flags

    define_debug_flag()
    debug = debug_requested(argv)
    try:
        _check_config_files(argv)
        return flags.FLAGS(argv)
    except UserError as e:
        if debug:
            raise
        print_error(str(e), e.hint)
    except flags.Error as e:
        if debug:
            raise
        print_error(_flags_error_message(e), f"{program(argv)} --helpshort lists the flags")
    except (AttributeError, KeyError) as e:  # ml_collections: an override of a key the config lacks
        message = _unknown_key_message(e, argv)
        if message is None or debug:
            raise
        print_error(message)
    sys.exit(EXIT_USER_ERROR)


def run(main: Callable[[list[str]], int | None], argv: list[str] | None = None) -> None:
    """``absl.app.run(main)`` with expected failures, in flag parsing or in ``main``, reported in short."""
    from absl import app

    def wrapped(args):
        try:
            return guard(lambda: main(args), sys.argv if argv is None else argv)
        except app.UsageError as e:
            if debug_requested(argv):
                raise
            print_error(str(e), f"{program(argv)} --helpshort lists the flags")
            return EXIT_USER_ERROR

    define_debug_flag()
    app.run(wrapped, argv=argv, flags_parser=parse_flags)
