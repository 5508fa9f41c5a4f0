"""The training configuration of a run (everything but the architecture), as stored in config.json."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from fer_runtime.manifest import sha256_file
from fer_runtime.tta import TTA_MODES
from fer_train.distribute import STRATEGIES
from fer_train.models import ModelConfig
from fer_train.pipeline import AugmentConfig
from fer_train.precision import PRECISIONS
from fer_train.schedules import SCHEDULES, check_cycles
from fer_train.settings import from_stored, stored_object

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
TEACHER_MODES = ("cached", "live")


@dataclass
class TrainConfig:
    """Everything that decides a run besides the architecture."""

    data: str = ""
    val_fraction: float = 0.1  # validation share when the data has no PublicTest split
    random_seed: int = 1234
    split_seed: int | None = None  # draws the validation rows (data without a fixed split); None = random_seed
    epochs: int = 40
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_epochs: int = 1
    cycles: int = 1  # cosine cycles after warm-up; > 1 saves a snapshot member at the end of each
    label_smoothing: float = 0.0
    class_weights: bool = False
    patience: int = 15
    precision: str = "auto"  # auto | float32 | bfloat16 | mixed_float16 (fer_train.precision)
    strategy: str = "default"  # default | mirrored | multiworker (fer_train.distribute)
    limit_train: int = 0  # use only the first N training rows (0 = all); for smoke tests
    hide_labels: float = 0.0  # fraction of Training withheld as unlabelled (self-training)
    ferplus: str = ""  # ferplus_votes.csv (FER2013 row order); blended into targets with ferplus_weight
    ferplus_weight: float = 0.0
    teacher: str = ""  # run/ensemble whose probabilities are blended into targets with distill_weight
    distill_weight: float = 0.0
    distill_temperature: float = 2.0
    teacher_tta: str = "flip"  # the teacher's test-time augmentation (fer_runtime.tta.TTA_MODES)
    teacher_mode: str = "cached"  # cached: probabilities on the plain images, once; live: on each augmented batch
    init: str = ""  # a run whose best.keras weights the run starts from (fine-tuning); "" = random
    swa_start: int = 0  # average the weights from this epoch (1-based) on (fer_train.swa); 0 = off
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @property
    def validation_seed(self) -> int:
        """The seed the validation rows are drawn with on data without a fixed split (``split_seed``, else
        ``random_seed`` as in runs from before ``split_seed``)."""
        return self.random_seed if self.split_seed is None else self.split_seed

    @property
    def live_teacher(self) -> bool:
        """Whether a teacher labels each training batch as augmented (``teacher_mode`` live with a teacher weight)."""
        return self.distill_weight > 0 and self.teacher_mode == "live"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """A stored training config (config.json's ``train``); ValueError naming any setting it does not have."""
        d = dict(stored_object(d, "training"))
        if "validate" in d:  # runs from before the field was renamed
            d.setdefault("val_fraction", d.pop("validate"))
        legacy = d.pop("mixed_precision", None)  # runs from before --precision
        if legacy is not None and "precision" not in d:
            d["precision"] = "mixed_float16" if legacy else "float32"
        aug = from_stored(AugmentConfig, d.pop("augment", {}), "augmentation")
        return from_stored(cls, {**d, "augment": aug}, "training")

    def validate(self) -> None:
        """Raise ValueError naming the first setting that is out of range or unknown."""
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose from {', '.join(SCHEDULES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose from {', '.join(PRECISIONS)}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose from {', '.join(STRATEGIES)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch size must be positive")
        ranges = (("--lr", self.lr, self.lr >= 0, ">= 0"), ("--weight-decay", self.weight_decay, self.weight_decay >= 0, ">= 0"),
                  ("--patience", self.patience, self.patience >= 1, ">= 1"),
                  ("--label-smoothing", self.label_smoothing, 0 <= self.label_smoothing < 1, "in [0, 1)"),
                  ("--hide-labels", self.hide_labels, 0 <= self.hide_labels < 1, "in [0, 1)"),
                  ("--limit-train", self.limit_train, self.limit_train >= 0, ">= 0 (0 = all rows)"),
                  ("--distill-temperature", self.distill_temperature, self.distill_temperature > 0, "> 0"),
                  ("--warmup-epochs", self.warmup_epochs, self.warmup_epochs >= 0, ">= 0"),
                  ("--random-seed", self.random_seed, 0 <= self.random_seed < 2**32, "in [0, 2**32)"),
                  ("--split-seed", self.split_seed, 0 <= self.validation_seed < 2**32, "in [0, 2**32)"))
        for flag, value, ok, rule in ranges:
            if not ok:
                raise ValueError(f"{flag} must be {rule}, got {value}")
        check_cycles(self.schedule, self.epochs, self.warmup_epochs, self.cycles)
        self.augment.check(self.class_weights)
        for name, w, src in (("ferplus", self.ferplus_weight, self.ferplus), ("teacher", self.distill_weight, self.teacher)):
            if not 0 <= w <= 1:
                raise ValueError(f"{name} weight must be in [0, 1], got {w}")
            if w > 0 and not src:
                raise ValueError(f"a {name} weight needs --{name}")
        if self.teacher_mode not in TEACHER_MODES:
            raise ValueError(f"unknown teacher mode {self.teacher_mode!r}; choose from {', '.join(TEACHER_MODES)}")
        if self.teacher_mode == "live" and self.distill_weight <= 0:
            raise ValueError("--teacher-mode live needs a teacher: --teacher RUN and --distill-weight > 0")
        if self.teacher_tta not in TTA_MODES:
            raise ValueError(f"unknown teacher TTA {self.teacher_tta!r}; choose from {', '.join(TTA_MODES)}")
        if self.ferplus_weight + self.distill_weight > 1:
            raise ValueError("ferplus weight + distill weight must not exceed 1")
        if not 0 <= self.swa_start <= self.epochs:
            raise ValueError(f"--swa-start must be an epoch of the run (1..{self.epochs}) or 0, got {self.swa_start}")
        if self.teacher_mode == "live" and self.strategy == "multiworker":  # every worker would run the teacher on all
            raise ValueError("--teacher-mode live does not support --strategy multiworker")
        if self.swa_start and self.strategy == "multiworker":
            raise ValueError("--swa-start does not support --strategy multiworker")


INPUT_FIELDS = ("data", "ferplus", "teacher")  # the paths a run reads; stored relative to the run directory
PATH_FIELDS = (*INPUT_FIELDS, "init")  # init is read once, when the run starts, so a resume does not need it


def stored_inputs(cfg: TrainConfig, run: Path) -> TrainConfig:
    """``cfg`` with its input paths relative to ``run``, as config.json stores them (machine-independent)."""
    rel = {k: os.path.relpath(Path(v).resolve(), Path(run).resolve()) for k in PATH_FIELDS if (v := getattr(cfg, k))}
    return replace(cfg, **rel)


def resolved_inputs(cfg: TrainConfig, run: Path) -> TrainConfig:
    """``cfg`` with relative input paths resolved against ``run`` (absolute ones, from older runs, are kept)."""
    return replace(cfg, **{k: str(Path(run) / v) for k in PATH_FIELDS if (v := getattr(cfg, k)) and not Path(v).is_absolute()})


def read_run_config(run: Path) -> tuple[dict[str, Any], ModelConfig, TrainConfig]:
    """(config.json as a dict, model config, training config with input paths usable from here) of ``run``: a run
    folder, or its config file. RunError naming the file if it is not a fer-train run config."""
    from fer_train import runs

    path = Path(run) if Path(run).is_file() else Path(run) / runs.CONFIG
    conf = runs.read_json(path)
    missing = [k for k in ("model", "train") if not isinstance(conf, dict) or k not in conf]
    if missing:
        raise runs.RunError(f"{path}: no {' or '.join(map(repr, missing))} section; not a fer-train run config")
    try:
        return (conf, ModelConfig.from_dict(conf["model"]),
                resolved_inputs(TrainConfig.from_dict(conf["train"]), path.parent))
    except ValueError as e:
        raise runs.RunError(f"{path}: {e}") from None


def refuse_new_epochs(run: Path, epochs: int | None) -> None:
    """RunError when ``run`` resumes under an ``epochs`` other than the one it was started with (a resume keeps its
    own schedule, so the option would be ignored)."""
    from fer_train import runs

    if epochs and (started := read_run_config(run)[2].epochs) != epochs:
        raise runs.RunError(f"{run} was started with {started} epochs and resumes with them: leave out --epochs "
                            f"or pass {started}")


def data_record(path: str | os.PathLike[str], run: Path, sha256: str | None = None) -> dict[str, Any]:
    """How config.json names a data file: its path relative to the run, its file name and its sha256 (``sha256``
    when the caller has just checked it, else read from the file)."""
    p = Path(path)
    rec: dict[str, Any] = {"path": os.path.relpath(p.resolve(), Path(run).resolve()), "file": p.name}
    if p.is_file():
        rec["sha256"] = sha256 or sha256_file(p)
    return rec


def missing_input(run: Path, conf: dict[str, Any], cfg: TrainConfig) -> str | None:
    """A one-line message when an input of ``run`` is not where its config says, naming the option to pass."""
    for k in INPUT_FIELDS:
        v = getattr(cfg, k)
        if v and not Path(v).exists():
            what = conf.get("data", {}) if k == "data" else {}
            extra = ", ".join(f"{n} {what[n]}" for n in ("file", "sha256", "train_rows") if what.get(n))
            return (f"{run}: its {k} is not at {v}{f' ({extra})' if extra else ''}; "
                    f"pass --{k} PATH to say where it is on this machine")
    return None
