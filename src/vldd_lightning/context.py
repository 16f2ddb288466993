"""Everything a stage needs from the configuration: data splits, cached embeddings, models.

:class:`ExperimentContext` turns a composed config into loaded splits, cached frozen text
embeddings, cached frozen-backbone image features, fresh dual encoders, and the identity
record that trajectory files and pair sets are checked against.
"""

from __future__ import annotations

import logging
import os
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from vldd_lightning.core.contrastive import DEFAULT_LOG_LOGIT_SCALE
from vldd_lightning.data.captions import (
    CaptionSplit,
    check_disjoint,
    check_images_exist,
    check_split_size,
    read_blip_split,
    read_karpathy_file,
)
from vldd_lightning.data.images import ImageDataset, eval_transform, train_transform
from vldd_lightning.data.tuxpaint import TuxpaintSettings, prepare_tuxpaint
from vldd_lightning.errors import ArtifactError, ConfigError, DataError
from vldd_lightning.models.text import FrozenTextEncoder, TextEncoderSpec, model_fingerprint
from vldd_lightning.storage.tensors import load_tensors, save_tensors
from vldd_lightning.utils.hashing import derive_seed, stable_hash

if TYPE_CHECKING:  # timm loads in seconds: data errors are reported before it is imported
    from vldd_lightning.models.dual_encoder import DualEncoder, DualEncoderSpec
    from vldd_lightning.models.image import BackboneSpec

log = logging.getLogger(__name__)

LOGIT_SCALE = float(torch.tensor(DEFAULT_LOG_LOGIT_SCALE).exp())


def absolute_path(path: str | os.PathLike[str]) -> Path:
    """Resolve a path from the config against the directory the command was started in."""
    try:
        from hydra.utils import to_absolute_path

        return Path(to_absolute_path(str(path)))
    except ValueError:  # Hydra is not initialised, e.g. in library use
        return Path(path).expanduser().resolve()


def _file_list_fingerprint(paths: list[Path]) -> str:
    entries = []
    for path in paths:
        stat = path.stat()
        entries.append([path.as_posix(), stat.st_size, stat.st_mtime_ns])
    return stable_hash(entries, 16)


class ExperimentContext:
    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.paths = {key: absolute_path(value) for key, value in cfg.paths.items()}
        self._text_encoder: FrozenTextEncoder | None = None
        self._feature_backbone: DualEncoder | None = None

    # data

    @cached_property
    def splits(self) -> dict[str, CaptionSplit]:
        dataset = self.cfg.dataset
        if dataset.format == "tuxpaint":
            root = prepare_tuxpaint(self.tuxpaint_settings)
            splits = {name: read_blip_split(root / f"tuxpaint_{name}.json", name, root) for name in ("train", "val", "test")}
        else:
            root_key = "dataset.root"
            if not dataset.root:
                raise DataError(f"{root_key} is not set; point it to the folder with the {dataset.name} annotation files")
            root = absolute_path(dataset.root)
            if not root.is_dir():
                raise DataError(f"{root_key}={root} does not exist; set {root_key} to the folder with the {dataset.name} annotation files")
            image_root = absolute_path(dataset.image_root) if dataset.image_root else root
            if not image_root.is_dir():
                raise DataError(f"dataset.image_root={image_root} does not exist; set it to the folder that contains the images")
            if dataset.format == "blip":
                files = {"train": dataset.train_file, "val": dataset.val_file, "test": dataset.test_file}
                splits = {name: read_blip_split(root / str(file), name, image_root, root_key) for name, file in files.items()}
            elif dataset.format == "karpathy":
                splits = read_karpathy_file(root / str(dataset.karpathy_file), image_root, root_key)
            else:
                raise ConfigError(f"dataset.format={dataset.format!r} is invalid; choose blip, karpathy or tuxpaint")
            check_split_size(splits["test"], dataset.expected_test_images, dataset.expected_test_captions,
                             dataset.caption_tolerance, dataset.allow_subset, dataset.name)
        check_disjoint(splits)
        for split in splits.values():
            if split.num_images == 0:
                raise DataError(f"the {dataset.name} {split.name} split is empty; check the annotation files")
            if dataset.check_images:
                check_images_exist(split)
        return splits

    @property
    def background(self) -> tuple[int, int, int]:
        red, green, blue = self.cfg.dataset.background
        return (int(red), int(green), int(blue))

    @property
    def tuxpaint_settings(self) -> TuxpaintSettings:
        dataset = self.cfg.dataset
        return TuxpaintSettings(
            root=self.paths["data_dir"] / "tuxpaint",
            stamps_dir=absolute_path(dataset.stamps_dir) if dataset.stamps_dir else None,
            image_size=dataset.prepared_image_size,
            background=tuple(dataset.background),
            exclude_categories=tuple(dataset.exclude_categories),
            val_images=dataset.val_images,
            test_images=dataset.test_images,
            split_seed=dataset.split_seed,
        )

    # frozen text embeddings, cached on disk

    @property
    def text_spec(self) -> TextEncoderSpec:
        text = self.cfg.text_encoder
        return TextEncoderSpec(text.model, text.pooling, text.max_length, text.local_files_only)

    @cached_property
    def text_fingerprint(self) -> str:
        return model_fingerprint(self.text_spec.model)

    def text_embeddings(self, split: str) -> Tensor:
        """(C, D) frozen embeddings of a split's captions, computed once and cached.

        The cache key covers the caption texts and the encoder identity, so a changed
        caption file or encoder never reads a stale entry.
        """
        captions = self.splits[split].captions
        spec = self.text_spec
        key = stable_hash({
            "captions": stable_hash(captions, 64),
            "model": self.text_fingerprint,
            "pooling": spec.pooling,
            "max_length": spec.max_length,
        }, 20)
        path = self.paths["cache_dir"] / "text" / f"{self.cfg.dataset.name}-{split}-{key}.safetensors"
        if path.is_file():
            try:
                embeddings = load_tensors(path, "text embedding cache")["embeddings"]
                if embeddings.shape[0] == len(captions):
                    return embeddings
                log.warning("text embedding cache %s has the wrong size; recomputing it", path)
            except ArtifactError as error:
                log.warning("%s; recomputing it", error)
        if self._text_encoder is None:
            self._text_encoder = FrozenTextEncoder(spec, self.device)
        embeddings = self._text_encoder.encode(captions, self.cfg.text_encoder.batch_size)
        save_tensors(path, {"embeddings": embeddings}, {"key": key, "split": split, "model": spec.model})
        return embeddings

    @property
    def text_dim(self) -> int:
        return int(self.text_embeddings("val").shape[1])

    # models

    @property
    def device(self) -> torch.device:
        accelerator = self.cfg.trainer.accelerator
        if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
            return torch.device("cuda")
        return torch.device("cpu")

    @property
    def backbone_spec(self) -> BackboneSpec:
        from vldd_lightning.models.image import BackboneSpec

        encoder = self.cfg.encoder
        return BackboneSpec(encoder.arch, encoder.weights, encoder.bn_eps, encoder.image_size)

    @property
    def dual_spec(self) -> DualEncoderSpec:
        from vldd_lightning.models.dual_encoder import DualEncoderSpec

        encoder = self.cfg.encoder
        return DualEncoderSpec(
            backbone=self.backbone_spec,
            text_dim=self.text_dim,
            trainable=encoder.trainable,
            last_blocks=encoder.last_blocks,
            image_head=encoder.image_head,
            embed_dim=encoder.embed_dim,
            head_dropout=encoder.head_dropout,
        )

    def new_model(self, seed: int) -> DualEncoder:
        """Build a dual encoder at the pretrained start, with heads initialised from ``seed``."""
        from vldd_lightning.models.dual_encoder import DualEncoder

        torch.manual_seed(derive_seed(seed, "init"))
        try:
            return DualEncoder(self.dual_spec)
        except ValueError as error:
            raise ConfigError(f"invalid encoder configuration: {error}") from error

    @cached_property
    def frozen_backbone(self) -> bool:
        return self.cfg.encoder.trainable == "none"

    @property
    def logit_scale(self) -> float:
        return LOGIT_SCALE

    def identity(self) -> dict[str, Any]:
        """What trajectories and pair sets must agree on to be used with this configuration."""
        encoder = self.cfg.encoder
        train = self.splits["train"]
        return {
            "dataset": self.cfg.dataset.name,
            "train_pairs": train.num_captions,
            "train_captions": stable_hash(train.captions, 16),
            "arch": encoder.arch,
            "weights": encoder.weights,
            "trainable": encoder.trainable,
            "last_blocks": encoder.last_blocks if encoder.trainable == "last_blocks" else None,
            "image_head": encoder.image_head,
            "embed_dim": encoder.embed_dim,
            "image_size": encoder.image_size,
            "mean": [float(x) for x in encoder.mean],
            "std": [float(x) for x in encoder.std],
            "text_model": self.text_fingerprint,
            "text_pooling": self.cfg.text_encoder.pooling,
            "text_dim": self.text_dim,
        }

    # images

    def eval_transform(self):
        encoder = self.cfg.encoder
        return eval_transform(encoder.image_size, encoder.mean, encoder.std)

    def train_transform(self, augment: dict[str, Any]):
        encoder = self.cfg.encoder
        randaugment = tuple(augment["randaugment"]) if augment.get("randaugment") else None
        return train_transform(encoder.image_size, encoder.mean, encoder.std, tuple(augment["crop_scale"]), randaugment)

    def split_images(self, split: str) -> Tensor:
        """Load all images of a split under the eval transform, as an (I, 3, H, W) tensor."""
        dataset = ImageDataset(self.splits[split].image_paths, self.eval_transform(), self.background)
        loader = DataLoader(dataset, batch_size=64, num_workers=self.cfg.trainer.num_workers)
        return torch.cat(list(tqdm(loader, desc=f"load {split} images", unit="batch", leave=False)))

    @torch.no_grad()
    def backbone_features(self, images: Tensor, batch_size: int = 64) -> Tensor:
        """Pooled features of the pretrained (frozen) backbone for a tensor of images."""
        if self._feature_backbone is None:
            self._feature_backbone = self.new_model(0).to(self.device).eval()
        backbone = self._feature_backbone
        chunks = [backbone.image_features(images[i : i + batch_size].to(self.device)).cpu()
                  for i in range(0, images.shape[0], batch_size)]
        return torch.cat(chunks) if chunks else torch.zeros(0, backbone.feature_dim)

    def image_features(self, split: str, views: int = 0, augment: dict[str, Any] | None = None,
                       seed: int = 0) -> Tensor:
        """Frozen-backbone features of a split's images, cached on disk.

        With ``views == 0``: the eval transform, shape (I, F). With ``views > 0``: that
        many augmented views per image drawn with ``seed``, shape (views, I, F).
        """
        split_data = self.splits[split]
        encoder = self.cfg.encoder
        key = stable_hash({
            "images": _file_list_fingerprint(split_data.image_paths),
            "arch": encoder.arch, "weights": encoder.weights, "bn_eps": encoder.bn_eps,
            "image_size": encoder.image_size, "mean": list(encoder.mean), "std": list(encoder.std),
            "background": list(self.cfg.dataset.background),
            "views": views, "augment": augment, "seed": seed,
        }, 20)
        path = self.paths["cache_dir"] / "features" / f"{self.cfg.dataset.name}-{split}-{key}.safetensors"
        if path.is_file():
            try:
                return load_tensors(path, "image feature cache")["features"]
            except ArtifactError as error:
                log.warning("%s; recomputing it", error)

        if views == 0:
            features = self.backbone_features(self.split_images(split))
        else:
            assert augment is not None
            from vldd_lightning.data.images import load_rgb

            transform = self.train_transform(augment)
            pil_images = [load_rgb(p, self.background) for p in split_data.image_paths]
            per_view = []
            for view in tqdm(range(views), desc=f"augmented {split} features", unit="view"):
                batch = []
                for index, image in enumerate(pil_images):
                    torch.manual_seed(derive_seed(seed, "view", view, index))
                    batch.append(transform(image))
                per_view.append(self.backbone_features(torch.stack(batch)))
            features = torch.stack(per_view)
        save_tensors(path, {"features": features}, {"key": key, "split": split, "views": views})
        return features

    def resolved_config(self) -> dict[str, Any]:
        return OmegaConf.to_container(self.cfg, resolve=True)  # type: ignore[return-value]
