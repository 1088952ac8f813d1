"""Namespaces, credentials and the mount view of the sandbox (standard library only; loaded by path by
sandbox_launcher.py, which runs outside the package with ``python -I -S``).

``enter_namespaces`` moves the calling process (the launcher) into new user, mount, network, IPC, UTS, cgroup
and PID namespaces (the PID namespace takes effect for its children) as root of the user namespace, mapped
to an unprivileged uid outside: as root, ``sandbox_uid`` without supplementary groups (a forked helper that
stays outside writes the map); as another user, that user. ``build_root`` (run by init, PID 1 of the new
PID namespace) builds the program's filesystem and pivots into it:

  /                  tmpfs, 1 MiB, read-only after the pivot
  /usr /bin /lib*    read-only binds of the host's (or symlinks, as on the host), nosuid, nodev
  <python prefix>    read-only bind of the interpreter's installation (base prefix), same path
  */site-packages, */dist-packages, hide_paths   covered by an empty read-only tmpfs (a file: by /dev/null)
  /dev               null zero full random urandom (binds), fd -> /proc/self/fd
  /proc              a new procfs of the PID namespace (skipped where the host's /proc is partly masked)
  /tmp               tmpfs of ``tmpfs_bytes`` / ``tmpfs_inodes``: the program's cwd, HOME and TMPDIR
"""

from __future__ import annotations

import ctypes
import glob
import os
import signal
import sys

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x2000000, 0x4000000, 0x8000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
PR_SET_PDEATHSIG = 1
PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41}  # system call numbers (no C library wrapper)
# Mount point of the new root in the private mount namespace (the host's directory is untouched).
NEWROOT = next((d for d in ("/tmp", "/mnt", "/var/tmp", "/opt") if os.path.isdir(d) and not os.path.islink(d)), "/tmp")
DEVICES = ("null", "zero", "full", "random", "urandom")


class SetupError(Exception):
    pass


def check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)}")


def mount(src, target, fstype, flags, data=None) -> None:
    enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
    check(libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def prctl(option: int, arg: int = 0) -> None:
    check(libc.prctl(option, arg, 0, 0, 0), f"prctl({option})")


def die_with_parent(expected_ppid: int) -> None:
    """SIGKILL when the parent dies; re-armed after every credential change (which clears it)."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != expected_ppid:
        os._exit(3)


def nproc_counted_per_namespace() -> bool:
    """RLIMIT_NPROC counts the processes of a uid per user namespace since Linux 5.14 (before: host-wide)."""
    major, minor = (os.uname().release.split(".") + ["0"])[:2]
    digits = "".join(c for c in minor if c.isdigit()) or "0"
    return (int(major), int(digits)) >= (5, 14)


def write_file(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def bind_sources(cfg: dict) -> tuple[list, list, list]:
    """(binds, links, hides): what the mount view holds, resolved before the namespaces are entered."""
    binds, links = [], []
    for name in ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = "/" + name
        if os.path.islink(path):
            links.append((os.readlink(path), path))
        elif os.path.isdir(path):
            binds.append(path)
    exe = os.path.realpath(sys.executable)
    for path in (os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix), os.path.dirname(exe)):
        if not any(path == b or path.startswith(b.rstrip("/") + "/") for b in binds):
            binds.append(path)
    prefixes = {"/usr", "/usr/local", os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)}
    patterns = [os.path.join(p, "lib", "python3*", "*-packages") for p in sorted(prefixes)]
    hides = sorted({os.path.realpath(p) for pat in patterns for p in glob.glob(pat)} | set(cfg["hide_paths"]))
    hides = [h for h in hides if os.path.exists(h) and any(h.startswith(b.rstrip("/") + "/") for b in binds)]
    return binds, links, hides


def map_ids(root: bool, helper: tuple | None, outer_uid: int, outer_gid: int) -> None:
    if root:  # a helper outside the namespace (CAP_SETUID there) maps us to the unprivileged uid
        pid, go_w = helper
        os.write(go_w, b"g")
        os.close(go_w)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SetupError(f"writing the uid map failed (helper exit {os.waitstatus_to_exitcode(status)})")
    else:
        write_file("/proc/self/setgroups", "deny")
        write_file("/proc/self/uid_map", f"0 {outer_uid} 1")
        write_file("/proc/self/gid_map", f"0 {outer_gid} 1")


def id_map_helper(target: int, uid: int) -> tuple[int, int]:
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            die_with_parent(target)
            os.close(go_w)
            if os.read(go_r, 1) != b"g":
                os._exit(1)
            write_file(f"/proc/{target}/setgroups", "deny")
            write_file(f"/proc/{target}/uid_map", f"0 {uid} 1")
            write_file(f"/proc/{target}/gid_map", f"0 {uid} 1")
            os._exit(0)
        except BaseException:
            os._exit(1)
    os.close(go_r)
    return pid, go_w


def remount_flags(path: str, extra: int) -> int:
    """Flags for a bind remount that keep the source's locked noexec/nodev/nosuid (required in a user ns)."""
    f = os.statvfs(path).f_flag
    keep = (MS_NOEXEC if f & os.ST_NOEXEC else 0) | (MS_NODEV if f & os.ST_NODEV else 0)
    return MS_REMOUNT | MS_BIND | MS_NOSUID | keep | extra


def build_root(cfg: dict, binds: list, links: list, hides: list, fds: dict) -> dict:
    """Init, before the pivot: the new root under NEWROOT. Returns what is active (for the verdict)."""
    lim = cfg["limits"]
    mount("tmpfs", NEWROOT, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=4096,mode=0755")
    os.mkdir(NEWROOT + "/tmp")  # first, so that binds of paths under /tmp stay visible (read-only) inside
    mount("tmpfs", NEWROOT + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
          f"size={int(lim['tmpfs_bytes'])},nr_inodes={int(lim['tmpfs_inodes'])},mode=0700")
    for target, path in links:
        os.makedirs(os.path.dirname(NEWROOT + path), exist_ok=True)
        os.symlink(target, NEWROOT + path)
    for path in binds:
        dst = NEWROOT + path
        os.makedirs(dst, exist_ok=True)
        try:
            mount(f"/proc/self/fd/{fds[path]}", dst, None, MS_BIND)
        except SetupError:  # locked mounts beneath it: bind the whole tree
            mount(f"/proc/self/fd/{fds[path]}", dst, None, MS_BIND | MS_REC)
        mount(None, dst, None, remount_flags(dst, MS_RDONLY | MS_NODEV))
    for path in hides:
        if os.path.isdir(NEWROOT + path):
            mount("tmpfs", NEWROOT + path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k,nr_inodes=2,mode=0555")
        else:
            mount(f"/proc/self/fd/{fds['/dev/null']}", NEWROOT + path, None, MS_BIND)  # a file: empty
    os.makedirs(NEWROOT + "/dev")
    for name in DEVICES:
        dst = f"{NEWROOT}/dev/{name}"
        os.close(os.open(dst, os.O_CREAT | os.O_WRONLY, 0o666))
        mount(f"/proc/self/fd/{fds['/dev/' + name]}", dst, None, MS_BIND)
        mount(None, dst, None, remount_flags(dst, MS_NOEXEC))
    os.symlink("/proc/self/fd", NEWROOT + "/dev/fd")
    os.mkdir(NEWROOT + "/proc")
    try:  # fails where the host's /proc has masked parts (some containers): then the program has no /proc
        mount("proc", NEWROOT + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        has_proc = True
    except SetupError:
        has_proc = False
    os.chdir(NEWROOT)
    if os.uname().machine not in PIVOT_ROOT:
        raise SetupError(f"pivot_root: system call number unknown on {os.uname().machine}")
    check(libc.syscall(PIVOT_ROOT[os.uname().machine], b".", b"."), "pivot_root")
    check(libc.umount2(b".", 2), "umount old root")  # MNT_DETACH; the old root was stacked on the new one
    os.chdir("/")
    mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    return {"mode": "namespaces", "proc": has_proc}


def enter_namespaces(cfg: dict, evaluator_pid: int) -> tuple[tuple, dict]:
    """Enter the namespaces as their root; returns (plan, fds) for ``build_root``, opened with the original
    credentials (as root, the Python installation may lie in a directory only root can traverse)."""
    root = os.geteuid() == 0
    outer_uid, outer_gid = (cfg["sandbox_uid"],) * 2 if root else (os.getuid(), os.getgid())
    plan = bind_sources(cfg)
    if root:
        os.setgroups([])
    helper = id_map_helper(os.getpid(), cfg["sandbox_uid"]) if root else None
    flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWPID | CLONE_NEWCGROUP
    check(libc.unshare(flags), "unshare (user, mount, net, ipc, uts, pid, cgroup namespaces)")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    fds = {path: os.open(path, os.O_PATH | os.O_CLOEXEC) for path in plan[0]}  # bind sources must be opened
    for name in DEVICES:  # in this mount namespace
        fds["/dev/" + name] = os.open("/dev/" + name, os.O_PATH | os.O_CLOEXEC)
    map_ids(root, helper, outer_uid, outer_gid)
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    die_with_parent(evaluator_pid)  # the uid change cleared it
    return plan, fds
