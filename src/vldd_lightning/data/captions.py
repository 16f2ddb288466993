"""Image-caption splits and readers for the annotation formats found on disk.

Two formats are supported for Flickr30K and COCO:

``blip``
    The Karpathy splits as distributed with BLIP/ALBEF: ``*_train.json`` has one entry per
    caption (``image``, ``caption``, ``image_id``); ``*_val.json`` and ``*_test.json`` hold
    one entry per image with a ``caption`` list.
``karpathy``
    Karpathy's single ``dataset_{flickr30k,coco}.json``: ``images`` with ``split``
    (train/restval/val/test), ``filename``, optional ``filepath`` and ``sentences[].raw``.
    ``restval`` images join the training split, as is customary for COCO.

Images are located at ``image_root / <path from the annotation>``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vldd_lightning.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass
class CaptionSplit:
    """One split: I images with their captions, each caption belonging to one image."""

    name: str
    image_paths: list[Path]
    captions: list[str]
    caption_to_image: list[int]
    image_ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.image_ids:
            self.image_ids = [path.as_posix() for path in self.image_paths]

    @property
    def num_images(self) -> int:
        return len(self.image_paths)

    @property
    def num_captions(self) -> int:
        return len(self.captions)

    def subset_images(self, image_indices: Sequence[int]) -> CaptionSplit:
        """Keep the given images and all their captions, renumbered in the given order."""
        new_index = {old: new for new, old in enumerate(image_indices)}
        kept = [(caption, new_index[image]) for caption, image in zip(self.captions, self.caption_to_image, strict=True) if image in new_index]
        return CaptionSplit(
            self.name,
            [self.image_paths[i] for i in image_indices],
            [caption for caption, _ in kept],
            [image for _, image in kept],
            [self.image_ids[i] for i in image_indices],
        )


class _SplitBuilder:
    def __init__(self, name: str, image_root: Path) -> None:
        self.name = name
        self.image_root = image_root
        self.index: dict[str, int] = {}
        self.paths: list[Path] = []
        self.ids: list[str] = []
        self.captions: list[str] = []
        self.owners: list[int] = []

    def add(self, relative_path: str, captions: Iterable[str], image_id: str | None, source: Path) -> None:
        if not isinstance(relative_path, str) or not relative_path:
            raise DataError(f"{source}: an entry of split {self.name!r} has no image path")
        image = self.index.get(relative_path)
        if image is None:
            image = self.index[relative_path] = len(self.paths)
            self.paths.append(self.image_root / relative_path)
            self.ids.append(str(image_id) if image_id is not None else relative_path)
        for caption in captions:
            if not isinstance(caption, str) or not caption.strip():
                raise DataError(f"{source}: image {relative_path!r} has an empty or non-text caption")
            self.captions.append(caption.strip())
            self.owners.append(image)

    def build(self) -> CaptionSplit:
        return CaptionSplit(self.name, self.paths, self.captions, self.owners, self.ids)


def _load_json(path: Path, key_hint: str) -> Any:
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}; set {key_hint} to the folder that contains it")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"annotation file {path} is not valid JSON ({error}); re-download or regenerate it") from error


def read_blip_split(path: Path, split: str, image_root: Path, key_hint: str = "dataset.root") -> CaptionSplit:
    """Read one BLIP-style Karpathy split file."""
    entries = _load_json(path, key_hint)
    if not isinstance(entries, list):
        raise DataError(f"{path}: expected a JSON list of entries, got {type(entries).__name__}")
    builder = _SplitBuilder(split, image_root)
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DataError(f"{path}: entry {number} is a {type(entry).__name__}, not an object with the "
                            "'image' and 'caption' fields of the BLIP format")
        missing = [field for field in ("image", "caption") if field not in entry]
        if missing:
            raise DataError(f"{path}: entry {number} lacks the field{'s' if len(missing) > 1 else ''} {' and '.join(map(repr, missing))} "
                            "of the BLIP format")
        captions = entry["caption"]
        captions = [captions] if isinstance(captions, str) else captions
        if not isinstance(captions, list):
            raise DataError(f"{path}: entry {number} has a caption that is neither text nor a list")
        builder.add(entry["image"], captions, entry.get("image_id"), path)
    return builder.build()


def read_karpathy_file(path: Path, image_root: Path, key_hint: str = "dataset.root") -> dict[str, CaptionSplit]:
    """Read Karpathy's ``dataset_*.json`` into train (with restval), val and test splits."""
    data = _load_json(path, key_hint)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path}: expected an object with an 'images' list (Karpathy's dataset_*.json)")
    builders = {name: _SplitBuilder(name, image_root) for name in SPLITS}
    for number, image in enumerate(data["images"]):
        try:
            split = {"restval": "train"}.get(image["split"], image["split"])
            relative = "/".join(part for part in (image.get("filepath", ""), image["filename"]) if part)
            captions = [sentence["raw"] for sentence in image["sentences"]]
        except (KeyError, TypeError) as error:
            raise DataError(f"{path}: image entry {number} lacks the field {error}") from error
        if split not in builders:
            raise DataError(f"{path}: image entry {number} has unknown split {image['split']!r}")
        image_id = image.get("cocoid", image.get("imgid"))
        builders[split].add(relative, captions, image_id, path)
    return {name: builder.build() for name, builder in builders.items()}


def check_images_exist(split: CaptionSplit, key_hint: str = "dataset.image_root") -> None:
    missing = [path for path in split.image_paths if not path.is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} of {split.num_images} images of split {split.name!r} are missing, "
            f"first: {missing[0]}; check {key_hint} or restore the files"
        )


def check_disjoint(splits: dict[str, CaptionSplit]) -> None:
    """Reject an image that appears in the training split and in val or test."""
    train = {path.resolve() for path in splits["train"].image_paths}
    for name in ("val", "test"):
        shared = [path for path in splits[name].image_paths if path.resolve() in train]
        if shared:
            raise DataError(
                f"{len(shared)} images are in both the train and {name} splits, first: {shared[0]}; "
                "fix the annotation files so that no image is used for training and evaluation"
            )


def check_split_size(split: CaptionSplit, expected_images: int | None, expected_captions: int | None,
                     tolerance: float, allow_subset: bool, dataset: str) -> None:
    """Compare a split with its known Karpathy size unless a subset is intended."""
    if allow_subset:
        return
    if expected_images is not None and split.num_images != expected_images:
        raise DataError(
            f"the {dataset} {split.name} split has {split.num_images} images, but the Karpathy split "
            f"has {expected_images}; use the full annotation file, or set dataset.allow_subset=true "
            "if a subset is intended (its results are not comparable with published numbers)"
        )
    if expected_captions is not None and abs(split.num_captions - expected_captions) > tolerance * expected_captions:
        raise DataError(
            f"the {dataset} {split.name} split has {split.num_captions} captions, but the Karpathy "
            f"split has about {expected_captions}; use the full annotation file, or set "
            "dataset.allow_subset=true if a subset is intended"
        )
