"""Loading a model and its processor: hub checkpoints, local folders, and the tiny test fixtures.

A hub checkpoint that cannot be reached fails within seconds with a message naming it, instead of retrying for
minutes: before calling ``from_pretrained`` the loader checks the local cache and, if the files are not there,
probes the hub once with a short timeout.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import shutil
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from huggingface_hub import constants, try_to_load_from_cache

from fopru.errors import ConfigError
from fopru.hub import hub_reachable

log = logging.getLogger(__name__)

TINY_PREFIX = "tiny:"
EMBEDDED_PREFIX = "embedded:"
#: Trained checkpoints that ship with the package (``embedded:<name>``).
EMBEDDED_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
#: The tiny test fixtures: ``tiny:<name>`` is built by ``fopru/models/tiny/<name>.py``.
TINY_DIR = Path(__file__).resolve().parent / "tiny"


def tiny_cache() -> Path:
    """Where tiny fixtures are built: ``$FOPRU_CACHE/tiny`` (default ``~/.cache/fopru/tiny``)."""
    return Path(os.environ.get("FOPRU_CACHE", Path.home() / ".cache" / "fopru")) / "tiny"


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype named in a config, or a clear error."""
    if name not in DTYPES:
        raise ConfigError(f"dtype={name!r} is not one of {list(DTYPES)}")
    return DTYPES[name]


def tiny_builder(checkpoint: str) -> Callable[[Path], None]:
    """The ``build(folder)`` of the fixture module named by a ``tiny:<name>`` checkpoint.

    Found by name, as a config's ``_target_`` is, so that adapters never import their fixtures: the fixture
    modules import the adapters' processors instead.
    """
    name = checkpoint.removeprefix(TINY_PREFIX)
    fixtures = sorted(path.stem for path in TINY_DIR.glob("*.py") if path.stem != "__init__")
    if name not in fixtures:
        raise ConfigError(f"{checkpoint!r} is not a tiny fixture; valid tiny checkpoints: {fixtures}")

    def build(folder: Path) -> None:
        importlib.import_module(f"fopru.models.tiny.{name}").build(folder)

    return build


def resolve_checkpoint(checkpoint: str) -> str:
    """A path or hub id that ``from_pretrained`` can open now, or a :class:`ConfigError` saying why not.

    ``embedded:<name>`` is a trained checkpoint shipped in ``fopru/checkpoints/<name>``. ``tiny:<name>`` checkpoints
    are built once by ``build(folder)`` of ``fopru/models/tiny/<name>.py`` (seeded random weights) and saved, so
    tests load them through the same ``from_pretrained`` path as real checkpoints.
    """
    if checkpoint.startswith(TINY_PREFIX):
        build_tiny = tiny_builder(checkpoint)  # an unknown name fails here, built or not
        folder = tiny_cache() / checkpoint.removeprefix(TINY_PREFIX)
        if not (folder / "config.json").is_file():
            # Built in a private folder and renamed into place, so that processes starting together (DDP ranks,
            # parallel jobs) never read a half-written fixture.
            folder.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
            build_tiny(staging)
            try:
                staging.rename(folder)
            except OSError:  # another process renamed its copy first
                shutil.rmtree(staging, ignore_errors=True)
        return str(folder)
    if checkpoint.startswith(EMBEDDED_PREFIX):
        name = checkpoint.removeprefix(EMBEDDED_PREFIX)
        folder = EMBEDDED_DIR / name
        if not (folder / "config.json").is_file():
            shipped = sorted(path.name for path in EMBEDDED_DIR.glob("*") if (path / "config.json").is_file())
            raise ConfigError(
                f"embedded checkpoint {checkpoint!r} is not in {EMBEDDED_DIR}; the package ships {shipped}. "
                "Train one with stage=train (see the README) and point model.checkpoint at its folder"
            )
        return str(folder)
    if Path(checkpoint).expanduser().is_dir():
        check_checkpoint_folder(Path(checkpoint).expanduser(), checkpoint)
        return str(Path(checkpoint).expanduser())
    if looks_like_path(checkpoint):
        raise ConfigError(
            f"checkpoint {checkpoint!r} is not a folder: no such path (from {Path.cwd()}). Point model.checkpoint at "
            "a folder saved by save_pretrained (with config.json and model.safetensors), or at a hub id such as "
            "llava-hf/llava-1.5-7b-hf"
        )
    if isinstance(try_to_load_from_cache(checkpoint, "config.json"), str):
        return checkpoint  # cached: from_pretrained opens it without the network
    offline = constants.HF_HUB_OFFLINE
    if offline or not hub_reachable():
        reason = "HF_HUB_OFFLINE is set" if offline else f"{constants.ENDPOINT} could not be reached"
        raise ConfigError(
            f"checkpoint {checkpoint!r} could not be reached: it is not in the local Hugging Face cache and {reason}. "
            "Download it on a machine with internet (hf download "
            f"{checkpoint}) and copy the cache, or point the model config's checkpoint at a local folder."
        )
    return checkpoint


#: The files of a checkpoint folder that ``from_pretrained`` reads (weights, configs, tokenizer and processor files).
CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt", ".jinja", ".tiktoken", ".gguf", ".py")


def fingerprint_cache() -> Path:
    """Where file digests are remembered: ``$FOPRU_CACHE/fingerprints.json`` (default ``~/.cache/fopru``)."""
    return tiny_cache().parent / "fingerprints.json"


def checkpoint_fingerprint(resolved: str) -> str:
    """What identifies a checkpoint's weights and processor: ``sha256:<digest>`` of a local folder's files
    (names and contents), or ``hub:<id>@<commit>`` for a hub checkpoint in the local cache.

    A folder's file digests are cached by (path, size, modification time), so a large checkpoint is hashed once,
    not on every run; new weights saved at the same path (``stage=train`` into that folder) get a new fingerprint.
    """
    folder = Path(resolved)
    if folder.is_dir():
        return "sha256:" + _folder_digest(folder)
    cached = try_to_load_from_cache(resolved, "config.json")
    if isinstance(cached, str):
        snapshot = Path(cached).parent  # <cache>/models--<org>--<name>/snapshots/<commit>
        if snapshot.parent.name == "snapshots":
            return f"hub:{resolved}@{snapshot.name}"
        return "sha256:" + _folder_digest(snapshot)
    log.warning("checkpoint %r is neither a folder nor in the hub cache: identified by its name only", resolved)
    return f"hub:{resolved}"


def _folder_digest(folder: Path) -> str:
    files = sorted(path for path in folder.iterdir() if path.is_file() and path.suffix in CHECKPOINT_SUFFIXES)
    cache_path = fingerprint_cache()
    try:
        cache: dict[str, dict[str, object]] = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    changed = False
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()  # follows links: the hub cache's snapshot files are links to blobs
        key = str(path.resolve())
        entry = cache.get(key)
        if not entry or entry.get("size") != stat.st_size or entry.get("mtime_ns") != stat.st_mtime_ns:
            with path.open("rb") as handle:
                entry = {
                    "size": stat.st_size,
                    "mtime_ns": stat.st_mtime_ns,
                    "sha256": hashlib.file_digest(handle, "sha256").hexdigest(),
                }
            cache[key] = entry
            changed = True
        digest.update(f"{path.name}\0{entry['sha256']}\n".encode())
    if changed:
        _write_atomically(cache_path, json.dumps(cache, indent=0, sort_keys=True))
    return digest.hexdigest()


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` in one step, so that processes reading it concurrently never see half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, staging = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.replace(staging, path)
    except OSError as error:  # a read-only cache only costs re-hashing next time
        log.warning("could not write %s: %s", path, error)


def looks_like_path(checkpoint: str) -> bool:
    """Whether ``checkpoint`` is meant as a local path rather than a hub id (``org/name`` or ``name``)."""
    return checkpoint.startswith(("/", "./", "../", "~", ".")) or checkpoint.count("/") > 1 or "\\" in checkpoint


def check_checkpoint_folder(folder: Path, shown: str) -> None:
    """Refuse a local checkpoint folder that ``from_pretrained`` could not load, reading only file headers.

    The folder needs a ``config.json`` and its weights: ``model.safetensors``, the shards a
    ``model.safetensors.index.json`` lists, or ``pytorch_model.bin``. Every safetensors file must have a readable
    header whose tensors fit in the file (a truncated download or a file that is not safetensors fails here, in
    milliseconds, instead of after a model has been built around it).
    """
    if not (folder / "config.json").is_file():
        present = sorted(path.name for path in folder.iterdir())[:8]
        raise ConfigError(
            f"checkpoint folder {shown!r} has no config.json (it holds {present or 'nothing'}): point model.checkpoint "
            "at a folder saved by save_pretrained, or at a hub id"
        )
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"checkpoint {shown!r}: {index.name} is not a valid shard index ({error})") from None
        files = [folder / shard for shard in shards]
    elif (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    elif (folder / "pytorch_model.bin").is_file():
        return
    else:
        raise ConfigError(
            f"checkpoint folder {shown!r} has no weights: expected model.safetensors, model.safetensors.index.json "
            "with its shards, or pytorch_model.bin"
        )
    for file in files:
        problem = safetensors_problem(file)
        if problem is not None:
            raise ConfigError(
                f"checkpoint {shown!r}: {file.name} is corrupted ({problem}); download or save the checkpoint again"
            )


def safetensors_problem(file: Path) -> str | None:
    """What is wrong with a safetensors file's header (``None``: nothing), without reading its tensors.

    The format is an 8-byte little-endian header length, a JSON header mapping tensor names to dtype, shape and
    byte range, then the data; every range must lie inside the data.
    """
    try:
        size = file.stat().st_size
        with file.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                return f"{size} bytes, shorter than a safetensors header"
            (length,) = struct.unpack("<Q", prefix)
            if length > size - 8:
                return f"its header claims {length} bytes but the file has {size}"
            header = json.loads(handle.read(length))
    except FileNotFoundError:
        return "the file is missing"
    except (OSError, ValueError) as error:
        return f"unreadable header: {type(error).__name__}"
    if not isinstance(header, dict):
        return "the header is not a JSON object"
    data = size - 8 - length
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = entry["data_offsets"]
        except (TypeError, KeyError, ValueError):
            return f"tensor {name!r} has no data_offsets"
        if not 0 <= start <= end <= data:
            return f"tensor {name!r} ends at byte {end} of {data} data bytes (truncated)"
    return None
