"""Where shard files live: local paths and fsspec URLs; patterns expanded, byte ranges read.

A pattern follows the webdataset convention: brace ranges and lists
(``shards/{000000..000099}.tar``, ``{train,test}-0.tar``) expand in order, then each name
holding ``*``, ``?`` or ``[`` is a glob whose matches are sorted. A URL (``s3://``,
``gs://``, ``https://``) goes through fsspec (the ``[s3]`` extra); its endpoint and
credentials come from the standard environment (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``...).

Reads are by byte range: a local file through ``os.pread`` on a descriptor each process
keeps (no shared file offset, so forked processes cannot disturb each other), a URL through
one ranged request. A batch of consecutive tar members is one range.
"""

from __future__ import annotations

import glob
import os
import re
from collections import OrderedDict

from featurecache.exceptions import InvalidArgumentError, MissingExtraError

__all__ = ["is_url", "expand_braces", "list_files", "open_binary", "read_range", "source_error"]

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
#: Files each process keeps open for reading (the shards its batches come from).
OPEN_FILES = 8
#: Read-ahead of a URL read front to back (a scan).
BLOCK_SIZE = 8 << 20


def is_url(text: str) -> bool:
    """A URL for fsspec (``s3://``, ``gs://``, ``https://``...); ``file://`` counts as a path."""
    return bool(_URL.match(text)) and not text.startswith("file://")


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{a,b}`` lists and ``{000..099}`` ranges (zero padding kept), left to right;
    lists may nest (``{a-{0..1},b}``). An unmatched brace is kept as it is."""
    open_at = pattern.find("{")
    close_at = _matching(pattern, open_at) if open_at >= 0 else -1
    if close_at < 0:
        return [pattern]
    head, body, tail = pattern[:open_at], pattern[open_at + 1 : close_at], pattern[close_at + 1 :]
    span = _RANGE.match(body)
    if span:
        first, last = span.group(1), span.group(2)
        width = len(first) if first.lstrip("-").startswith("0") else 0
        step = 1 if int(last) >= int(first) else -1
        choices = [str(i).zfill(width) for i in range(int(first), int(last) + step, step)]
    else:
        choices = [c for part in _top_level(body) for c in expand_braces(part)]
    return [name for choice in choices for name in expand_braces(head + choice + tail)]


def _matching(text: str, open_at: int) -> int:
    """The index of the brace closing the one at ``open_at``, or -1."""
    depth = 0
    for i in range(open_at, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return i
    return -1


def _top_level(body: str) -> list[str]:
    """``body`` split at its commas outside nested braces."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(body):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    return [*parts, body[start:]]


def list_files(pattern: str, what: str) -> list[str]:
    """The files ``pattern`` names, in order (braces in order, each glob sorted), once each.

    Raises
    ------
    InvalidArgumentError
        When the pattern names nothing, or a name without wildcards does not exist.
    """
    found: list[str] = []
    for name in expand_braces(pattern):
        if any(c in name for c in "*?["):
            found.extend(_glob(name))
        elif _exists(name):
            found.append(name)
        else:
            raise InvalidArgumentError(
                f"DATA {pattern!r} names {name!r}, which does not exist; check the pattern "
                f"(braces as in train-{{000000..000009}}.{what}, or a glob)."
            )
    found = list(dict.fromkeys(found))
    if not found:
        raise InvalidArgumentError(
            f"DATA {pattern!r} matches no .{what} file; check the pattern "
            f"(braces as in train-{{000000..000009}}.{what}, or a glob)."
        )
    return found


def _glob(name: str) -> list[str]:
    if not is_url(name):
        return sorted(p for p in glob.glob(os.path.expanduser(name)) if os.path.isfile(p))
    fs, path = filesystem(name)
    protocol = name.split("://", 1)[0]
    try:
        fs.invalidate_cache()  # a long-lived process sees shards added since its last listing
        found = sorted(f"{protocol}://{p}" for p in fs.glob(path))
        if not found:  # an empty listing: say so if the bucket itself is missing
            fs.ls(path.split("/", 1)[0])
    except Exception as error:
        raise source_error(name, error) from None
    return found


def _exists(name: str) -> bool:
    if not is_url(name):
        return os.path.isfile(os.path.expanduser(name))
    fs, path = filesystem(name)
    try:
        fs.invalidate_cache()
        fs.info(path)
    except FileNotFoundError as error:
        if "bucket" in str(error).lower():
            raise source_error(name, error) from None
        return False
    except Exception as error:
        raise source_error(name, error) from None
    return True


def filesystem(url: str):
    """``(fsspec filesystem, path)`` of a URL, configured from the standard environment."""
    try:
        from fsspec.core import url_to_fs
    except ImportError:
        raise MissingExtraError(
            f"DATA {url!r} is a URL, read through fsspec; install it with "
            "pip install 'featurecache[s3]'."
        ) from None
    try:
        return url_to_fs(url, **_storage_options(url))
    except ImportError as error:
        raise MissingExtraError(
            f"DATA {url!r} needs {error.name or 'its fsspec back-end'}; install it with "
            "pip install 'featurecache[s3]' (s3://) or the back-end of its protocol."
        ) from None


def _storage_options(url: str) -> dict:
    """For ``s3://``: the endpoint of ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` if set."""
    if not url.startswith(("s3://", "s3a://")):
        return {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return {"endpoint_url": endpoint} if endpoint else {}


def open_binary(name: str):
    """``name`` opened for sequential reading (a local file, or an fsspec file)."""
    if not is_url(name):
        return open(os.path.expanduser(name), "rb")  # noqa: SIM115 (the caller closes it)
    fs, path = filesystem(name)
    try:
        return fs.open(path, "rb", block_size=BLOCK_SIZE)
    except Exception as error:
        raise source_error(name, error) from None


class _OpenFiles:
    """The local files this process reads from (descriptors), most recent last; reset in a
    forked child, whose inherited descriptors are its parent's to close."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.files: OrderedDict[str, int] = OrderedDict()

    def get(self, name: str) -> int:
        if self.pid != os.getpid():
            self.pid, self.files = os.getpid(), OrderedDict()
        if name in self.files:
            self.files.move_to_end(name)
            return self.files[name]
        if len(self.files) >= OPEN_FILES:
            os.close(self.files.popitem(last=False)[1])
        self.files[name] = os.open(os.path.expanduser(name), os.O_RDONLY)
        return self.files[name]


_OPEN = _OpenFiles()


def read_range(name: str, offset: int, size: int) -> bytes:
    """``size`` bytes of ``name`` from ``offset``.

    Raises
    ------
    InvalidArgumentError
        When the file cannot be opened or is shorter than the range (changed since it was
        listed); the reason in one line.
    """
    try:
        if is_url(name):  # one ranged request (a GET with a Range header on object storage)
            fs, path = filesystem(name)
            data = fs.cat_file(path, start=offset, end=offset + size)
        else:
            data = os.pread(_OPEN.get(name), size, offset)
    except InvalidArgumentError:
        raise
    except Exception as error:
        raise source_error(name, error) from None
    if len(data) != size:
        raise InvalidArgumentError(
            f"{name!r} ends before the sample it held ({len(data)} of {size} bytes at "
            f"offset {offset}); the file changed since it was listed, run again."
        )
    return data


def source_error(name: str, error: BaseException) -> InvalidArgumentError:
    """One line for a file or object that cannot be read: what, why, how to fix."""
    text = " ".join(str(error).split())
    lowered = text.lower()
    if "bucket" in lowered and ("not exist" in lowered or "nosuchbucket" in lowered):
        bucket = name.split("://", 1)[-1].split("/", 1)[0]
        return InvalidArgumentError(
            f"cannot read {name!r}: the bucket {bucket!r} does not exist at this endpoint; "
            "check the URL and AWS_ENDPOINT_URL."
        )
    if isinstance(error, PermissionError) or any(
        word in lowered
        for word in (
            "accessdenied",
            "access denied",
            "invalidaccesskeyid",
            "signaturedoesnotmatch",
            "forbidden",
        )
    ):
        return InvalidArgumentError(
            f"cannot read {name!r}: access denied ({_short(text)}); check the credentials "
            "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)."
        )
    if isinstance(error, FileNotFoundError):
        return InvalidArgumentError(f"cannot read {name!r}: no such file or object.")
    return InvalidArgumentError(f"cannot read {name!r}: {type(error).__name__}: {_short(text)}.")


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
