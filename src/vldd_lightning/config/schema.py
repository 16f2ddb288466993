"""Typed configuration schemas. Hydra merges every YAML file into these dataclasses, so an
unknown key or a value of the wrong type fails at start-up with the key's full name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

STAGES = ("prepare", "train_full", "buffer", "distill", "coreset", "evaluate", "all", "report")


@dataclass
class PathsConfig:
    data_dir: str = "${oc.env:VLDD_DATA_DIR,data}"
    artifacts_dir: str = "${oc.env:VLDD_ARTIFACTS_DIR,artifacts}"
    cache_dir: str = "${paths.artifacts_dir}/cache"


@dataclass
class DatasetConfig:
    name: str = MISSING
    format: str = "blip"  # blip | karpathy | tuxpaint
    root: str | None = None  # folder with the annotation files
    image_root: str | None = None  # images are image_root/<path in annotation>; defaults to root
    train_file: str | None = None
    val_file: str | None = None
    test_file: str | None = None
    karpathy_file: str | None = None
    expected_test_images: int | None = None
    expected_test_captions: int | None = None
    caption_tolerance: float = 0.02  # relative tolerance on the expected caption count
    allow_subset: bool = False
    check_images: bool = True  # stat every listed image at start-up
    background: list[int] = field(default_factory=lambda: [255, 255, 255])
    # embedded default (format=tuxpaint) only
    stamps_dir: str | None = None
    prepared_image_size: int = 128
    exclude_categories: list[str] = field(default_factory=lambda: ["symbols"])
    val_images: int = 60
    test_images: int = 120
    split_seed: int = 0


@dataclass
class EncoderConfig:
    name: str = MISSING
    arch: str = MISSING  # timm architecture
    weights: str = "timm"  # timm | none | package:<module> | path to a weights file
    bn_eps: float | None = None
    image_size: int = 224
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    trainable: str = "all"  # all | last_blocks | none
    last_blocks: int = 1
    image_head: str = "none"  # none | linear | mlp
    embed_dim: int | None = None  # None: the backbone's feature size
    head_dropout: float = 0.1


@dataclass
class TextEncoderConfig:
    name: str = MISSING
    model: str = MISSING  # hub id, local folder or package:<module>
    pooling: str = "mean"  # mean | cls | clip
    max_length: int = 64
    local_files_only: bool = False
    batch_size: int = 128


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    num_workers: int = 0
    log_every_n_steps: int = 10
    enable_progress_bar: bool = True
    num_threads: int | None = None  # torch CPU threads; None keeps torch's default


@dataclass
class LoggerConfig:
    kind: str = "wandb"  # wandb | csv | none
    project: str = "vldd_lightning"
    entity: str | None = None
    mode: str = "offline"  # offline | online | disabled
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    log_images_every: int = 100  # distillation iterations between image tables


@dataclass
class ProtocolConfig:
    """How a student is trained on a pair set (and the full-data model on the train split)."""

    epochs: int = 50
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_image: float = 0.1  # used when the pair set carries no learned rate
    lr_text: float = 0.1
    augment: bool = False  # training augmentation of real images (train_full only)
    select_on_val: bool = True  # report the test recall of the best validation epoch
    val_every: int = 5  # epochs between validations


@dataclass
class BufferConfig:
    num_experts: int = 20
    epochs: int = 10
    batch_size: int = 128
    lr_image: float = 0.1
    lr_text: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    augment: bool = True
    crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])
    randaugment: list[int] | None = field(default_factory=lambda: [2, 5])
    augment_views: int = 8  # frozen backbone: augmented views precomputed per image
    storage_dtype: str = "float32"  # float32 | bfloat16 | float16
    record_forgetting: bool = True
    dir: str | None = None  # an existing buffer folder; None: the folder of this configuration


@dataclass
class DistillConfig:
    iterations: int = 3000
    syn_steps: int = 8
    expert_epochs: int = 1
    max_start_epoch: int = 2
    mini_batch_size: int = 100
    lr_image: float = 1000.0  # outer learning rate of the synthetic pixels
    lr_text: float = 1000.0  # outer learning rate of the synthetic text embeddings
    lr_lr: float = 0.01  # outer learning rate of the inner learning rates
    momentum: float = 0.5
    syn_lr_init: float = 0.1
    syn_lr_min: float = 1e-4  # the inner learning rates are projected into [min, max]
    syn_lr_max: float = 10.0
    init: str = "real"  # real | noise
    image_weight: float = 1.0
    text_weight: float = 1.0
    augment: bool = True  # differentiable augmentation of the synthetic images
    augment_strategy: str = "color_crop_flip_scale_rotate"
    unroll: str = "plain"  # plain | checkpointed | tesla
    hoist_frozen_features: bool = True
    temperature_compat: bool = False  # published-code inner loss: logits = s * cos, not exp(s) * cos
    max_consecutive_skips: int = 10
    max_abs_value: float = 1000.0  # synthetic pixel or text values beyond this are a runaway step
    checkpoint_every: int = 50
    grid_max_images: int = 64
    autocast: str | None = None  # None | bf16: autocast of the student's forward pass (GPU)


@dataclass
class CoresetConfig:
    method: str = "random"  # random | herding | k_center | forgetting


@dataclass
class EvaluateConfig:
    pairs: str | None = None  # a pair set file (.safetensors) to evaluate instead of `methods`
    # distilled | random | herding | k_center | forgetting | full; a suffix _xK multiplies the
    # pair budget (random_x5: 5 * num_pairs random pairs)
    methods: list[str] = field(default_factory=lambda: ["distilled"])
    num_eval: int = 5
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)


@dataclass
class AllConfig:
    """Stage ``all``: the methods of the comparison table it prints."""

    methods: list[str] = field(default_factory=lambda: ["distilled", "random", "random_x5", "full"])


@dataclass
class ReportConfig:
    runs: list[str] = field(default_factory=list)  # run folders or sweep folders
    output: str | None = None  # default: <run folder>/report


@dataclass
class Config:
    stage: str = "all"
    seed: int = 0
    num_pairs: int = 100  # the pair budget N of distillation and coresets
    experiment_name: str = "default"
    paths: PathsConfig = field(default_factory=PathsConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    train_full: ProtocolConfig = field(default_factory=ProtocolConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    coreset: CoresetConfig = field(default_factory=CoresetConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    all: AllConfig = field(default_factory=AllConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


def register_configs() -> None:
    """Register the schema that ``conf/config.yaml`` lists first in its defaults."""
    ConfigStore.instance().store(name="vldd_schema", node=Config)
