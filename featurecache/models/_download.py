"""Downloads through each library's own mechanism, with one-line errors.

torchvision weights go through ``torch.hub`` into ``$TORCH_HOME/hub/checkpoints`` (hash
checked); timm, OpenCLIP and Hugging Face weights through the Hugging Face hub cache
(``$HF_HOME``). :func:`featurecache.models._record.offline` forbids both.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from urllib.parse import urlparse

import torch

from featurecache.exceptions import DownloadError
from featurecache.models._record import first_line, offline, require

__all__ = ["download_checkpoint", "hf_hub_file", "terminal"]

_OFF = "downloads are off (--offline, FEATURECACHE_OFFLINE or HF_HUB_OFFLINE)"


def terminal() -> bool:
    """Whether to show download progress bars: stderr is a terminal."""
    return sys.stderr.isatty()


def download_checkpoint(url: str, label: str) -> str:
    """The torch hub cache's copy of ``url``, downloaded (hash-checked) when missing.

    Raises
    ------
    DownloadError
        Offline, or the download failed (no network, a proxy, a bad hash): one line saying
        what, from which library, and where to put the file by hand.
    """
    filename = os.path.basename(urlparse(url).path)
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    cached = os.path.join(folder, filename)
    if os.path.isfile(cached):
        return cached
    manual = (
        f"To work offline, put {filename} into {folder} (set TORCH_HOME to choose the folder), "
        "or give a local state-dict file as the weights."
    )
    if offline():
        raise DownloadError(f"Weights {label} are not in the torch hub cache and {_OFF}. {manual}")
    match = torch.hub.HASH_REGEX.search(filename)
    os.makedirs(folder, exist_ok=True)
    try:
        # torch.hub writes to a temporary file and moves it into place after the hash check.
        torch.hub.download_url_to_file(
            url, cached, hash_prefix=match.group(1) if match else None, progress=terminal()
        )
    except Exception as exc:  # urllib, socket, proxy and hash errors alike
        raise DownloadError(
            f"Could not download weights {label} from {url} with torch.hub "
            f"({type(exc).__name__}: {first_line(exc)}). {manual}"
        ) from exc
    return cached


def hf_hub_file(
    repo_id: str, filenames: Sequence[str], label: str, library: str, extra: str
) -> tuple[str, str]:
    """The local path of the first of ``filenames`` found in a hub repository, and its revision.

    Downloads into the Hugging Face hub cache unless downloads are off, in which case only
    the cache is read.

    Raises
    ------
    DownloadError
        None of the files could be found or downloaded: one line saying what, from which
        library, and how to supply the file offline.
    """
    hub = require("huggingface_hub", extra, label)
    from huggingface_hub import errors

    manual = (
        f"To work offline, download {repo_id} once into the Hugging Face hub cache (HF_HOME) "
        "or give a local weights file."
    )
    reason = ""
    for filename in filenames:
        try:
            path = hub.hf_hub_download(repo_id, filename, local_files_only=offline())
        except errors.LocalEntryNotFoundError as exc:
            if offline():
                raise DownloadError(
                    f"The weights of {label} ({repo_id}) are not in the Hugging Face hub cache and "
                    f"{_OFF}. {manual}"
                ) from exc
            reason = f"{type(exc).__name__}: {first_line(exc)}"
            break
        except (errors.EntryNotFoundError, errors.RemoteEntryNotFoundError) as exc:
            reason = reason or f"{type(exc).__name__}: {first_line(exc)}"
            continue  # the repository has the weights under another name
        except Exception as exc:  # HTTP, proxy, gated or missing repositories alike
            reason = f"{type(exc).__name__}: {first_line(exc)}"
            break
        return path, os.path.basename(os.path.dirname(path))
    raise DownloadError(
        f"Could not download the weights of {label} ({repo_id}: {' or '.join(filenames)}) "
        f"through {library}'s Hugging Face hub cache ({reason}). {manual}"
    )
