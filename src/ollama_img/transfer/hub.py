"""`pull hf.co/ORG/REPO[:REVISION]`: a diffusers repository from Hugging Face, imported as `create` does.

Offline first: when the Hugging Face cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
`~/.cache/huggingface/hub`) holds the revision with every file the model needs (as `hf download` leaves
it), the import starts at once and no request is made. Otherwise huggingface_hub does the downloading,
into that same cache, with its own resumable transfers and token handling (`HF_TOKEN`, `hf auth login`),
and only the files `hub_files.select_files` names. Then the snapshot folder goes through
`inspect_folder` and `import_folder` exactly as `ollama-img create NAME -f FOLDER` would.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ollama_img.errors import NotFound, UserError
from ollama_img.names import ModelName
from ollama_img.quantization import QuantType
from ollama_img.store import ImportPlan, ImportResult, Store, import_folder, inspect_folder
from ollama_img.store.folder import MODEL_INDEX
from ollama_img.transfer.hub_files import select_files
from ollama_img.transfer.parallel import run_parallel
from ollama_img.transfer.progress import NoProgress, TransferProgress
from ollama_img.transfer.targets import HubRef

PARALLEL = 4  # files downloaded at once
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class HubPullResult:
    name: ModelName
    ref: HubRef
    commit: str
    files: int  # files the model needs
    downloaded: int  # of them fetched now (the rest were in the Hugging Face cache)
    downloaded_bytes: int
    offline: bool  # True when the cache had everything and no request was made
    imported: ImportResult


def hub_cache_dir() -> Path:
    """The Hugging Face cache, found as huggingface_hub finds it (read now, not when it was imported)."""
    env = os.environ
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(variable):
            return Path(os.path.expandvars(env[variable])).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def hub_endpoint() -> str | None:
    """`HF_ENDPOINT` (a mirror, or a test server), read now; None for huggingface_hub's default."""
    endpoint = os.environ.get("HF_ENDPOINT")
    return endpoint.rstrip("/") if endpoint else None


def pull_from_hub(
    store: Store,
    ref: HubRef,
    name: ModelName,
    *,
    quantize: QuantType | None = None,
    progress: TransferProgress | None = None,
    import_progress: Callable[[int, int], None] | None = None,
    parallel: int = PARALLEL,
    before_import: Callable[[ImportPlan], None] | None = None,
) -> HubPullResult:
    """Download what the model needs (unless cached) and import it under `name`.

    `before_import(plan)` runs between the download and the import (the CLI switches its display there).
    """
    progress = progress or NoProgress()
    cache_dir = hub_cache_dir()
    label = str(ref)
    snapshot = _complete_cached_snapshot(cache_dir, ref, label)
    if snapshot is not None:
        wanted, downloaded, nbytes, offline = snapshot[1], 0, 0, True
        snapshot = snapshot[0]
    else:
        snapshot, wanted, downloaded, nbytes = _download(cache_dir, ref, label, progress, parallel)
        offline = False
    plan = inspect_folder(snapshot)
    if quantize is not None:
        plan.architecture.quantization_rule()
        from ollama_img.backend import require_mlx

        require_mlx()
    if before_import is not None:
        before_import(plan)
    imported = import_folder(store, name, plan, progress=import_progress, quantize=quantize)
    return HubPullResult(name, ref, snapshot.name, len(wanted), downloaded, nbytes, offline, imported)


def repo_cache_folder(cache_dir: Path, repo_id: str) -> Path:
    return cache_dir / ("models--" + repo_id.replace("/", "--"))


def cached_snapshot(cache_dir: Path, ref: HubRef) -> Path | None:
    """The cache's snapshot folder for the revision (a commit, or a branch/tag its refs/ resolve), if any."""
    folder = repo_cache_folder(cache_dir, ref.repo_id)
    revision = ref.revision or "main"
    if _COMMIT.fullmatch(revision):
        commit = revision
    else:
        try:
            commit = (folder / "refs" / revision).read_text().strip()
        except (OSError, UnicodeDecodeError):
            return None
    if not _COMMIT.fullmatch(commit):
        return None
    snapshot = folder / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


def _complete_cached_snapshot(cache_dir: Path, ref: HubRef, label: str) -> tuple[Path, list[str]] | None:
    """The cached snapshot and the files the model needs from it, when it holds all of them."""
    snapshot = cached_snapshot(cache_dir, ref)
    if snapshot is None:
        return None
    listing = _files_in(snapshot)

    def local(path: str) -> Path:
        if path not in listing:
            raise UserError(f"{label}: {path} is not in the cache")
        return snapshot / path

    try:
        return snapshot, select_files(listing, local, label)
    except UserError:
        return None  # incomplete (or the repository changed): the Hub will tell


def _download(cache_dir: Path, ref: HubRef, label: str, progress: TransferProgress, parallel: int):
    """Fetch what the model needs into the cache; returns (snapshot, files, downloaded, bytes)."""
    from huggingface_hub import HfApi, hf_hub_download

    endpoint = hub_endpoint()

    def fetch(path: str, revision: str, bar=None) -> Path:
        with _hub_errors(label, endpoint, cache_dir, path):
            return Path(
                hf_hub_download(
                    ref.repo_id,
                    path,
                    revision=revision,
                    cache_dir=cache_dir,
                    endpoint=endpoint,
                    tqdm_class=bar,
                )
            )

    api = HfApi(endpoint=endpoint)
    revision = ref.revision or "main"
    earlier = cached_snapshot(cache_dir, ref)  # a partial download of this revision, maybe
    with _hub_errors(label, endpoint, cache_dir):  # first, as it fails at once when the Hub is unreachable
        info = api.model_info(ref.repo_id, revision=revision, files_metadata=True)
    # model_index.json by the revision's name records the revision's commit in the cache (as `hf download`
    # does), so the next pull of this revision can start offline.
    index_path = fetch(MODEL_INDEX, revision, _QuietBar)
    commit = index_path.parent.name
    if commit != info.sha:  # the revision moved in between: list the commit we have
        with _hub_errors(label, endpoint, cache_dir):
            info = api.model_info(ref.repo_id, revision=commit, files_metadata=True)
    had = _files_in(earlier) if earlier is not None and earlier.name == commit else set()
    sizes = {sibling.rfilename: sibling.size or 0 for sibling in info.siblings or []}
    snapshot = index_path.parent
    wanted = select_files(set(sizes), lambda path: fetch(path, commit, _QuietBar), label)
    todo = [path for path in wanted if not (snapshot / path).is_file()]
    progress.start("downloading", sum(sizes.get(path, 0) for path in todo), len(todo))
    stop = threading.Event()
    bar = _bar_class(progress, stop)
    run_parallel(
        [lambda path=path: fetch(path, commit, bar) for path in todo],
        parallel,
        stop,
        on_done=lambda _path: progress.file_done(),
    )
    fetched = [path for path in wanted if path not in had]
    return snapshot, wanted, len(fetched), sum(sizes.get(path, 0) for path in fetched)


def _files_in(folder: Path) -> set[str]:
    """The files of a snapshot folder, as repository paths (broken links to missing blobs left out)."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


class _Stopped(Exception):
    """Another download of the same pull failed."""


class _QuietBar:
    """A tqdm stand-in for small files: huggingface_hub draws nothing, we count nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def update(self, n=1):
        pass

    def close(self):
        pass

    def set_postfix_str(self, *args, **kwargs):
        pass


def _bar_class(progress: TransferProgress, stop: threading.Event):
    """A tqdm stand-in that feeds huggingface_hub's byte counts into our progress (from its threads)."""

    class Bar(_QuietBar):
        def __init__(self, *args, initial=0, **kwargs):
            if initial:  # a resumed download: those bytes were fetched before
                progress.advance(initial)

        def update(self, n=1):
            if stop.is_set():
                raise _Stopped()  # another file failed: stop this one (its partial file stays cached)
            if n:
                progress.advance(int(n))

    return Bar


@contextlib.contextmanager
def _hub_errors(label: str, endpoint: str | None, cache_dir: Path, path: str | None = None):
    """huggingface_hub's exceptions as one clear line each."""
    try:  # huggingface_hub 2.x speaks httpx2
        from httpx2 import TransportError
    except ImportError:  # pragma: no cover
        from httpx import TransportError
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = endpoint or "huggingface.co"
    try:
        yield
    except GatedRepoError:
        raise UserError(
            f"{label} is gated: accept its terms on the Hub, then log in (hf auth login, or set HF_TOKEN)"
        ) from None
    except RepositoryNotFoundError:
        raise NotFound(
            f"{label} not found on Hugging Face ({where}); a private repository needs a token "
            "(hf auth login, or set HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise NotFound(f"{label}: no such revision on Hugging Face") from None
    except (OfflineModeIsEnabled, LocalEntryNotFoundError, TransportError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__
        raise UserError(
            f"cannot reach Hugging Face ({where}), and its cache ({cache_dir}) lacks files of {label}: {reason}"
        ) from None
    except EntryNotFoundError:
        if path == MODEL_INDEX:
            raise UserError(
                f"{label} has no {MODEL_INDEX}: ollama-img needs a model in the diffusers layout"
            ) from None
        raise UserError(f"{label}: {path} is not in the repository") from None
    except HfHubHTTPError as exc:
        first = str(exc).splitlines()[0][:200]
        raise UserError(f"Hugging Face ({where}) refused {label}: {first}") from None
    except OSError as exc:
        raise UserError(
            f"cannot write to the Hugging Face cache ({cache_dir}): {exc.strerror or exc}"
        ) from None
