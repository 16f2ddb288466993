"""Prepare the embedded default data set from Debian's ``tuxpaint-stamps-default`` package.

Each stamp is ``NAME.png`` (an RGBA cut-out) with ``NAME.txt`` whose first line is an
English caption written by a person. Preparation:

1. finds the stamps in an installed package, or downloads the ``.deb`` with
   ``apt-get download`` (no root needed) and unpacks it with ``dpkg-deb -x``;
2. composites each cut-out onto a plain background, pads it to a square and resizes it;
3. splits by image with a fixed seed and writes BLIP-style ``tuxpaint_{train,val,test}.json``.

Repeated captions: some captions repeat across images ("A flower." names six). Images are
grouped by their normalised caption (lower case, punctuation and spaces removed). Groups of
more than one image go to the training split only, so every val/test caption names exactly
one image and no caption text is shared between training and evaluation. Without this, a
test caption with several identical twins would tie with them and, with ties counted
against the correct item, could never be retrieved at rank 1.

Preparation resumes: finished images are kept, and ``prepared.json`` is written last.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
import subprocess
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from vldd_lightning.data.images import load_rgb
from vldd_lightning.errors import DataError
from vldd_lightning.utils.atomic import atomic_path, atomic_write_json, read_json

log = logging.getLogger(__name__)

PACKAGE = "tuxpaint-stamps-default"
SYSTEM_STAMPS = Path("/usr/share/tuxpaint/stamps")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TuxpaintSettings:
    root: Path  # output folder of the prepared data set
    stamps_dir: Path | None  # an existing stamps folder; None finds or downloads one
    image_size: int = 128
    background: tuple[int, int, int] = (255, 255, 255)
    exclude_categories: tuple[str, ...] = ("symbols",)
    val_images: int = 60
    test_images: int = 120
    split_seed: int = 0

    def fingerprint(self) -> dict[str, object]:
        return {
            "format_version": FORMAT_VERSION,
            "image_size": self.image_size,
            "background": list(self.background),
            "exclude_categories": sorted(self.exclude_categories),
            "val_images": self.val_images,
            "test_images": self.test_images,
            "split_seed": self.split_seed,
        }


def normalise_caption(caption: str) -> str:
    return re.sub(r"[^0-9a-z]+", "", caption.lower())


def _run(command: list[str], cwd: Path) -> None:
    try:
        subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True)
    except FileNotFoundError as error:
        raise DataError(
            f"'{command[0]}' is not installed, so the {PACKAGE} package cannot be fetched; "
            f"install the package ({PACKAGE}) or set dataset.stamps_dir to an unpacked stamps folder"
        ) from error
    except subprocess.CalledProcessError as error:
        raise DataError(
            f"'{' '.join(command)}' failed: {error.stderr.strip()[-500:]}; run 'apt-get update' "
            f"first, or set dataset.stamps_dir to an unpacked {PACKAGE} stamps folder"
        ) from error


def locate_stamps(settings: TuxpaintSettings) -> Path:
    """Return a stamps folder: the configured one, the system one, or a fresh download."""
    if settings.stamps_dir is not None:
        if not settings.stamps_dir.is_dir():
            raise DataError(f"dataset.stamps_dir={settings.stamps_dir} does not exist; fix or unset it")
        return settings.stamps_dir
    if SYSTEM_STAMPS.is_dir():
        return SYSTEM_STAMPS

    package_root = settings.root / "package"
    unpacked = package_root / "usr/share/tuxpaint/stamps"
    if (package_root / ".unpacked").is_file() and unpacked.is_dir():
        return unpacked

    download_dir = settings.root / "download"
    download_dir.mkdir(parents=True, exist_ok=True)
    if not list(download_dir.glob(f"{PACKAGE}_*.deb")):
        log.info("downloading %s with apt-get download into %s", PACKAGE, download_dir)
        try:
            _run(["apt-get", "-q", "download", PACKAGE], cwd=download_dir)
        except DataError as error:
            # a fresh machine may have no package lists yet: fetch them into a private folder,
            # which needs no root and leaves the system's apt state alone
            log.info("apt-get download failed (%s); updating private package lists", error)
            private = [f"-oDir::State::Lists={settings.root / 'apt/lists'}", f"-oDir::Cache={settings.root / 'apt/cache'}"]
            for folder in ("apt/lists/partial", "apt/cache/archives/partial"):
                (settings.root / folder).mkdir(parents=True, exist_ok=True)
            _run(["apt-get", "-q", *private, "update"], cwd=download_dir)
            _run(["apt-get", "-q", *private, "download", PACKAGE], cwd=download_dir)
    debs = sorted(download_dir.glob(f"{PACKAGE}_*.deb"))
    if not debs:
        raise DataError(f"apt-get download left no {PACKAGE} .deb in {download_dir}")
    shutil.rmtree(package_root, ignore_errors=True)
    log.info("unpacking %s", debs[-1].name)
    _run(["dpkg-deb", "-x", str(debs[-1]), str(package_root)], cwd=settings.root)
    (package_root / ".unpacked").write_text(debs[-1].name + "\n")
    return unpacked


def collect_stamps(stamps: Path, exclude: tuple[str, ...]) -> list[tuple[Path, str]]:
    """Return (png path, caption) for every PNG stamp with a caption, sorted by path."""
    pairs = []
    for png in sorted(stamps.rglob("*.png")):
        relative = png.relative_to(stamps)
        if relative.parts[0] in exclude:
            continue
        text = png.with_suffix(".txt")
        if not text.is_file():
            continue
        lines = text.read_text(encoding="utf-8", errors="replace").splitlines()
        caption = lines[0].strip() if lines else ""
        if caption:
            pairs.append((png, caption))
    return pairs


def _square_image(path: Path, size: int, background: tuple[int, int, int]) -> Image.Image:
    image = load_rgb(path, background)
    side = max(image.size)
    canvas = Image.new("RGB", (side, side), background)
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas.resize((size, size), Image.Resampling.BICUBIC)


def caption_groups(captions: list[str]) -> list[list[int]]:
    """Group image indices by normalised caption."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, caption in enumerate(captions):
        groups[normalise_caption(caption)].append(index)
    return list(groups.values())


def split_by_caption_group(captions: list[str], val_images: int, test_images: int, seed: int) -> dict[str, list[int]]:
    """Assign images to train/val/test; images that share a caption all go to train."""
    groups = caption_groups(captions)
    singles = sorted(indices[0] for indices in groups if len(indices) == 1)
    shared = sorted(index for indices in groups if len(indices) > 1 for index in indices)
    if val_images + test_images >= len(singles):
        raise DataError(
            f"only {len(singles)} images have a unique caption, fewer than val_images + "
            f"test_images = {val_images + test_images}; lower dataset.val_images or dataset.test_images"
        )
    random.Random(seed).shuffle(singles)
    test, val = singles[:test_images], singles[test_images : test_images + val_images]
    train = sorted(singles[test_images + val_images :] + shared)
    return {"train": train, "val": sorted(val), "test": sorted(test)}


def prepare_tuxpaint(settings: TuxpaintSettings) -> Path:
    """Prepare the data set under ``settings.root`` and return that folder."""
    marker = settings.root / "prepared.json"
    if marker.is_file():
        done = read_json(marker, "tuxpaint preparation record")
        if done.get("settings") == settings.fingerprint():
            return settings.root
        log.info("tuxpaint settings changed since the last preparation; preparing again")
        marker.unlink()

    stamps = locate_stamps(settings)
    pairs = collect_stamps(stamps, settings.exclude_categories)
    if not pairs:
        raise DataError(f"no captioned PNG stamps found under {stamps}; check dataset.stamps_dir")

    image_dir = settings.root / "images"
    relative_paths = []
    for png, _ in tqdm(pairs, desc="prepare tuxpaint", unit="img"):
        relative = Path("images") / png.relative_to(stamps)
        target = settings.root / relative
        if not target.is_file():
            image = _square_image(png, settings.image_size, settings.background)
            with atomic_path(target) as tmp:
                image.save(tmp, format="PNG")
        relative_paths.append(relative.as_posix())

    captions = [caption for _, caption in pairs]
    splits = split_by_caption_group(captions, settings.val_images, settings.test_images, settings.split_seed)
    for name, indices in splits.items():
        if name == "train":
            entries = [{"image": relative_paths[i], "caption": captions[i], "image_id": str(i)} for i in indices]
        else:
            entries = [{"image": relative_paths[i], "caption": [captions[i]], "image_id": str(i)} for i in indices]
        atomic_write_json(settings.root / f"tuxpaint_{name}.json", entries)

    record = {
        "settings": settings.fingerprint(),
        "source": str(stamps),
        "images": len(pairs),
        "split_images": {name: len(indices) for name, indices in splits.items()},
        "images_with_shared_captions": sum(len(g) for g in caption_groups(captions) if len(g) > 1),
        "image_dir": str(image_dir),
    }
    atomic_write_json(marker, record)
    log.info("prepared tuxpaint: %s", record["split_images"])
    return settings.root
