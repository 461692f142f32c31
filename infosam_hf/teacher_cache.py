"""A cache of the frozen teacher's image embeddings, keyed by the exact image content.

The teacher's image encoder is the most expensive part of InfoSAM's overhead (a whole
extra ViT forward per step), and for a frozen teacher its output depends on the
pixels alone. Keying by a hash of the preprocessed pixel tensor makes the cache exact
whatever the data pipeline does: an augmented image simply misses and is computed.
From the second epoch on (without random augmentation) only the teacher's small
mask decoder runs.

It is exact only if the teacher's image encoder never changes: a separate frozen
teacher, or the shared-weights teacher when the student trains the encoder through
adapters only (LoRA etc., which `disable_adapter()` switches off). `for_model` refuses
the configuration where the student's `modules_to_save` would copy encoder layers.

`decide_teacher_cache` resolves `InfoSAMTrainingArguments.cache_teacher_embeddings` (default "auto") for a
run: on where the data comes back unchanged (a known size, more than one epoch, a collator and
dataset known to keep the pixels) and the entries fit the memory bound; it refuses, in every mode,
a teacher whose image encoder trains or applies dropout, where the cache could serve a stale entry.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn


def content_key(pixels: torch.Tensor) -> str:
    """A collision-resistant digest of one image's preprocessed pixels (dtype and shape included)."""
    data = pixels.detach().contiguous().cpu()
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{data.dtype}{tuple(data.shape)}".encode())
    digest.update(data.view(torch.uint8).numpy().tobytes() if data.dtype == torch.bfloat16 else data.numpy().tobytes())
    return digest.hexdigest()


def _map(fn, encoding):
    """`fn` on every tensor of an encoding: a tensor, or a dict / list of them (SAM 2's feature levels,
    SAM-HQ's intermediate embeddings), the structure kept."""
    if isinstance(encoding, dict):
        return {k: _map(fn, v) for k, v in encoding.items()}
    if isinstance(encoding, (list, tuple)):
        return [_map(fn, v) for v in encoding]
    return fn(encoding)


def _stack(entries: list):
    first = entries[0]
    if isinstance(first, dict):
        return {k: _stack([e[k] for e in entries]) for k in first}
    if isinstance(first, (list, tuple)):
        return [_stack([e[i] for e in entries]) for i in range(len(first))]
    return torch.stack(entries)


def flatten_entry(entry) -> dict[str, torch.Tensor]:
    """One image's entry as flat named tensors for the disk store: a list under `name` becomes `name.0`, `name.1`..."""
    if isinstance(entry, torch.Tensor):
        return {"image_embeddings": entry}
    flat = {}
    for name, value in entry.items():
        if isinstance(value, (list, tuple)):
            flat.update({f"{name}.{i}": t for i, t in enumerate(value)})
        else:
            flat[name] = value
    return flat


def unflatten_entry(flat: dict[str, torch.Tensor]) -> dict:
    """The inverse of `flatten_entry` (always a dict: what `model(**entry)` takes)."""
    entry: dict = {}
    for name in sorted(flat, key=lambda n: (n.rsplit(".", 1)[0], int(n.rsplit(".", 1)[1]) if "." in n else -1)):
        base, _, index = name.rpartition(".")
        if base and index.isdigit():
            entry.setdefault(base, []).append(flat[name])
        else:
            entry[name] = flat[name]
    return entry


class TeacherEmbeddingCache:
    """In-memory LRU cache (on the CPU by default) of teacher image embeddings, one entry per image.

    An entry is whatever the teacher's family needs in place of the pixels: a tensor, or a dict /
    list of per-batch tensors (see `SamFamily.cache_inputs`); `lookup` returns the structure `store` got."""

    def __init__(
        self,
        max_items: int | None = None,
        storage_device: str | torch.device = "cpu",
        disk_store=None,
        storage_dtype: str | torch.dtype | None = None,
    ):
        """`disk_store`: an optional `TeacherEmbeddingStore` behind the memory (read on a miss, written on store).
        `storage_dtype` (e.g. bfloat16): entries kept rounded to it in memory, handed back in the teacher's own
        dtype; the disk store always gets the exact entry."""
        self.max_items = max_items
        self.disk_store = disk_store
        self.storage_device = torch.device(storage_device)
        self.storage_dtype = getattr(torch, storage_dtype) if isinstance(storage_dtype, str) else storage_dtype
        self._compute_dtype = None  # the teacher's output dtype, restored on lookup
        self._entries: OrderedDict[str, object] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def for_model(cls, model: nn.Module, **kwargs) -> TeacherEmbeddingCache:
        if getattr(model, "teacher", None) is None:
            shadowed = [
                name
                for name, param in model.student.named_parameters()
                if "vision_encoder" in name and "modules_to_save" in name
            ]
            if shadowed:
                raise ValueError(
                    "cache_teacher_embeddings cannot be exact here: the student trains image-encoder weights in full "
                    f"through modules_to_save (e.g. {shadowed[0]}), so the shared-weights teacher would see them. "
                    "Train the encoder through adapters only, pass a separate teacher model, or turn the cache off."
                )
        return cls(**kwargs)

    def lookup(self, pixel_values: torch.Tensor) -> tuple[object | None, list[str]]:
        """(embeddings, keys): the batch's embeddings if every image is cached, else None (the teacher runs).

        Memory first, then the disk store (an entry read from disk is kept in memory too).
        """
        keys = [content_key(p) for p in pixel_values]
        found = {}
        for key in keys:
            if key in self._entries:
                found[key] = self._entries[key]
            elif self.disk_store is not None and (entry := self.disk_store.get(key)) is not None:
                found[key] = unflatten_entry(entry)
                self._remember(key, found[key])
        if len(found) < len(set(keys)):
            self.misses += 1
            return None, keys
        self.hits += 1
        for key in keys:
            if key in self._entries:
                self._entries.move_to_end(key)
        stacked = _stack([self._restored(found[k]) for k in keys])
        return _map(lambda t: t.to(pixel_values.device), stacked), keys

    def store(self, keys: list[str], embeddings) -> None:
        for i, key in enumerate(keys):
            entry = _map(lambda t, i=i: t[i].detach(), embeddings)
            self._remember(key, entry)
            if self.disk_store is not None:
                self.disk_store.put(key, flatten_entry(entry))

    def _remember(self, key: str, entry) -> None:
        self._entries[key] = _map(lambda t: t.to(self.storage_device, self._storage_dtype_of(t), copy=True), entry)
        self._entries.move_to_end(key)
        while self.max_items is not None and len(self._entries) > self.max_items:
            self._entries.popitem(last=False)

    def _storage_dtype_of(self, tensor: torch.Tensor) -> torch.dtype:
        if self.storage_dtype is None or not tensor.is_floating_point():
            return tensor.dtype
        self._compute_dtype = self._compute_dtype or tensor.dtype
        return self.storage_dtype

    def _restored(self, entry):
        if self.storage_dtype is None or self._compute_dtype is None:
            return entry
        return _map(lambda t: t.to(self._compute_dtype) if t.dtype == self.storage_dtype else t, entry)

    def nbytes(self) -> int:
        """Memory the entries hold."""
        total = 0
        for entry in self._entries.values():
            total += sum(t.numel() * t.element_size() for t in flatten_entry(entry).values())
        return total


# --------------------------------------------------------------------------- cache_teacher_embeddings="auto"

DEFAULT_MEMORY_SHARE = 0.25  # of the memory available when training starts, shared by the machine's processes


@dataclass(frozen=True)
class TeacherCacheDecision:
    """Whether this run caches the teacher's image embeddings, and why (printed by `examples/train.py`)."""

    enabled: bool
    reason: str
    max_items: int | None = None
    storage_dtype: str | None = None

    def __str__(self) -> str:
        return f"Teacher embedding cache {'on' if self.enabled else 'off'}: {self.reason}"

    def make_cache(self, model: nn.Module, disk_store=None) -> TeacherEmbeddingCache | None:
        if not self.enabled:
            return None
        return TeacherEmbeddingCache.for_model(
            model, max_items=self.max_items, disk_store=disk_store, storage_dtype=self.storage_dtype
        )


def decide_teacher_cache(
    model: nn.Module,
    args,
    train_dataset=None,
    data_collator=None,
    storage_device: str | torch.device = "cpu",
) -> TeacherCacheDecision:
    """`InfoSAMTrainingArguments.cache_teacher_embeddings` (of `args`) resolved for one run of `model`, an `InfoSAMModel`.

    The cache is keyed by the pixels' content, so it never returns an embedding for other pixels; what
    can make it wrong is a teacher whose image encoder changes during training, which is refused here
    in every mode. "auto" also leaves it off where it cannot pay: data seen once or of unknown size,
    pixels that change per epoch (augmentation: every lookup would miss and fill memory), and
    embeddings that do not fit the memory bound. Where it cannot know whether the collator or the
    dataset augments, it stays off and says how to declare it (`augments_pixels = False`).
    """
    from .training_args import run_setting

    config = model.infosam_config
    choice = run_setting(args, "cache_teacher_embeddings")
    storage_dtype = run_setting(args, "teacher_cache_dtype")
    store, max_gb = run_setting(args, "teacher_store"), run_setting(args, "teacher_cache_max_gb")
    stale = _changing_teacher(model)
    if stale and (choice is True or store):
        asked = f"--teacher_store {store}" if store else "--cache_teacher_embeddings true"
        raise ValueError(f"{asked} cannot be exact here: {stale}.")
    if store:
        return TeacherCacheDecision(True, f"--teacher_store {store} implies it.", None, storage_dtype)
    if choice is True:
        return _forced(model, max_gb, storage_dtype)
    if choice is False:
        return TeacherCacheDecision(False, "--cache_teacher_embeddings false was passed.")
    if not config.uses_distillation:
        return TeacherCacheDecision(False, "no teacher runs (lambda_1 = lambda_2 = 0).")
    if train_dataset is None:
        return TeacherCacheDecision(False, "no training data.")
    try:
        num_images = len(train_dataset)
    except TypeError:
        return TeacherCacheDecision(
            False, "the training data is a stream of unknown size, so how often an image comes back is not known. "
            "--cache_teacher_embeddings true caches anyway (bounded by --teacher_cache_max_gb if given)."
        )
    if args.max_steps > 0:
        world_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        passes = args.max_steps * world_batch / max(num_images, 1)
        seen = f"{args.max_steps} steps x {world_batch} images over {num_images} images: {passes:.3g} epochs"
    else:
        passes = float(args.num_train_epochs)
        seen = f"{num_images} images x {passes:g} epochs"
    if passes <= 1:
        return TeacherCacheDecision(False, f"{seen}: every image is seen once, nothing would be read back.")
    for what, changes in (("data collator", _augments(data_collator)), ("training dataset", _augments(train_dataset))):
        if changes:
            return TeacherCacheDecision(False, f"the {what} {changes}. --cache_teacher_embeddings true caches anyway.")
    if stale:
        return TeacherCacheDecision(False, f"it could not be exact: {stale}.")
    try:
        TeacherEmbeddingCache.for_model(model)
    except ValueError as err:
        return TeacherCacheDecision(False, str(err))
    per_image = teacher_entry_bytes(model, storage_dtype)
    needed = per_image * num_images
    bound, bound_text = _memory_bound(max_gb, storage_device)
    precision = " in bfloat16" if storage_dtype else ""
    size = f"{_mb(per_image)} per image{precision}, {_mb(needed)} for {num_images} images"
    if needed > bound:
        hint = "" if storage_dtype else ", --teacher_cache_dtype bfloat16 halves it"
        return TeacherCacheDecision(
            False, f"{seen}, but {size} exceed {bound_text} (--teacher_cache_max_gb raises the bound{hint})."
        )
    distributed = (
        f" Each of the {args.world_size} processes caches the images it is given; a batch is read back once all "
        "its images are in, so the savings grow as the epochs cover the data." if args.world_size > 1 else ""
    )
    return TeacherCacheDecision(
        True,
        f"{seen}; {size}, within {bound_text}. The teacher's image encoder runs once per image (the first epoch), "
        f"later epochs read its embeddings back.{distributed} --cache_teacher_embeddings false turns it off.",
        max_items=int(bound // max(per_image, 1)),  # >= num_images here; an LRU bound for DDP and evaluation
        storage_dtype=storage_dtype,
    )


def _forced(model, max_gb, storage_dtype) -> TeacherCacheDecision:
    if max_gb is None:
        return TeacherCacheDecision(True, "--cache_teacher_embeddings true was passed (no memory bound).", None,
                                    storage_dtype)
    max_items = int(max_gb * 2**30 // max(teacher_entry_bytes(model, storage_dtype), 1))
    return TeacherCacheDecision(
        True, f"--cache_teacher_embeddings true was passed; the {max_items} most recently used images are kept "
        f"(--teacher_cache_max_gb {max_gb:g}).", max_items, storage_dtype
    )


def teacher_entry_bytes(model: nn.Module, storage_dtype: str | None = None) -> int:
    """Bytes one image's cache entry takes, measured on one blank image through the teacher's real path
    (the family's decoder inputs: one tensor for SAM, several levels for SAM 2, more for SAM-HQ)."""
    teacher = model.teacher if model.teacher is not None else model.student.get_base_model()
    from .models import family_of

    size = family_of(teacher).image_size(teacher.config)
    device = next(model.teacher_image_encoder.parameters()).device
    pixels = torch.zeros(1, 3, size, size, device=device)
    box = torch.tensor([[[0.0, 0.0, size - 1.0, size - 1.0]]], device=device)
    probe = TeacherEmbeddingCache(storage_dtype=storage_dtype)
    saved, model.teacher_cache = model.teacher_cache, probe
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # draws nothing from the run
            model._run_teacher(pixels, {"input_boxes": box}, multimask_output=False)
    finally:
        model.teacher_cache = saved
    return probe.nbytes()


def _changing_teacher(model: nn.Module) -> str | None:
    """Why the teacher's image embeddings of one image could differ between two epochs, or None."""
    encoder = model.teacher_image_encoder
    switched_off = _adapter_modules(encoder)  # what `disable_adapter()` takes out of the teacher's forward
    off_params = {id(p) for m in switched_off for p in m.parameters(recurse=False)}
    trained = [n for n, p in encoder.named_parameters() if p.requires_grad and id(p) not in off_params]
    if trained:
        return (
            f"{len(trained)} image-encoder weight(s) the teacher runs are trained (e.g. {trained[0]}); train the "
            "encoder through adapters only, or pass a separate frozen teacher"
        )
    if model.teacher is None:  # the shared teacher runs in the student's training mode
        vision = model.sam_config.vision_config
        rates = {n: getattr(vision, n) for n in dir(vision) if n.endswith("dropout") and not n.startswith("_")}
        rates.update(
            {n: m.p for n, m in encoder.named_modules() if isinstance(m, nn.Dropout) and m not in switched_off}
        )
        random = {n: p for n, p in rates.items() if isinstance(p, float) and p > 0}
        if random:
            name, rate = next(iter(random.items()))
            return f"the shared teacher's image encoder applies dropout in training ({name}={rate:g})"
    return None


def _adapter_modules(encoder: nn.Module) -> set[nn.Module]:
    """The modules of PEFT layers other than their base layer (LoRA's A/B and dropout, the bottleneck Adapter and
    its LayerNorm copies, `modules_to_save` copies): off while the shared teacher runs."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    found = set()
    for module in encoder.modules():
        if isinstance(module, BaseTunerLayer) or hasattr(module, "original_module"):
            for name, child in module.named_children():
                if name not in ("base_layer", "original_module"):
                    found.update(child.modules())
    return found


def _augments(obj) -> str | None:
    """None when `obj` (a collator or a dataset) is known to give the same pixels every epoch, else why not."""
    if obj is None or isinstance(obj, (list, tuple)):
        return None
    name = getattr(obj, "__qualname__", None) or type(obj).__name__
    declared = getattr(obj, "augments_pixels", None)
    if declared is not None:
        return f"{name} declares augments_pixels=True: its pixels change every epoch" if declared else None
    from transformers import default_data_collator

    from .data.collator import SamSegmentationCollator

    if obj is default_data_collator:
        return None
    if isinstance(obj, SamSegmentationCollator) and type(obj).__call__ is SamSegmentationCollator.__call__:
        return None  # draws prompts, leaves the pixels as they are
    if isinstance(obj, torch.utils.data.ConcatDataset):
        return next((why for why in map(_augments, obj.datasets) if why), None)
    if isinstance(obj, torch.utils.data.Subset):
        return _augments(obj.dataset)
    if "datasets" in sys.modules and isinstance(obj, sys.modules["datasets"].Dataset):
        if obj.format.get("type") != "custom":
            return None
        from .data.cache import _Decode
        from .data.sources import _Preprocess

        transform = obj.format["format_kwargs"].get("transform")
        owner = getattr(transform, "__self__", transform)  # a bound method's object
        if isinstance(owner, (_Preprocess, _Decode)) or getattr(owner, "augments_pixels", None) is False:
            return None  # decoding and SAM's resize / normalisation: the same pixels every time
        what = f"{name} with the transform {getattr(transform, '__qualname__', type(transform).__name__)}"
    elif callable(obj) and not hasattr(obj, "__getitem__"):
        what = name  # a collator
    else:
        what = f"{name} (its __getitem__ may augment)"
    return (
        f"{what} is not known to give the same pixels every epoch: an augmenting one changes them, so every lookup "
        "would miss and only fill memory. If it does not, set `augments_pixels = False` on it"
    )


def _memory_bound(max_gb: float | None, storage_device) -> tuple[float, str]:
    if max_gb is not None:
        return max_gb * 2**30, f"--teacher_cache_max_gb {max_gb:g}"
    device = torch.device(storage_device)
    available = available_memory_bytes(device)
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    where = "GPU memory free" if device.type == "cuda" else "RAM available"
    share = f"{DEFAULT_MEMORY_SHARE:.0%} of the {_gb(available)} {where}"
    if processes > 1:
        share += f" / {processes} processes on this machine"
    bound = DEFAULT_MEMORY_SHARE * available / processes
    return bound, f"the bound of {_gb(bound)} ({share}; --teacher_cache_max_gb sets it)"


def available_memory_bytes(device: torch.device) -> int:
    """Free memory where the cache would live: the GPU's, or the RAM the kernel could give without swapping."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MB" if n < 2**30 else _gb(n)


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB"
