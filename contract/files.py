"""Files written atomically: a reader, or a process resumed after a crash, sees the old file or the new one,
never half of one; and paths as those files record them."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

# mkstemp makes files 0600; the files written here are read by other users too (the service's container runs
# as uid 10001 on a bundle the host exported), so they get the mode open() would give them. Read once, at
# import: os.umask can only be read by setting it, which is not thread-safe later.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: str | Path, content: bytes | str | Callable[[BinaryIO], object]) -> None:
    """Write content (bytes, text as UTF-8, or a function that writes to the open binary file) to a temporary
    file beside path, fsync it, then rename it over path. On any error the temporary file is removed and the
    old file, if any, is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def recorded_path(path: str | Path) -> str:
    """path as the run's files and the bundle's manifest record it: under the user's home directory, written
    "~/..."; any other path (relative, /data/..., a container's /opt/...) as given.

    A published manifest should not reveal a home directory (a user name, how a machine is laid out), yet the
    trainer reads these paths again on the machine that wrote them: a resumed run its data, the evaluation a run's
    data, the export the evaluation's data for its runtime checks. "~" keeps both: the data loaders' expanduser()
    gives the path back there. Paths relative to the run directory would not (the data is rarely inside it, and
    every reader would have to resolve against it), nor would the folder's name alone. Idempotent; files written
    before it hold absolute paths, which still read."""
    home, text = os.path.expanduser("~"), str(path)
    if home in ("~", os.sep) or not os.path.isabs(text):  # no home known, or "/": everything would be "~/..."
        return text
    try:
        return str(Path("~", Path(text).relative_to(home)))
    except ValueError:
        return text
