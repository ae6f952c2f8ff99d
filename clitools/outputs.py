"""Output folders and files that never lose data.

* `prepare_output_dir` runs before any compute: it refuses a folder that already holds files unless the user
  asked to overwrite (or resume), and a folder that cannot be created or written, naming the path.
* `atomic_path` / `atomic_dir` give a temporary name in the destination folder (hidden, with ``.partial`` in
  it and the real extension kept, so writers that pick the format from the extension still work) and rename it
  to the final name only when the block finished without an exception. A killed run leaves only ``.*.partial*``
  files, never a truncated ``cinemagraph.mp4`` or a ``results.json`` that looks complete.
"""

import contextlib
import json
import os
import shutil

from clitools.errors import InputError

PARTIAL_TAG = ".partial-"


def _nearest_existing(path):
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def prepare_output_dir(path, *, overwrite=False, resume=False, flag="--out"):
    """Create output folder `path` (with parents) after checking it can hold new results.

    Refused (InputError naming the path): a file in its place; a parent that is not a writable folder; a
    folder that already holds files, unless `overwrite` (files are replaced one by one as results are
    written; other files are left alone) or `resume` (a training run continues there). Leftover
    ``.partial`` files of a killed run do not count as results. Returns the absolute path.
    """
    if not path:
        raise InputError(f"{flag}: an output folder is required")
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise InputError(f"{path}: exists and is not a folder ({flag} needs a folder)")
        if not os.access(path, os.W_OK | os.X_OK):
            raise InputError(f"{path}: output folder is not writable")
        held = sorted(n for n in os.listdir(path) if PARTIAL_TAG not in n)
        if held and not (overwrite or resume):
            shown = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
            raise InputError(
                f"{path}: output folder already holds files ({shown}); pass --overwrite to replace them"
            )
        return path
    base = _nearest_existing(path)
    if not os.path.isdir(base):
        raise InputError(f"{path}: cannot create the output folder, {base} is not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise InputError(f"{path}: cannot create the output folder, {base} is not writable")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise InputError(f"{path}: cannot create the output folder ({e.strerror or e})") from None
    return path


def partial_name(path):
    """The temporary sibling of `path`: ``dir/.name.partial-PID.ext`` (extension kept)."""
    head, tail = os.path.split(os.path.abspath(os.fspath(path)))
    stem, ext = os.path.splitext(tail)
    return os.path.join(head, f".{stem}{PARTIAL_TAG}{os.getpid()}{ext}")


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        with contextlib.suppress(OSError):
            os.remove(path)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary file path; on success it replaces `path` in one rename, on failure it is removed."""
    tmp = partial_name(path)
    _remove(tmp)
    try:
        yield tmp
        if not os.path.exists(tmp):
            raise OSError(f"{path}: the writer produced no file")
        os.replace(tmp, path)
    finally:
        _remove(tmp)


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temporary folder; on success it replaces folder `path` (an old one is removed first)."""
    tmp = partial_name(path)
    _remove(tmp)
    os.makedirs(tmp)
    try:
        yield tmp
        _remove(path)
        os.replace(tmp, path)
    finally:
        _remove(tmp)


def write_json(path, obj, **kw):
    """json.dump to `path` atomically (indent 2 unless given)."""
    kw.setdefault("indent", 2)
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, **kw)
        f.write("\n")
    return path


def write_text(path, text):
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)
    return path
