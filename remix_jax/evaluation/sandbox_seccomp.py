"""A seccomp filter for sandboxed programs: system calls no test needs fail with EPERM (standard library only).

Built as a classic BPF program with ctypes and installed with prctl(PR_SET_SECCOMP) after PR_SET_NO_NEW_PRIVS,
so no library is needed. It is a deny list, kept short and certain: kernel attack surface (bpf, io_uring,
userfaultfd, perf_event_open, keyctl, modules, kexec), other processes' memory and file descriptors (ptrace,
process_vm_*, pidfd_getfd, kcmp), new namespaces (unshare, setns, clone with CLONE_NEW*; clone3 answers ENOSYS
so that the C library falls back to clone, whose flags the filter can read), mounts and the clock. Every
other call is allowed; the namespaces, the read-only mounts and the missing capabilities are the barriers,
this only narrows what a kernel bug could be reached through. Supported: x86_64 and aarch64 (system call
numbers from the kernel's ``unistd_64.h`` and ``asm-generic/unistd.h``); elsewhere ``supported()`` is False
and no filter is installed.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

_DENIED = (  # name: (x86_64, aarch64)
    ("ptrace", 101, 117), ("process_vm_readv", 310, 270), ("process_vm_writev", 311, 271), ("kcmp", 312, 272),
    ("pidfd_getfd", 438, 438), ("bpf", 321, 280), ("perf_event_open", 298, 241), ("userfaultfd", 323, 282),
    ("keyctl", 250, 219), ("add_key", 248, 217), ("request_key", 249, 218), ("kexec_load", 246, 104),
    ("kexec_file_load", 320, 294), ("init_module", 175, 105), ("finit_module", 313, 273),
    ("delete_module", 176, 106), ("mount", 165, 40), ("umount2", 166, 39), ("pivot_root", 155, 41),
    ("chroot", 161, 51), ("unshare", 272, 97), ("setns", 308, 268), ("io_uring_setup", 425, 425),
    ("io_uring_enter", 426, 426), ("io_uring_register", 427, 427), ("open_by_handle_at", 304, 265),
    ("name_to_handle_at", 303, 264), ("acct", 163, 89), ("swapon", 167, 224), ("swapoff", 168, 225),
    ("reboot", 169, 142), ("syslog", 103, 116), ("quotactl", 179, 60), ("fanotify_init", 300, 262),
    ("open_tree", 428, 428), ("move_mount", 429, 429), ("fsopen", 430, 430), ("fsconfig", 431, 431),
    ("fsmount", 432, 432), ("fspick", 433, 433), ("mount_setattr", 442, 442), ("vhangup", 153, 58),
    ("settimeofday", 164, 170), ("clock_settime", 227, 112), ("adjtimex", 159, 171), ("clock_adjtime", 305, 266),
    ("sethostname", 170, 161), ("setdomainname", 171, 162), ("lookup_dcookie", 212, 18),
)
_X86_ONLY = (("iopl", 172), ("ioperm", 173), ("modify_ldt", 154), ("uselib", 134))
_ARCH = {"x86_64": (0xC000003E, 0, 56, 435), "aarch64": (0xC00000B7, 1, 220, 435)}  # audit arch, column, clone(3)
_CLONE_NEW = 0x7E020000  # CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
_X32_BIT = 0x40000000

# Classic BPF opcodes (linux/filter.h) and seccomp return values (linux/seccomp.h).
_LD_W_ABS, _JEQ_K, _JGE_K, _JSET_K, _RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
_RET_ALLOW, _RET_ERRNO, _RET_KILL_PROCESS = 0x7FFF0000, 0x00050000, 0x80000000
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2


def supported() -> bool:
    return os.uname().machine in _ARCH


def program() -> bytes:
    """The filter as packed ``struct sock_filter`` entries for this machine's architecture."""
    arch, col, clone, clone3 = _ARCH[os.uname().machine]
    numbers = [nums[col] for _, *nums in _DENIED]
    if os.uname().machine == "x86_64":
        numbers += [n for _, n in _X86_ONLY]
    eperm, enosys = _RET_ERRNO | errno.EPERM, _RET_ERRNO | errno.ENOSYS
    ins: list[tuple[int, int, int, int]] = []  # (code, jt, jf, k); jumps are relative to the next instruction
    ins.append((_LD_W_ABS, 0, 0, 4))  # seccomp_data.arch
    ins.append((_JEQ_K, 1, 0, arch))
    ins.append((_RET_K, 0, 0, _RET_KILL_PROCESS))  # another ABI (e.g. 32-bit calls): never expected
    ins.append((_LD_W_ABS, 0, 0, 0))  # seccomp_data.nr
    if os.uname().machine == "x86_64":
        ins += [(_JGE_K, 0, 1, _X32_BIT), (_RET_K, 0, 0, eperm)]
    ins += [(_JEQ_K, 0, 1, clone3), (_RET_K, 0, 0, enosys)]
    ins += [(_JEQ_K, 0, 3, clone), (_LD_W_ABS, 0, 0, 16), (_JSET_K, 0, 1, _CLONE_NEW), (_RET_K, 0, 0, eperm)]
    ins.append((_LD_W_ABS, 0, 0, 0))  # reload nr (clone with allowed flags falls through to the list)
    for i, nr in enumerate(numbers):
        ins.append((_JEQ_K, len(numbers) - i, 0, nr))  # to the EPERM return after the ALLOW
    ins += [(_RET_K, 0, 0, _RET_ALLOW), (_RET_K, 0, 0, eperm)]
    return b"".join(struct.pack("=HBBI", *i) for i in ins)


def install() -> None:
    """Set no_new_privs and install the filter on the calling thread (inherited by children and exec)."""
    libc = ctypes.CDLL(None, use_errno=True)
    code = program()
    buf = ctypes.create_string_buffer(code, len(code))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = SockFprog(len(code) // 8, ctypes.addressof(buf))
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")
