"""Weight files: resolve a local path, an fsspec URL or a hub id to a local file, check its pin.

NeMo Curator fetches weights without checksums; here every default file with a published digest
is pinned and a file whose digest differs is refused before torch ever unpickles it (the others,
such as the NSFW detector, log their sha256 for the user to pin). A file inside a zip is named
the way fsspec chains URLs, ``zip://MEMBER::ZIP_URL``: the zip is fetched and cached like any
file, then the member is extracted once into the cache. Real and test weights go through the
same ``resolve`` + ``read_state_dict`` path.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import posixpath
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from airflow_curator.core.errors import TransientError, UsageError
from airflow_curator.core.io import storage

logger = logging.getLogger(__name__)

CACHE_ENV = "CURATOR_WEIGHTS_CACHE"
# Weights baked into the image (read-only in a pod): looked up before the writable cache.
BAKED_ENV = "CURATOR_WEIGHTS_BAKED"
HTTP = ("http://", "https://")
HUB_PREFIX = "hf-hub:"
ZIP_PREFIX = "zip://"

# Published digests of default weight files, as "algorithm:hex".
# OpenAI publishes each CLIP checkpoint under its own sha256 (the URL path segment; the `clip`
# package verifies it the same way). The aesthetic predictor's md5 is the one EasyAnimate
# publishes for its mirror of the LAION file; no sha256 is published for it.
OPENAI_SHA256 = {
    "ViT-L-14.pt": "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836",
    "ViT-B-32.pt": "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
}
AESTHETIC_URL = (
    "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
    "sac+logos+ava1-l14-linearMSE.pth"
)


# LAION's CLIP-based NSFW detector as the PyTorch state dict NeMo Curator loads by default; LAION
# publishes no digest for it.
NSFW_ZIP_URL = (
    "https://github.com/LAION-AI/CLIP-based-NSFW-Detector/files/10250461/"
    "clip_autokeras_binary_nsfw.zip"
)
NSFW_URL = f"{ZIP_PREFIX}clip_autokeras_binary_nsfw.pth::{NSFW_ZIP_URL}"


def openai_url(name: str) -> str:
    return f"https://openaipublic.azureedge.net/clip/models/{OPENAI_SHA256[name]}/{name}"


PINNED: dict[str, str] = {openai_url(n): f"sha256:{s}" for n, s in OPENAI_SHA256.items()}
PINNED[AESTHETIC_URL] = "md5:b1047fd767a00134b8fd6529bf19521a"
# The same files copied elsewhere (a bucket, a local cache) keep their distinctive names.
PINNED_NAMES: dict[str, str] = {posixpath.basename(u): d for u, d in PINNED.items()}


class WeightsError(UsageError):
    """A weight file is missing, unreadable or not the pinned file."""


@dataclass(frozen=True)
class WeightsFile:
    """A resolved weight file: where it came from, where it is, and its sha256."""

    uri: str
    path: str
    sha256: str


def digest(path: str, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            h.update(block)
    return h.hexdigest()


def expected_digest(uri: str, sha256: str | None = None) -> str | None:
    """The pin for ``uri``: an explicit sha256, else the table's entry by URI or file name."""
    if sha256:
        return sha256 if ":" in sha256 else f"sha256:{sha256.lower()}"
    return PINNED.get(uri) or PINNED_NAMES.get(posixpath.basename(uri.rstrip("/")))


def cache_dir() -> str:
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
        "airflow-curator",
        "weights",
    )
    os.makedirs(root, exist_ok=True)
    return root


def fetch(uri: str) -> str:
    """A local path for ``uri``: local files as they are, hub ids via huggingface_hub (which
    honours ``HF_HUB_OFFLINE`` and its cache), other URLs copied once per version of the object
    into the cache (``CACHE/<uri key>/<version key>/<name>``), zip members
    (``zip://MEMBER::ZIP_URL``) extracted once per copy of their archive; the image's baked
    folder, laid out the same, is looked up first."""
    if uri.startswith(HUB_PREFIX):
        return _hub_download(uri[len(HUB_PREFIX) :])
    if uri.startswith(ZIP_PREFIX):
        return _zip_member(uri)
    if storage.is_local(uri):
        path = storage.local_path(uri)
        if not os.path.isfile(path):
            raise WeightsError(f"weights {uri}: no such file")
        return path
    name = posixpath.basename(uri.rstrip("/")) or "weights"
    baked = baked_path(uri, name)
    if baked is not None:
        return baked
    try:
        # cached by what identifies the object's content, not by its name alone: a file
        # replaced in the bucket is a new generation (one metadata request per fetch)
        local = os.path.join(cache_dir(), cache_key(uri), _version_key(uri), name)
        if not os.path.exists(local):
            logger.info("downloading weights %s to %s", uri, local)
            _download(uri, local)
    except FileNotFoundError:
        raise WeightsError(f"weights {uri}: not found or not reachable") from None
    except TransientError:
        raise
    except Exception as e:  # fsspec backends raise their own types (aiohttp, gcsfs, ...)
        reason = storage.unavailable(e)
        if reason is not None:
            raise TransientError(uri, reason) from e
        raise WeightsError(f"weights {uri}: download failed: {e}") from e
    return local


def cache_key(ident: str) -> str:
    """A cache folder's name for ``ident``: a URI (the cache's and the baked folder's first
    level) or what identifies a version of its content (the second)."""
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def baked_path(uri: str, name: str) -> str | None:
    """The image's baked copy of ``uri``'s file, if there is one. Baked weights never change,
    so they are found by URI alone (no request: the pod may not reach the source)."""
    baked = os.environ.get(BAKED_ENV)
    folder = os.path.join(baked, cache_key(uri)) if baked else None
    if folder is None or not os.path.isdir(folder):
        return None
    found = [p for v in os.listdir(folder) if os.path.isfile(p := os.path.join(folder, v, name))]
    return max(found, key=os.path.getmtime) if found else None


def _version_key(uri: str) -> str:
    """The object's generation (GCS), ETag or MD5 and size, from one metadata request.

    HTTP(S) URLs are one streaming GET and nothing else (see ``_download``): no HEAD asks for
    a version, the key is constant (the pins catch a changed file)."""
    if uri.startswith(HTTP):
        return "url"
    meta = storage.info(uri)
    version = next(
        (str(meta[k]) for k in ("generation", "etag", "ETag", "md5Hash", "mtime") if meta.get(k)),
        "",
    )
    return cache_key(f"{version}\0{meta.get('size')}")


@contextlib.contextmanager
def _folders_for(local: str) -> Iterator[None]:
    """Create ``local``'s missing parent folders; remove those made here if the body fails
    (one that is not empty holds another process's download and stays)."""
    made: list[str] = []
    folder = os.path.dirname(local)
    while folder and not os.path.isdir(folder):
        made.append(folder)
        folder = os.path.dirname(folder)
    os.makedirs(os.path.dirname(local), exist_ok=True)
    try:
        yield
    except BaseException:
        for folder in made:  # deepest first
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise


def _download(uri: str, local: str) -> None:
    """Copy ``uri`` to ``local`` atomically; a failed download leaves no folder behind.

    HTTP(S) is one streaming GET: a whole file gains nothing from ranged reads, and a server
    that ignores ``Range`` answers them with the whole body (fsspec's ranged read then fails,
    or returns the wrong bytes)."""
    with _folders_for(local):
        if uri.startswith(HTTP):
            fs, path = storage.fs_and_path(uri)
            with storage.atomic_writer(local) as f:
                fs.get_file(path, f)
        else:
            storage.copy_file(uri, local)


def _zip_member(uri: str) -> str:
    """Extract ``MEMBER`` of ``zip://MEMBER::ZIP_URL`` into the cache (atomically), once."""
    import zipfile

    member, _, outer = uri[len(ZIP_PREFIX) :].partition("::")
    if not member or not outer:
        raise WeightsError(f"weights {uri}: expected {ZIP_PREFIX}MEMBER::ZIP_URL")
    name = posixpath.basename(member)
    baked = baked_path(uri, name)
    if baked is not None:
        return baked
    archive = fetch(outer)  # cached by its content's identity: a new archive, a new member
    st = os.stat(archive)
    version = cache_key(f"{archive}\0{st.st_size}\0{st.st_mtime_ns}")
    local = os.path.join(cache_dir(), cache_key(uri), version, name)
    if os.path.exists(local):
        return local
    try:
        with zipfile.ZipFile(archive) as z:
            names = z.namelist()
            if member not in names:
                raise WeightsError(
                    f"weights {uri}: {outer} has no {member} (members: {', '.join(names[:8])})"
                )
            logger.info("extracting %s from %s to %s", member, outer, local)
            with _folders_for(local), z.open(member) as src, storage.atomic_writer(local) as dst:
                shutil.copyfileobj(src, dst, 8 << 20)
    except zipfile.BadZipFile as e:
        raise WeightsError(f"weights {uri}: {outer} is not a zip file ({e})") from None
    return local


def _hub_download(spec: str) -> str:
    """``org/repo`` (open_clip's default file) or ``org/repo/path/in/repo``."""
    parts = spec.strip("/").split("/")
    if len(parts) < 2:
        raise WeightsError(f"hub id {HUB_PREFIX}{spec}: expected org/repo[/file]")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:]) or "open_clip_model.safetensors"
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(repo_id=repo, filename=filename)
    except Exception as e:  # offline, missing repo or file, auth: all one clear error
        reason = storage.unavailable(e)
        if reason is not None and not os.environ.get("HF_HUB_OFFLINE"):
            raise TransientError(f"{HUB_PREFIX}{spec}", reason) from e
        raise WeightsError(f"hub id {HUB_PREFIX}{spec}: cannot fetch {filename}: {e}") from e


def resolve(uri: str, sha256: str | None = None) -> WeightsFile:
    """Fetch ``uri`` and check it against its pin; refuse a mismatch before loading anything."""
    path = fetch(uri)
    actual = digest(path)
    pin = expected_digest(uri, sha256)
    if pin is not None:
        algorithm, _, want = pin.partition(":")
        got = actual if algorithm == "sha256" else digest(path, algorithm)
        if got != want.lower():
            raise WeightsError(
                f"weights {uri}: {algorithm} is {got}, expected {want} (pinned); refusing to load "
                "a file that is not the pinned one"
            )
        logger.info("weights %s: %s verified", uri, algorithm)
    else:
        logger.warning(
            "weights %s are not pinned (sha256 %s): pass a sha256 to pin them", uri, actual
        )
    return WeightsFile(uri, path, actual)


def read_state_dict(path: str, what: str = "weights") -> dict[str, Any]:
    """A flat tensor dict from safetensors, a torch state dict (``weights_only``) or a
    TorchScript archive (OpenAI's CLIP ``.pt``)."""
    import torch

    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return dict(load_file(path, device="cpu"))
        if _is_torchscript(path):
            obj: Any = torch.jit.load(path, map_location="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{what} {path}: not a readable checkpoint: {e}") from e
    if isinstance(obj, torch.jit.ScriptModule):
        obj = obj.state_dict()
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{what} {path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _is_torchscript(path: str) -> bool:
    """TorchScript archives are zips holding ``*/constants.pkl``; state dicts are not."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") for n in z.namelist())
