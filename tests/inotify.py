"""Count file opens under folders with Linux inotify (ctypes, no dependency): it sees every
open, including libsndfile's own C-level ones, from any process."""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

IN_ACCESS, IN_OPEN, IN_ISDIR = 0x001, 0x020, 0x40000000
_EVENT = struct.Struct("iIII")


class Opens:
    """``with Opens(folders) as o: ...; o.files()`` -> names of files opened or read."""

    def __init__(self, folders: list[Path]):
        self.folders = [str(f) for f in folders]
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = -1
        self.dirs: dict[int, str] = {}

    def __enter__(self) -> "Opens":
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        for folder in self.folders:
            wd = self.libc.inotify_add_watch(self.fd, os.fsencode(folder), IN_OPEN | IN_ACCESS)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {folder} failed")
            self.dirs[wd] = folder
        return self

    def files(self) -> list[str]:
        """Files opened or read since the last call (directory listings excluded)."""
        out = []
        while True:
            try:
                buf = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return out
            pos = 0
            while pos < len(buf):
                wd, mask, _cookie, length = _EVENT.unpack_from(buf, pos)
                name = buf[pos + _EVENT.size: pos + _EVENT.size + length].rstrip(b"\0").decode()
                pos += _EVENT.size + length
                if name and not mask & IN_ISDIR:
                    out.append(os.path.join(self.dirs.get(wd, "?"), name))

    def __exit__(self, *exc) -> None:
        os.close(self.fd)
