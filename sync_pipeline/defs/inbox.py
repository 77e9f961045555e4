"""The inbox as `replica_sensor` takes files from it: only what is safe to open, moved out of reach first.

The inbox may be writable by others (that is what makes it an inbox), so a name in it proves nothing:
a symlink can point at another person's replica, a hard link can share its inode, and a file can be
swapped between a check and an open. So a file is taken only when it is a regular file (lstat: never
a link), owned by the service's user, with one link, and it is moved with `os.rename` (same folder
tree, so same filesystem; a rename moves a link itself, never its target) into the private spool
`<inbox>/.spool` (0700) and checked again there, where nobody else can swap it. Only spooled files
are opened. Refused files stay where they are (unsafe ones: moving another user's file is not ours
to do) or go to `<inbox>/rejected/` with a `<name>.reason.txt` (files that were ours to move).
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

SPOOL_FOLDER = ".spool"
REJECTED_FOLDER = "rejected"
# A file modified more recently than this may still be being copied in: it waits for a later tick.
SETTLE_SECONDS = 2.0


class InboxError(Exception):
    """The inbox's own folders are not safe to use (e.g. a spool that is a link or someone else's)."""


@dataclass(frozen=True)
class Refusal:
    name: str
    reason: str
    signature: str  # the lstat signature, so one file is reported once, not on every tick


def lstat_signature(st: os.stat_result) -> str:
    return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"


def unsafe_reason(st: os.stat_result) -> str | None:
    """Why a file with this lstat must not be opened, or None."""
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link, not a replica file (copy the file itself into the inbox)"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid != os.geteuid():
        return f"owned by uid {st.st_uid}, not by the service's user (uid {os.geteuid()}): copy it, do not link it"
    if st.st_nlink != 1:
        return f"has {st.st_nlink} hard links: copy the file instead of linking it"
    return None


def private_folder(folder: Path) -> Path:
    """`folder` as a directory of ours, mode 0700, created if missing; refused if it is anything else."""
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise InboxError(f"{folder} is not a folder of the service's user: remove it and let the sensor create it")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(folder, 0o700)
    return folder


def reject(file: Path, inbox: Path, reason: str) -> Path:
    """Move a file of ours to `rejected/` with its reason beside it."""
    folder = private_folder(inbox / REJECTED_FOLDER)
    target = folder / file.name  # a spool name, unique already
    os.rename(file, target)
    (folder / f"{target.name}.reason.txt").write_text(reason + "\n", encoding="utf-8")
    return target


def take_new_files(inbox: Path, refused_before: dict[str, str]) -> tuple[list[Path], list[Refusal]]:
    """Move every safe new `*.db` file of the inbox into the spool; the refused ones, with the reason.

    `refused_before` (name -> signature) holds the refusals already reported, which are not repeated.
    """
    spool = private_folder(inbox / SPOOL_FOLDER)
    taken: list[Path] = []
    refusals: list[Refusal] = []
    now = time.time()
    for entry in sorted(inbox.iterdir()):
        if entry.name.startswith(".") or not entry.name.endswith(".db"):
            continue
        try:
            st = os.lstat(entry)
        except FileNotFoundError:
            continue  # gone between listing and lstat
        signature = lstat_signature(st)
        reason = unsafe_reason(st)
        if reason is not None:
            if refused_before.get(entry.name) != signature:
                refusals.append(Refusal(entry.name, reason, signature))
            else:
                refusals.append(Refusal(entry.name, "", signature))  # known: remembered, not reported
            continue
        if now - st.st_mtime < SETTLE_SECONDS:
            continue  # may still be being copied: the next tick takes it
        target = spool / f"{uuid.uuid4().hex[:8]}-{entry.name}"
        try:
            os.rename(entry, target)
        except FileNotFoundError:
            continue
        # Checked again where nobody else can swap it: what was renamed may differ from what was checked.
        moved = os.lstat(target)
        reason = unsafe_reason(moved)
        if reason is not None or moved.st_ino != st.st_ino:
            reason = reason or "changed while it was being taken"
            refusals.append(Refusal(entry.name, reason, signature))
            if not stat.S_ISLNK(moved.st_mode) and moved.st_uid == os.geteuid():
                reject(target, inbox, reason)
            else:
                os.rename(target, entry)  # not ours: back where it was, where its owner finds it
            continue
        taken.append(target)
    return taken, refusals


def spooled_files(inbox: Path) -> list[Path]:
    """Replica files in the spool (taken before, possibly by a tick that ended before launching)."""
    spool = inbox / SPOOL_FOLDER
    if not spool.is_dir():
        return []
    return sorted(p for p in spool.iterdir() if p.name.endswith(".db") and stat.S_ISREG(os.lstat(p).st_mode))
