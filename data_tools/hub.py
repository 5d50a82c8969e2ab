"""Which names go to the Hugging Face hub, and one quick lookup before anything is downloaded.

A tokenizer or dataset name is a local path when it exists; a name that does not exist goes
to the hub only when it looks like ``org/name`` (and not like a file, ``x/y.jsonl``);
anything else is "no such directory".  For a hub name, :func:`check_repo` makes ONE request
(``HfApi().model_info`` / ``dataset_info``, no retries) so that a missing repository or an
unreachable hub is one clear line within seconds, instead of ``huggingface_hub``'s five
retries with back-off (about 50 s) ending in a connection traceback.  With
``HF_HUB_OFFLINE=1`` there is no request: the caller loads from the local cache.
"""
from __future__ import annotations

import re

from .errors import DataError

TIMEOUT_S = 10.0
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_FILE_SUFFIXES = (".json", ".jsonl", ".txt", ".csv", ".tsv", ".parquet", ".arrow", ".gz", ".zst", ".model")


def is_repo_id(name: str) -> bool:
    """``org/name`` (one slash, no ``..``, no file suffix): a name the hub could hold."""
    return bool(_REPO_ID.match(name)) and ".." not in name and not name.lower().endswith(_FILE_SUFFIXES)


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def check_repo(name: str, *, repo_type: str = "model", what: str = "tokenizer") -> None:
    """Raise :class:`DataError` unless the hub has ``name`` (one request; nothing when offline)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    if offline():
        return
    api = HfApi()
    lookup = api.model_info if repo_type == "model" else api.dataset_info
    where = f"{what} {name}: not a local path"
    missing = (f"{where}, and no {repo_type} of that name on the Hugging Face hub "
               "(a private one needs hf auth login)")
    try:
        lookup(name, timeout=TIMEOUT_S)
    except GatedRepoError:
        raise DataError(f"{where}, and gated on the Hugging Face hub: accept its terms on the hub and log in "
                        "(hf auth login)") from None
    except RepositoryNotFoundError:
        raise DataError(missing) from None
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", "?")
        if status in (401, 404):
            raise DataError(missing) from None
        raise DataError(f"{where}; the Hugging Face hub answered HTTP {status}") from None
    except Exception as e:  # noqa: BLE001 - any transport failure: offline, DNS, proxy, timeout
        reason = (str(e).splitlines() or [""])[0] or type(e).__name__
        raise DataError(f"{where}, and the Hugging Face hub cannot be reached ({reason}); pass a local "
                        "directory, or set HF_HUB_OFFLINE=1 to use a copy in the local cache") from None
