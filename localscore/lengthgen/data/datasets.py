"""Training data: an on-the-fly scene stream, and fixed scene datasets written to and read from a file.

Both streams yield :class:`SceneBatch` ``(images, cond, scene)`` batches forever, are deterministic
from their seed, and expose ``state_dict`` / ``load_state_dict`` (their random generator and
position), so a trainer can checkpoint them and resume the exact same sequence of batches. For
multi-process training they draw the *global* batch and keep only this process's shard
(``set_shard(rank, world_size)``): the union of the shards is the same batch whatever the number of
processes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset

from ..._errors import describe, fail
from ..._io import load_payload, save_payload
from ...conditions import Conditions
from .scenes import Labelling, Scene, SceneConfig, label_scene, render_scene, sample_scenes

__all__ = [
    "DatasetStream",
    "SceneBatch",
    "SceneDataset",
    "SceneStream",
    "read_dataset",
    "write_dataset",
]

_DATASET_KIND = "localscore-scenes"
_DATASET_VERSION = 1


class SceneBatch(NamedTuple):
    """One training batch: ``images [b, 3, H, W]`` (in the stream's value range), their conditioner
    sets ``cond`` (``b`` images) and the full ``scene`` description (all objects, labelled or not)."""

    images: Tensor
    cond: Conditions
    scene: Scene


def _check_int(value: Any, where: str, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise fail(where, f"`{name}` is {value!r}, expected an int >= {low}.")
    return value


def _check_range(value_range: Any, where: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise fail(where, f"`value_range` is {value_range!r}, expected (low, high) floats.") from None
    if not lo < hi:
        raise fail(where, f"`value_range` is {value_range!r}, expected low < high.",
                   "use (-1.0, 1.0) for diffusion training (sigma_data = 0.5) or (0.0, 1.0).")
    return lo, hi


class _Sharded:
    """Global-batch sharding shared by the streams."""

    batch_size: int
    rank: int = 0
    world_size: int = 1
    _where = "stream"

    def set_shard(self, rank: int, world_size: int) -> None:
        """Keep only shard ``rank`` of ``world_size`` of every global batch (equal contiguous slices)."""
        _check_int(world_size, self._where, "world_size", 1)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise fail(self._where, f"`rank` is {rank!r}, expected an int in 0..{world_size - 1}.")
        if self.batch_size % world_size != 0:
            raise fail(self._where, f"the global batch size {self.batch_size} is not divisible by "
                       f"world_size = {world_size}.",
                       "choose a global batch size that is a multiple of the number of processes.")
        self.rank, self.world_size = rank, world_size

    @property
    def local_batch_size(self) -> int:
        """Images per process: ``batch_size // world_size``."""
        return self.batch_size // self.world_size

    def _shard(self) -> slice:
        b = self.local_batch_size
        return slice(self.rank * b, (self.rank + 1) * b)


class SceneStream(_Sharded, IterableDataset):
    """An endless, seeded stream of freshly drawn and rendered scenes.

    Each batch draws ``batch_size`` scenes with :func:`~localscore.lengthgen.data.sample_scenes`, labels them
    with :func:`~localscore.lengthgen.data.label_scene` (``config.labelling``), renders this process's shard
    and maps ``[0, 1]`` to ``value_range``: ``images = lo + (hi - lo) * render``.

    Use it directly as an iterator (``next(stream)``), or in a ``DataLoader(stream, batch_size=None,
    num_workers=0)``; worker processes would each copy the generator and repeat batches.

    Args:
        config: the scene configuration.
        batch_size: the *global* batch size.
        seed: seed of the stream's own ``torch.Generator``.
        value_range: ``(lo, hi)`` of the images; ``(-1, 1)`` suits EDM with ``sigma_data = 0.5``.
        device: where images and conditions are put.

    Examples:
        >>> stream = SceneStream(SceneConfig(resolution=16), batch_size=4, seed=0)
        >>> batch = next(stream)
        >>> batch.images.shape, batch.cond.batch_size
        (torch.Size([4, 3, 16, 16]), 4)
    """

    _where = "SceneStream"

    def __init__(self, config: SceneConfig, batch_size: int, *, seed: int = 0,
                 value_range: tuple[float, float] = (-1.0, 1.0), device: torch.device | str = "cpu") -> None:
        if not isinstance(config, SceneConfig):
            raise fail(self._where, f"`config` is {describe(config)}, expected a SceneConfig.")
        self.config = config
        self.batch_size = _check_int(batch_size, self._where, "batch_size", 1)
        self.seed = _check_int(seed, self._where, "seed", 0)
        self.value_range = _check_range(value_range, self._where)
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        self.batches = 0

    def __iter__(self) -> Iterator[SceneBatch]:
        return self

    def __next__(self) -> SceneBatch:
        scene = sample_scenes(self.config, self.batch_size, generator=self.generator)
        cond = label_scene(scene, self.config.labelling, generator=self.generator)
        self.batches += 1
        sl = self._shard()
        part = scene[sl]
        lo, hi = self.value_range
        images = lo + (hi - lo) * render_scene(part, self.config)
        return SceneBatch(images.to(self.device), cond[sl].to(self.device), part.to(self.device))

    def state_dict(self) -> dict[str, Any]:
        """The stream's position: its generator state and the number of batches drawn."""
        return {"kind": "SceneStream", "seed": self.seed, "batches": self.batches,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position saved by :meth:`state_dict`."""
        if not isinstance(state, dict) or state.get("kind") != "SceneStream":
            raise fail(self._where, f"cannot restore from {describe(state)}: not a SceneStream state.",
                       "restore a stream of the same kind as the one the checkpoint was made with.")
        self.generator.set_state(state["generator"])
        self.batches = int(state["batches"])


class SceneDataset(Dataset):
    """A fixed set of rendered scenes (see :func:`write_dataset` / :func:`read_dataset`).

    ``dataset[i]`` is ``(image [3, H, W] float in [0, 1], i)``; :attr:`scene` holds every object of
    every image and :attr:`config` how they were drawn.

    Attributes:
        images: ``[N, 3, H, W]``, ``uint8`` (value ``round(255 x)``) or ``float32`` in ``[0, 1]``.
        scene: the scenes, a :class:`~localscore.lengthgen.data.Scene` with batch ``N``.
        config: the :class:`~localscore.lengthgen.data.SceneConfig` used.
        seed: the seed the scenes were drawn with.
    """

    def __init__(self, images: Tensor, scene: Scene, config: SceneConfig, seed: int) -> None:
        if images.dim() != 4 or images.shape[0] != scene.batch_size or images.shape[1] != 3:
            raise fail("SceneDataset", f"`images` has shape {tuple(images.shape)}, expected [N, 3, H, W] with "
                       f"N = {scene.batch_size}.")
        self.images = images
        self.scene = scene
        self.config = config
        self.seed = seed

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def image(self, index: Tensor | int | slice) -> Tensor:
        """Images as float32 in ``[0, 1]`` (``uint8`` storage is divided by 255)."""
        x = self.images[index]
        return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.image(index), index


def write_dataset(path: str | os.PathLike[str], config: SceneConfig, n: int, *, seed: int = 0,
                  chunk: int = 256, storage: Literal["uint8", "float32"] = "uint8") -> Path:
    """Draw and render ``n`` scenes and write them to one file, atomically.

    The scenes are those of ``sample_scenes(config, chunk, generator=g)`` for successive chunks
    (``g`` seeded with ``seed``); images are stored as ``uint8`` (``round(255 x)``, a quantisation
    error of at most ``1/510``) or ``float32``. The file is a ``torch.save`` archive readable with
    ``weights_only=True``, tagged and checksummed; a crash while writing leaves no partial file.

    Args:
        path: destination file (``.pt`` by convention).
        config: the scene configuration (its ``labelling`` is stored, but labels are drawn when read).
        n: number of images.
        seed: seed of the generator.
        chunk: scenes drawn and rendered at a time.
        storage: ``"uint8"`` or ``"float32"``.

    Returns:
        The path written.

    Examples:
        >>> import tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> p = write_dataset(os.path.join(d, "train.pt"), SceneConfig(resolution=16), 10, seed=1)
        >>> ds = read_dataset(p)
        >>> len(ds), ds.image(0).shape
        (10, torch.Size([3, 16, 16]))
    """
    where = "write_dataset"
    if not isinstance(config, SceneConfig):
        raise fail(where, f"`config` is {describe(config)}, expected a SceneConfig.")
    _check_int(n, where, "n", 1)
    _check_int(seed, where, "seed", 0)
    _check_int(chunk, where, "chunk", 1)
    if storage not in ("uint8", "float32"):
        raise fail(where, f"`storage` is {storage!r}, expected 'uint8' or 'float32'.")
    g = torch.Generator().manual_seed(seed)
    scenes, images = [], []
    done = 0
    while done < n:
        m = min(chunk, n - done)
        s = sample_scenes(config, m, generator=g)
        x = render_scene(s, config)
        images.append((x * 255).round().to(torch.uint8) if storage == "uint8" else x)
        scenes.append(s)
        done += m
    scene = Scene.cat(scenes)
    payload = {
        "config": config.to_dict(),
        "seed": seed,
        "images": torch.cat(images),
        "scene": {"pos": scene.pos, "color": scene.color, "shape": scene.shape, "size": scene.size,
                  "valid": scene.valid, "resolution": scene.resolution,
                  "texture": scene.texture if scene.texture is not None else torch.zeros(0)},
    }
    return save_payload(path, payload, kind=_DATASET_KIND, version=_DATASET_VERSION)


def read_dataset(path: str | os.PathLike[str]) -> SceneDataset:
    """Read a dataset written by :func:`write_dataset` (``weights_only=True``, digest checked).

    Raises:
        LocalScoreError: for a missing, truncated, corrupt or foreign file.
    """
    where = "read_dataset"
    payload = load_payload(path, kind=_DATASET_KIND, version=_DATASET_VERSION, where=where)
    try:
        config = SceneConfig.from_dict(payload["config"])
        s = payload["scene"]
        tex = s["texture"] if s["texture"].numel() else None
        scene = Scene(s["pos"], s["color"], s["shape"], s["size"], s["valid"], int(s["resolution"]), tex)
        return SceneDataset(payload["images"], scene, config, int(payload["seed"]))
    except (KeyError, TypeError) as e:
        raise fail(where, f"{str(path)!r} is a scenes file with missing or malformed fields ({e!r}).",
                   "recreate it with write_dataset.") from e


class DatasetStream(_Sharded):
    """An endless, seeded stream of random batches from a fixed :class:`SceneDataset`.

    Every epoch visits the images in a fresh random order (``torch.randperm`` from the stream's
    generator); a batch may straddle two epochs. Conditioner sets are drawn per batch with
    :func:`~localscore.lengthgen.data.label_scene` (so labelling ``"one"`` picks a new object each time an
    image is seen). Images are mapped to ``value_range`` as in :class:`SceneStream`.

    Args:
        dataset: the fixed dataset.
        batch_size: the *global* batch size.
        seed: seed of the stream's generator.
        labelling: ``"all"``/``"one"``/``"color"``; ``None`` uses the dataset config's.
        value_range: ``(lo, hi)`` of the images.
        device: where batches are put.

    Examples:
        >>> import tempfile, os
        >>> p = write_dataset(os.path.join(tempfile.mkdtemp(), "d.pt"), SceneConfig(resolution=16), 6)
        >>> stream = DatasetStream(read_dataset(p), batch_size=4, seed=0)
        >>> next(stream).images.shape
        torch.Size([4, 3, 16, 16])
    """

    _where = "DatasetStream"

    def __init__(self, dataset: SceneDataset, batch_size: int, *, seed: int = 0, labelling: Labelling | None = None,
                 value_range: tuple[float, float] = (-1.0, 1.0), device: torch.device | str = "cpu") -> None:
        if not isinstance(dataset, SceneDataset):
            raise fail(self._where, f"`dataset` is {describe(dataset)}, expected a SceneDataset (read_dataset).")
        self.dataset = dataset
        self.batch_size = _check_int(batch_size, self._where, "batch_size", 1)
        self.seed = _check_int(seed, self._where, "seed", 0)
        self.labelling: Labelling = labelling if labelling is not None else dataset.config.labelling
        if self.labelling not in ("all", "one", "color"):
            raise fail(self._where, f"`labelling` is {labelling!r}, expected 'all', 'one', 'color' or None.")
        self.value_range = _check_range(value_range, self._where)
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.zeros(0, dtype=torch.long)
        self.cursor = 0
        self.batches = 0

    def __iter__(self) -> Iterator[SceneBatch]:
        return self

    def _indices(self, m: int) -> Tensor:
        out = []
        while m > 0:
            if self.cursor >= self.order.numel():
                self.order = torch.randperm(len(self.dataset), generator=self.generator)
                self.cursor = 0
            take = min(m, self.order.numel() - self.cursor)
            out.append(self.order[self.cursor : self.cursor + take])
            self.cursor += take
            m -= take
        return torch.cat(out)

    def __next__(self) -> SceneBatch:
        idx = self._indices(self.batch_size)
        scene = self.dataset.scene[idx]
        cond = label_scene(scene, self.labelling, generator=self.generator)
        self.batches += 1
        sl = self._shard()
        lo, hi = self.value_range
        images = lo + (hi - lo) * self.dataset.image(idx[sl])
        return SceneBatch(images.to(self.device), cond[sl].to(self.device), scene[sl].to(self.device))

    def state_dict(self) -> dict[str, Any]:
        """The stream's position: generator state, epoch order, cursor and batch count."""
        return {"kind": "DatasetStream", "seed": self.seed, "batches": self.batches, "cursor": self.cursor,
                "order": self.order.clone(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position saved by :meth:`state_dict`."""
        if not isinstance(state, dict) or state.get("kind") != "DatasetStream":
            raise fail(self._where, f"cannot restore from {describe(state)}: not a DatasetStream state.",
                       "restore a stream of the same kind as the one the checkpoint was made with.")
        self.generator.set_state(state["generator"])
        self.order = state["order"].clone()
        self.cursor = int(state["cursor"])
        self.batches = int(state["batches"])
