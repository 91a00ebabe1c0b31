"""Typed run configuration: one YAML file per run, held in nested dataclasses.

``load_config(path, overrides)`` reads the YAML, applies ``key=value`` overrides (dotted keys,
values parsed as YAML) and builds a ``RunConfig``. An unknown key or a value of the wrong type is a
``ConfigError`` that names the dotted key (and lists the valid keys / the expected type).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

try:
    from .data.config import DataConfig, PrepareConfig
except ModuleNotFoundError as _exc:  # the data package lands separately; until then, empty sections
    if _exc.name not in (f"{__package__}.data", f"{__package__}.data.config"):
        raise

    @dataclass
    class DataConfig:  # type: ignore[no-redef]
        """Placeholder until training/data/config.py exists."""

    @dataclass
    class PrepareConfig:  # type: ignore[no-redef]
        """Placeholder until training/data/config.py exists."""


STAGE_ORDER: tuple[str, ...] = ("prepare", "recnet", "dcnet", "synthesize", "etnet", "recaugnet")
ABLATIONS: tuple[str, ...] = ("baseline", "reccopynet", "recdatanet")
STAGE_HELP: dict[str, str] = {
    "prepare": "boxes, landmarks, masks and fitter pseudo-labels of the datasets, cached",
    "recnet": "RecNet: face crop -> face-model coefficients (landmark/photometric/identity losses)",
    "dcnet": "DCNet: the conditional generator of the reenacted face (GAN)",
    "synthesize": "expression-specific image/coefficient pairs made with RecNet + DCNet",
    "etnet": "ETNet: expression transfer between identities",
    "recaugnet": "RecAugNet: RecNet retrained with the synthesized pairs",
    "baseline": "ablation: the cascade without the 3D reconstruction prior",
    "reccopynet": "ablation: RecNet with copied (untransferred) expressions",
    "recdatanet": "ablation: RecNet trained on the augmented data only",
}


class ConfigError(ValueError):
    """A configuration file or override is invalid (unknown key, wrong type, bad value)."""


# ---- sections ---------------------------------------------------------------------------------


@dataclass
class RunSection:
    """Run-wide settings: seeding, device, mixed precision, face model, the cascade's stage list."""

    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True  # autocast on CUDA only; ignored on CPU
    amp_dtype: Literal["bfloat16", "float16"] = "bfloat16"  # float16 adds a GradScaler
    num_threads: int = 0  # torch intra-op threads per process; 0 = torch's default
    face_model: str = ""  # load_face_model spec ('ict', 'generic', a .npz path); '' = lookup
    stages: list[str] = field(default_factory=lambda: list(STAGE_ORDER))
    ablations: list[str] = field(default_factory=list)  # subset of ABLATIONS run after stages


@dataclass
class TrainConfig:
    """What every trainable stage shares: length, batch, optimiser, schedule, eval and logging."""

    steps: int = 1000
    batch_size: int = 8  # GLOBAL batch: each of N processes takes batch_size / N
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    momentum: float = 0.9  # sgd only
    lr_schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_steps: int = 0  # linear warm-up from 0, then the schedule
    lr_min_ratio: float = 0.0  # cosine floor as a fraction of lr
    lr_step_every: int = 1000  # 'step' schedule: multiply by lr_gamma every this many steps
    lr_gamma: float = 0.1
    grad_clip: float = 0.0  # max global grad norm per optimiser; 0 = off
    eval_every: int = 500  # steps between held-out evaluations; 0 = only at the end
    eval_batches: int = 8  # global batches per evaluation; 0 = the whole held-out set
    eval_metric: str = "loss"  # key of evaluate()'s dict that picks best.pt (lower is better)
    log_every: int = 10
    ckpt_every: int = 500  # steps between last.pt saves (also saved at the end)
    num_workers: int = 0  # DataLoader workers per process

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "ckpt_every", "lr_step_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "eval_batches", "warmup_steps", "num_workers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr: must be > 0, got {self.lr}")


@dataclass
class RecNetStageConfig(TrainConfig):
    """RecNet: a ResNet regressing face-model coefficients from a face crop."""

    backbone: Literal["resnet18", "resnet34", "resnet50"] = "resnet50"
    width: float = 1.0  # channel multiplier of the backbone
    # The crop size and the synthetic share of a batch are data.crop_size and
    # data.synthetic_fraction (one place each).
    n_identity: int = 80
    n_albedo: int = 80
    # Loss weights (training.losses.RecNetLossWeights' reference values, in its units).
    w_landmark: float = 80.0
    landmark_heavy: float = 20.0  # nose / inner-mouth landmark weight (Deep3DFaceRecon's 20x)
    landmark_robust: float = 0.0  # Charbonnier scale of the landmark loss (crop sides); 0 = d^2
    w_photo: float = 1.92
    w_identity: float = 0.2
    w_reg: float = 3e-4
    w_reg_identity: float = 1.0
    w_reg_expression: float = 0.8
    w_reg_albedo: float = 1.7e-2
    w_reg_light: float = 10.0
    w_coeff: float = 1.0  # synthetic faces: coefficient supervision
    w_vertex: float = 1.0  # synthetic faces: vertex supervision (mm)
    w_pseudo: float = 0.0  # real faces: coefficient + vertex loss against the fitter's labels
    landmark_only_steps: int = 0  # the first steps train on landmarks only (no rendering)
    # The photometric / identity terms also move the geometry (False: they train albedo and
    # light only; the landmarks alone place the face).
    photo_geometry: bool = True
    eval_metric: str = "landmark_iod"
    w_reg_expression_l1: float = 0.0  # times w_reg: sparse expressions (β >= 0)
    identity_every: int = 1  # the identity term runs every n-th step (dlib's ResNet is costly)
    identity_samples: int = 0  # ... on at most this many samples of the batch; 0 = all
    landmark_contour: bool = True  # jaw landmarks on the occluding contour (as the fitter)
    augment_shift: float = 0.05  # random crop shift, fraction of the crop side
    augment_scale: float = 0.05  # random crop zoom, log-scale range
    augment_color: float = 0.1  # brightness / contrast / channel-gain jitter
    augment_flip: float = 0.5  # left-right mirror probability (samples without ground truth)
    augment_rotate: float = 0.0  # in-plane turn, ± degrees (samples without ground truth)
    photo_repeats: int = 1  # recnet stage: each cached photo appears this many times per epoch

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.photo_repeats < 1:
            raise ConfigError(f"photo_repeats: must be >= 1, got {self.photo_repeats}")
        for name in ("landmark_heavy", "landmark_robust", "augment_rotate", "w_pseudo"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)}")


@dataclass
class DCNetStageConfig(TrainConfig):
    """DCNet: the conditional generator (and its discriminator) of the reenacted image."""

    lr_d: float = 4e-4  # discriminator learning rate
    w_adv: float = 1.0
    w_l1: float = 10.0
    w_l1_face: float = 0.0  # L1 over the target face mask only (the acceptance region), added
    # L1 over the face mask of the generated image before the blend (blend generators): it must
    # be a face where C is 0, not a residual the blend hides (training/stages/dcnet.py)
    w_l1_generated: float = 10.0
    w_l1_hidden: float = 0.0  # L1 over the face pixels the source does not see (1 - C), added
    w_vgg: float = 10.0  # perceptual loss: face-id features, or VGG-19 when vgg_weights is set
    w_feature_match: float = 10.0
    eval_metric: str = "l1"
    # Generator: DCNetConfig preset at crop_size; channels / spade_hidden override it.
    crop_size: int = 0  # S of the pairs and the generator; 0 = data.crop_size
    generator: Literal["tiny", "full"] = "tiny"
    ablation: Literal["ours", "ours_r", "ours_p", "ours_l"] = "ours"
    channels: list[int] = field(default_factory=list)  # [] = the preset's
    spade_hidden: int = 0  # 0 = the preset's
    d_channels: int = 64  # discriminator: first layer width, scales, layers per scale
    d_scales: int = 2
    d_layers: int = 3
    # Conditions from the cached fitter labels or from RecNet (recnet_checkpoint, default
    # RUN/recnet/best.pt); the target light is the driving frame's (or the source's).
    conditions: Literal["fitter", "recnet"] = "fitter"
    recnet_checkpoint: str = ""
    light: Literal["driving", "source"] = "driving"
    vgg_weights: str = ""  # torchvision-format VGG-19 weights (.pth); '' = face-id features
    augment_color: float = 0.1  # brightness/contrast/gain jitter of each pair (same for both)
    source_repeats: int = 8  # each driving frame is paired with this many sources in turn


@dataclass
class SynthesizeConfig:
    """Expression-specific generation with DCNet (no training): each cached source frame keeps
    its shape, pose and light, and takes a driving expression from the configured sources."""

    n_pairs: int = 10000
    batch_size: int = 16
    # Where the driving expressions come from, drawn in turn: fitted video tracks of the prepare
    # cache, the large-expression prior, rows of the Live Link Face CSVs in csv_takes.
    sources: list[Literal["tracks", "prior", "csv"]] = field(
        default_factory=lambda: ["tracks", "prior"]
    )
    csv_takes: list[str] = field(default_factory=list)  # Live Link Face CSV files
    csv_fps: float = 60.0
    dcnet_checkpoint: str = ""  # '' = RUN/dcnet/best.pt
    shard_size: int = 512  # pairs per shard file
    sheet_tiles: int = 24  # pairs shown on RUN/synthesize/contact_sheet.png
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_pairs < 1 or self.batch_size < 1 or self.shard_size < 1:
            raise ConfigError("synthesize.n_pairs, batch_size and shard_size must be >= 1")
        if not self.sources:
            raise ConfigError("synthesize.sources: name at least one of tracks, prior, csv")
        if "csv" in self.sources and not self.csv_takes:
            raise ConfigError("synthesize.sources has 'csv' but synthesize.csv_takes is empty")


@dataclass
class ETNetStageConfig(TrainConfig):
    """ETNet: a ResNet regressing expression β from the face crop (data.crop_size), trained with
    the activation loss on renderer-synthetic pairs plus, when RUN/synthesize exists, DCNet's."""

    backbone: Literal["resnet18", "resnet34", "resnet50"] = "resnet34"
    width: float = 1.0
    synthesized_fraction: float = 0.5  # share of DCNet-synthesized pairs (when they exist)
    synthetic_size: int = 2000  # distinct renderer-synthetic faces
    p_large: float = 0.5  # their expressions: large-expression prior, fitted tracks, else sparse
    p_track: float = 0.3
    w_activation: float = 1.0  # the seed's activation loss
    w_l1: float = 0.0  # a plain L1 (median) term: inactive shapes go to exactly 0
    # Backbone start: 'recnet' copies RUN/recnet/best.pt's backbone (same backbone and width).
    init_backbone: Literal["none", "recnet"] = "none"
    heldout_size: int = 64  # the held-out large-expression synthetic set ...
    heldout_seed: int = 1001  # ... on its own seed (never the fitting benchmark's 0)
    augment_shift: float = 0.03
    augment_scale: float = 0.03
    augment_color: float = 0.1
    eval_metric: str = "expression_mae"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("synthesized_fraction", "p_large", "p_track"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name}: must be in [0, 1], got {getattr(self, name)}")
        if self.p_large + self.p_track > 1.0:
            raise ConfigError("p_large + p_track must be <= 1")
        if self.synthetic_size < 1 or self.heldout_size < 1:
            raise ConfigError("synthetic_size and heldout_size must be >= 1")
        if self.w_activation < 0 or self.w_l1 < 0 or self.w_activation + self.w_l1 <= 0:
            raise ConfigError("w_activation and w_l1 must be >= 0, not both 0")


@dataclass
class RecAugNetStageConfig(RecNetStageConfig):
    """RecAugNet: RUN/recnet/best.pt with its expression head replaced by RUN/etnet/best.pt,
    fine-tuned with RecNet's losses on RecNet's data plus the expression pairs."""

    augmented_fraction: float = 0.3  # share of the expression pairs in the training epoch
    init_from_recnet: bool = True  # start from RUN/recnet/best.pt (else from scratch)
    large_heldout: bool = True  # also score expression MAE on ETNet's held-out large set
    # Keep the trained ETNet fixed (its β as trained; the RecNet part adapts to it). An empty
    # ETNet (reccopynet) is always trained: there is nothing to keep.
    freeze_etnet: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.augmented_fraction < 1.0:
            raise ConfigError(
                f"augmented_fraction: must be in [0, 1), got {self.augmented_fraction}"
            )


@dataclass
class AblationStageConfig(RecAugNetStageConfig):
    """An ablation of the cascade (baseline, reccopynet, recdatanet): RecAugNet's settings; each
    stage reads the ones it uses (see training/README.md)."""


@dataclass
class RunConfig:
    """The whole run: one section per stage plus run-wide and data settings."""

    run: RunSection = field(default_factory=RunSection)
    data: DataConfig = field(default_factory=DataConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    recnet: RecNetStageConfig = field(default_factory=RecNetStageConfig)
    dcnet: DCNetStageConfig = field(default_factory=DCNetStageConfig)
    synthesize: SynthesizeConfig = field(default_factory=SynthesizeConfig)
    etnet: ETNetStageConfig = field(default_factory=ETNetStageConfig)
    recaugnet: RecAugNetStageConfig = field(default_factory=RecAugNetStageConfig)
    baseline: AblationStageConfig = field(default_factory=AblationStageConfig)
    reccopynet: AblationStageConfig = field(default_factory=AblationStageConfig)
    recdatanet: AblationStageConfig = field(default_factory=AblationStageConfig)

    def __post_init__(self) -> None:
        for key, names, known in (
            ("run.stages", self.run.stages, STAGE_ORDER),
            ("run.ablations", self.run.ablations, ABLATIONS),
        ):
            bad = [n for n in names if n not in known]
            if bad:
                raise ConfigError(f"{key}: unknown stage(s) {bad}; valid: {', '.join(known)}")


# ---- dict <-> dataclass -----------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, path: str) -> Any:
    """Check (and lightly coerce) ``value`` against the annotation ``tp``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(
                f"{path}: expected a mapping for section {tp.__name__}, got {value!r}"
            )
        return from_dict(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{path}: expected one of {list(choices)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list ({_type_name(tp)}), got {value!r}")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        return [_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping ({_type_name(tp)}), got {value!r}")
        kt, vt = typing.get_args(tp) or (Any, Any)
        return {_convert(kt, k, path): _convert(vt, v, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected bool (true/false), got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected int, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected float, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads '1e-4' (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected float, got {value!r}")
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected str, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{path}: expected a path string, got {value!r}")
        return Path(value)
    if isinstance(tp, type):
        if not isinstance(value, tp):
            raise ConfigError(f"{path}: expected {tp.__name__}, got {value!r}")
        return value
    return value


def from_dict(cls: type, d: dict[str, Any] | None, path: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict; unknown keys and wrong types are ConfigErrors."""
    if d is None:
        d = {}
    if not isinstance(d, dict):
        where = path or "config"
        raise ConfigError(f"{where}: expected a mapping, got {d!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in d.items():
        dotted = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise ConfigError(
                f"unknown config key {dotted!r}; valid keys"
                f"{' in ' + path if path else ''}: {', '.join(fields)}"
            )
        kwargs[key] = _convert(hints[key], value, dotted)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{path + '.' if path else ''}{exc}") from None
    except (TypeError, ValueError) as exc:
        msg = str(exc)
        if path and not msg.startswith(path):
            msg = f"{path}: {msg}"
        raise ConfigError(msg) from exc


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain nested dicts/lists (YAML/JSON/checkpoint friendly; paths as str)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(cfg)


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value (e.g. recnet.lr=1e-4)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"override {text!r}: value is not valid YAML ({problem})") from None
    return key, value


def apply_overrides(cfg: RunConfig, overrides: list[str] | tuple[str, ...]) -> RunConfig:
    """A new config with ``key=value`` overrides applied (dotted keys, YAML-parsed values)."""
    if not overrides:
        return cfg
    d = to_dict(cfg)
    for text in overrides:
        key, value = _parse_override(text)
        node: Any = d
        parts = key.split(".")
        for i, part in enumerate(parts):
            here = ".".join(parts[: i + 1])
            if not isinstance(node, dict):
                parent = ".".join(parts[:i])
                raise ConfigError(f"override {text!r}: {parent!r} is a value, not a section")
            if part not in node:
                parent = ".".join(parts[:i])
                valid = ", ".join(node)
                raise ConfigError(
                    f"override {text!r}: unknown config key {here!r}; valid keys"
                    f"{' in ' + parent if parent else ''}: {valid}"
                )
            if i == len(parts) - 1:
                node[part] = value
            else:
                node = node[part]
    return from_dict(type(cfg), d)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a run YAML into a ``RunConfig`` and apply overrides; errors name the file and key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    try:
        cfg = from_dict(RunConfig, raw or {})
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return apply_overrides(cfg, list(overrides))


def stage_section(cfg: RunConfig, name: str) -> Any:
    """The config section of stage ``name`` (``cfg.recnet`` for 'recnet')."""
    if not hasattr(cfg, name):
        raise ConfigError(f"no config section for stage {name!r}")
    return getattr(cfg, name)
