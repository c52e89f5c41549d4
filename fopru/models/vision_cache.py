"""A content-addressed disk cache of the vision side: what an image's encoding hands the pruning step.

The vision side of a request (the features the pruning reads, the tapped layer's attention summary with its keys,
the image's layout and placeholder count) depends only on the image and the model, never on the question. easy-VQA
asks about ten questions per image, MME, POPE, GQA and VQAv2 repeat images too, and every job of a sweep encodes
the same images again: :class:`VisionCache` stores each image's :class:`~fopru.models.inputs.VisualGroup` row once,
under a digest of

- the checkpoint's fingerprint (:func:`~fopru.models.loading.checkpoint_fingerprint`), the family, dtype,
  attention kernel, device type and library versions;
- the image processor's settings;
- the tap: the resolved layer and the reduction (what attention is summarised, and how);
- the image's own vision inputs as the processor made them (their dtype, shape and bytes).

Entries are files ``<digest[:2]>/<digest>.pt`` written atomically (a temporary file renamed into place), so
concurrent jobs and DDP ranks sharing the folder never read a torn entry; an unreadable entry is a miss. When the
folder grows past ``max_gb``, the least recently used entries (by modification time, refreshed on every hit) are
evicted under a ``flock`` until it is back under 90% of the cap. Each process also keeps the entries it read or
wrote last in memory (up to ``memory_mb``, least recently used dropped first): a hit there reads no file. The text
side (prompts, text-guided strategies, in-LLM pruning) runs after the cache on every request: nothing
text-dependent is ever stored.

Entries are pickles whose references to the model's own modules and parameters (the projector, LLaVA-NeXT's
newline) are stored by name and resolved against the loading model; only torch, fopru and a few standard globals
may be unpickled. The folder is trusted as a checkpoint folder is.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import pickle
import tempfile
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fopru.errors import ConfigError
from fopru.models.inputs import VisualGroup

log = logging.getLogger(__name__)

#: Bumped whenever what an entry holds changes, so that older entries are never read as newer ones.
FORMAT_VERSION = 1
LOCK_FILE = ".lock"
#: Modules whose globals an entry may name (tensor rebuilding, fopru's dataclasses, partial and getattr for bound
#: methods such as LLaVA-NeXT's newline insertion).
_ALLOWED_MODULES = ("torch", "fopru", "collections")
_ALLOWED_GLOBALS = {("functools", "partial"), ("builtins", "getattr"), ("builtins", "slice")}


def default_folder() -> Path:
    """``$FOPRU_CACHE/vision`` (default ``~/.cache/fopru/vision``)."""
    return Path(os.environ.get("FOPRU_CACHE", Path.home() / ".cache" / "fopru")) / "vision"


@dataclass(frozen=True)
class CacheStats:
    """Counters of one cache object: images found (``memory_hits`` of them in memory, without reading a file),
    images encoded (misses, duplicates counted once), bytes written and entries evicted from the folder."""

    hits: int = 0
    misses: int = 0
    written_bytes: int = 0
    evicted: int = 0
    memory_hits: int = 0


class VisionCache:
    """The disk cache of encoded images (see the module docstring); ``cache=off`` builds a disabled one.

    Args:
        enabled: ``False``: every image is encoded on every request (exactly the uncached path).
        folder: where entries live; ``None``: :func:`default_folder`.
        max_gb: the size cap of the folder, in GB (10^9 bytes).
        memory_mb: the size cap of the in-memory layer, in MB (10^6 bytes, counted as the entries' stored size);
            0: every hit reads its file.
    """

    def __init__(
        self, enabled: bool = True, folder: str | None = None, max_gb: float = 8.0, memory_mb: float = 512.0
    ) -> None:
        if not isinstance(enabled, bool):
            raise ConfigError(f"cache.enabled={enabled!r} must be true or false")
        if isinstance(max_gb, bool) or not isinstance(max_gb, int | float) or max_gb <= 0:
            raise ConfigError(f"cache.max_gb={max_gb!r} must be a positive number of GB")
        if isinstance(memory_mb, bool) or not isinstance(memory_mb, int | float) or memory_mb < 0:
            raise ConfigError(f"cache.memory_mb={memory_mb!r} must be a number of MB >= 0")
        self.enabled = enabled
        self.folder = Path(folder).expanduser() if folder else default_folder()
        self.max_bytes = int(max_gb * 1e9)
        self.memory_bytes = int(memory_mb * 1e6)
        #: digest -> (entry, its stored size), least recently used first; entries of the model last seen only.
        self._memory: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._memory_size = 0
        self.stats = CacheStats()
        self._size: int | None = None  # bytes in the folder as last scanned, plus what this process wrote since
        self._model: tuple[int, dict[int, tuple[str, Any]]] | None = None

    def __repr__(self) -> str:
        state = f"folder={str(self.folder)!r}, max_gb={self.max_bytes / 1e9:g}" if self.enabled else "off"
        return f"VisionCache({state})"

    # -- keys ------------------------------------------------------------------------------------------------
    @staticmethod
    def context_digest(parts: dict[str, Any]) -> str:
        """The digest of everything but the image an entry depends on (``parts`` is JSON-serialisable)."""
        text = json.dumps({"format": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    @staticmethod
    def image_digest(context: str, tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
        """The digest of one image's vision inputs (name, dtype, shape, bytes) under ``context``: BLAKE2b over
        the tensors' memory as it is (no copy where it is already contiguous on the CPU)."""
        digest = hashlib.blake2b(context.encode(), digest_size=32)
        for name, tensor in tensors:
            flat = tensor.detach().contiguous().cpu()
            digest.update(f"{name}:{flat.dtype}:{tuple(flat.shape)}".encode())
            if flat.numel():
                digest.update(flat.reshape(-1).view(torch.uint8).numpy().data)
        return digest.hexdigest()

    def path(self, digest: str) -> Path:
        return self.folder / digest[:2] / f"{digest}.pt"

    # -- entries ---------------------------------------------------------------------------------------------
    def get(self, digest: str, model: nn.Module) -> Any | None:
        """The entry stored under ``digest`` (references into ``model`` resolved), or ``None``."""
        if not self.enabled:
            return None
        path = self.path(digest)
        remembered = self._remembered(digest, model)
        if remembered is not None:
            with contextlib.suppress(OSError):  # still the folder's most recently used: no read, one timestamp
                os.utime(path)
            self.stats = _bump(self.stats, hits=1, memory_hits=1)
            return remembered
        try:
            data = path.read_bytes()
            entry = _EntryUnpickler(io.BytesIO(data), self.references(model)).load()
        except FileNotFoundError:
            return None
        except Exception as error:
            log.warning("vision cache entry %s is unreadable (%s): encoding the image again", path, error)
            return None
        with contextlib.suppress(OSError):  # the least recently used entries are evicted first
            os.utime(path)
        self.stats = _bump(self.stats, hits=1)
        self._remember(digest, entry, len(data))
        return entry

    def _remembered(self, digest: str, model: nn.Module) -> Any | None:
        if self._model is None or self._model[0] != id(model):
            self.forget()  # entries refer to the model they were read or written for
            return None
        found = self._memory.get(digest)
        if found is None:
            return None
        self._memory.move_to_end(digest)
        return found[0]

    def _remember(self, digest: str, entry: Any, size: int) -> None:
        if size > self.memory_bytes:
            return
        previous = self._memory.pop(digest, None)
        if previous is not None:
            self._memory_size -= previous[1]
        self._memory[digest] = (entry, size)
        self._memory_size += size
        while self._memory_size > self.memory_bytes:
            _, (_, dropped) = self._memory.popitem(last=False)
            self._memory_size -= dropped

    def forget(self, digest: str | None = None) -> None:
        """Drop one entry (or, without ``digest``, all) from the in-memory layer; the files stay."""
        if digest is None:
            self._memory.clear()
            self._memory_size = 0
            return
        found = self._memory.pop(digest, None)
        if found is not None:
            self._memory_size -= found[1]

    def put(self, digest: str, entry: Any, model: nn.Module) -> None:
        """Store ``entry`` under ``digest`` (atomically), then evict when the folder exceeds the cap."""
        if not self.enabled:
            return
        buffer = io.BytesIO()
        _EntryPickler(buffer, self.references(model)).dump(entry)
        data = buffer.getvalue()
        path = self.path(digest)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.replace(temporary, path)
        except OSError as error:  # a full or read-only disk costs only the reuse
            log.warning("vision cache: cannot write %s (%s)", path, error)
            return
        self._remember(digest, entry, len(data))
        self.stats = _bump(self.stats, written_bytes=len(data))
        if self._size is None:
            self._size = self.scan_size()
        else:
            self._size += len(data)
        if self._size > self.max_bytes:
            self.evict()

    def references(self, model: nn.Module) -> dict[int, tuple[str, Any]]:
        """The named objects of ``model`` (:func:`model_references`), listed once per model."""
        if self._model is None or self._model[0] != id(model):
            self.forget()
            self._model = (id(model), model_references(model))
        return self._model[1]

    def count_miss(self, images: int) -> None:
        """Count ``images`` encoded because no entry held them."""
        self.stats = _bump(self.stats, misses=images)

    def scan_size(self) -> int:
        """Bytes held by the folder's entries now."""
        return sum(size for _, size, _ in self._entries())

    def _entries(self) -> list[tuple[float, int, Path]]:
        found = []
        for path in self.folder.glob("*/*.pt"):
            try:
                stat = path.stat()
            except FileNotFoundError:  # evicted by another process meanwhile
                continue
            found.append((stat.st_mtime, stat.st_size, path))
        return found

    def evict(self) -> None:
        """Delete the least recently used entries until the folder holds at most 90% of the cap. One process
        evicts at a time; another that finds the lock taken leaves it to the holder."""
        self.folder.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            entries = sorted(self._entries())
            total = sum(size for _, size, _ in entries)
            target = int(0.9 * self.max_bytes)
            evicted = 0
            for _, size, path in entries:
                if total <= target:
                    break
                path.unlink(missing_ok=True)
                self.forget(path.stem)
                total -= size
                evicted += 1
            self._size = total
            self.stats = _bump(self.stats, evicted=evicted)
        finally:
            os.close(descriptor)


def _bump(stats: CacheStats, **added: int) -> CacheStats:
    return CacheStats(**{field.name: getattr(stats, field.name) + added.get(field.name, 0) for field in fields(stats)})


def model_references(model: nn.Module) -> dict[int, tuple[str, Any]]:
    """``id`` -> (name, object) of every module, parameter and buffer of ``model``: what entries refer to by name."""
    named: dict[int, tuple[str, Any]] = {}
    for kind, items in (
        ("module", model.named_modules()),
        ("parameter", model.named_parameters()),
        ("buffer", model.named_buffers()),
    ):
        for name, value in items:
            named.setdefault(id(value), (f"{kind}:{name}", value))
    return named


class _EntryPickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, references: dict[int, tuple[str, Any]]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.references = references

    def persistent_id(self, obj: Any) -> str | None:
        if isinstance(obj, nn.Module | torch.Tensor):
            reference = self.references.get(id(obj))
            if reference is None and isinstance(obj, nn.Module):
                raise ConfigError(f"a cached vision entry refers to a {type(obj).__name__} outside the model")
            return None if reference is None else reference[0]
        return None


class _EntryUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, references: dict[int, tuple[str, Any]]) -> None:
        super().__init__(file)
        self.model_objects = dict(references.values())

    def persistent_load(self, pid: Any) -> Any:
        if pid not in self.model_objects:
            raise pickle.UnpicklingError(f"the model has no {pid!r}, which a vision cache entry refers to")
        return self.model_objects[pid]

    def find_class(self, module: str, name: str) -> Any:
        if module.split(".")[0] in _ALLOWED_MODULES or (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"a vision cache entry may not name {module}.{name}")


# -- entries as visual groups ---------------------------------------------------------------------------------
def _rows(value: Any, row: int) -> Any:
    """Row ``row`` of every tensor in ``value`` (a tensor or a dataclass of them), copied to the CPU on its own
    storage (a view would pickle the whole batch)."""
    if isinstance(value, torch.Tensor):
        return value[row : row + 1].detach().to("cpu", copy=True)
    if value is None or not hasattr(value, "__dataclass_fields__"):
        return value
    return replace(
        value, **{f.name: _rows(getattr(value, f.name), row) for f in fields(value) if _is_tensor(value, f.name)}
    )


def _is_tensor(value: Any, name: str) -> bool:
    return isinstance(getattr(value, name), torch.Tensor)


def split_images(groups: Sequence[VisualGroup]) -> list[VisualGroup]:
    """One single-image :class:`VisualGroup` per image of ``groups`` (in order), tensors on the CPU."""
    single = []
    for group in groups:
        for row in range(group.features.shape[0]):
            single.append(
                replace(
                    group,
                    features=_rows(group.features, row),
                    attention=_rows(group.attention, row),
                    cls_features=_rows(group.cls_features, row),
                    deepstack=tuple(_rows(level, row) for level in group.deepstack),
                )
            )
    return single


def _moved(value: Any, device: torch.device | str) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if value is None or not hasattr(value, "__dataclass_fields__"):
        return value
    return replace(
        value, **{f.name: _moved(getattr(value, f.name), device) for f in fields(value) if _is_tensor(value, f.name)}
    )


def _joinable(first: VisualGroup, second: VisualGroup) -> bool:
    return (
        first.finish is None
        and second.finish is None
        and first.layout == second.layout
        and first.placeholders == second.placeholders
        and first.project is second.project
        and (first.attention is None) == (second.attention is None)
        and (first.cls_features is None) == (second.cls_features is None)
        and len(first.deepstack) == len(second.deepstack)
    )


def _stack(values: Sequence[Any]) -> Any:
    head = values[0]
    if isinstance(head, torch.Tensor):
        return torch.cat(list(values))
    if head is None or not hasattr(head, "__dataclass_fields__"):
        return head
    joined = {}
    for f in fields(head):
        parts = [getattr(value, f.name) for value in values]
        if any(isinstance(part, torch.Tensor) for part in parts):
            joined[f.name] = None if any(part is None for part in parts) else torch.cat(parts)
    return replace(head, **joined)


def join_images(single: Sequence[VisualGroup], device: torch.device | str, together: bool) -> list[VisualGroup]:
    """Single-image groups as the family hands them over, on ``device``: runs of consecutive images with the same
    layout, placeholders and projector in one group each when the family groups images (``together``), else one
    group per image."""
    runs: list[list[VisualGroup]] = []
    for group in single:
        if together and runs and _joinable(runs[-1][-1], group):
            runs[-1].append(group)
        else:
            runs.append([group])
    return [
        replace(
            run[0],
            features=_moved(_stack([group.features for group in run]), device),
            attention=_moved(_stack([group.attention for group in run]), device),
            cls_features=_moved(_stack([group.cls_features for group in run]), device),
            deepstack=tuple(
                _moved(_stack([group.deepstack[level] for group in run]), device)
                for level in range(len(run[0].deepstack))
            ),
        )
        for run in runs
    ]
