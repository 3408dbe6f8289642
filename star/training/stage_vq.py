"""The `vq` stage: the image tokenizer (star.vq.VQModel) trained on the generic trainer.

Everything trains (encoder, quantizer codebook, decoder); nothing is frozen. Loss = l1 * |x - x̂| + l2 * (x - x̂)^2
+ codebook + commitment (+ entropy): star.vq_train.vq_loss, the one definition both trainers use. With
`dict_warmup` the first steps are star.vq_train's dictionary warm-up (the stream attaches each cell's pixel-k-means
code; the model decodes those codes and learns to choose them), the same functions as `star train vq
--dict-warmup`. The perceptual and adversarial terms, the autoencoder warm-up and dead-code restarts exist only in
star.vq_train, which is what `star train vq` runs when given its own flags (docs/training.md).

Data: `stage_options.data` is anything star.image_data.open_image_dataset reads ("shapeworld[:N[:SEED]]", an image
folder, a .txt list) or a star-records dataset (its distinct images; bad records skipped and counted). Sample i of the
stream is image perm_e[i mod N] of epoch e (star.training.data.Mixture), so resume is exact. An image that cannot be
decoded at batch time is dropped from its batch and counted. Export: VQModel.save_pretrained (config.json +
model.safetensors), the folder `load_vq` and `star tokenize --vq` take.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from star.training.config import OptimConfig, TrainConfig, from_dict
from star.training.data import Mixture, RecordIndex, Warnings
from star.training.parallel import micro_batch_ranges
from star.vq_train import vq_loss


@dataclass(kw_only=True)
class VQOptions:
    data: str = "shapeworld"
    """Images: 'shapeworld[:N[:SEED]]', an image folder, a .txt list, or a star-records dataset folder."""
    preset: str = "shapes"
    """star.vq preset to build (`shapes`, `star-vq`)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """VQConfig field overrides on top of the preset (e.g. {"codebook_size": 256})."""
    resolution: int | None = None
    """Training image side; None = the VQConfig's resolution."""
    l1_weight: float = 1.0
    """Weight of the L1 reconstruction loss (star.vq_train default)."""
    l2_weight: float = 1.0
    """Weight of the L2 reconstruction loss (star.vq_train default)."""
    dict_warmup: int = 0
    """Steps of star.vq_train's dictionary warm-up (codes fixed by pixel-patch k-means, taught by cross-entropy;
    codebook initialised from the dictionary's principal coordinates); 0 = off."""
    kmeans_images: int = 1024
    """Images whose pixel patches the dictionary clusters."""
    kmeans_iters: int = 20
    """Lloyd iterations of that k-means."""

    def vq_config(self):
        from star.vq import preset

        return preset(self.preset, **self.overrides)


def open_images(opts: VQOptions) -> tuple[Any, dict[str, int]]:
    """(dataset of (3, R, R) tensors, counts of records skipped while indexing) for `opts.data`."""
    from star.image_data import ImageFileDataset, open_image_dataset

    resolution = opts.resolution or opts.vq_config().resolution
    path = Path(opts.data)
    if (path.is_dir() and (path / "manifest.json").is_file()) or (path.is_file() and path.suffix == ".jsonl"):
        index = RecordIndex(path, ["t2i", "edit", "vqa", "caption"], check_images=True)
        seen: dict[str, None] = {}
        for rec in index.records:
            for key in ("image", "source", "target"):
                if key in rec:
                    seen.setdefault(rec[key])
        return ImageFileDataset([Path(p) for p in seen], resolution, source=str(path)), index.stats.skipped
    return open_image_dataset(opts.data, resolution), {}


def dictionary_of(opts: VQOptions, seed: int, dataset=None) -> Tensor:
    """The dictionary warm-up's pixel-patch centroids (star.vq_train.pixel_dictionary), the same on every rank."""
    from star.vq_train import pixel_dictionary

    dataset = dataset if dataset is not None else open_images(opts)[0]
    return pixel_dictionary(dataset, opts.vq_config(), opts.kmeans_images, opts.kmeans_iters, seed)


@dataclass
class VQBatch:
    images: Tensor                 # (b, 3, R, R) in [-1, 1]
    targets: Tensor | None         # (b, h, w) dictionary codes while in the dictionary warm-up, else None


class VQStream:
    def __init__(self, config: TrainConfig, opts: VQOptions, rank: int, world_size: int, start_position: int,
                 dictionary: Tensor | None = None):
        self.ranges = micro_batch_ranges(config, rank, world_size, start_position)
        self.warn = Warnings()
        self.dataset, skipped = open_images(opts)
        if rank == 0:
            self.warn.update(skipped)
        self.mixture = Mixture([len(self.dataset)], [1.0], config.seed)
        self.batch_size, self.dict_warmup = config.batch_size, opts.dict_warmup
        self.downsample, self.search_block = opts.vq_config().downsample, opts.vq_config().search_block
        in_warmup = opts.dict_warmup and start_position < opts.dict_warmup * config.batch_size
        if in_warmup and dictionary is None:
            dictionary = dictionary_of(opts, config.seed, self.dataset)
        self.dictionary = dictionary if in_warmup else None

    @property
    def warnings(self) -> dict[str, int]:
        return dict(self.warn.counts)

    def __iter__(self) -> Iterator[Tensor]:
        return self

    def __next__(self) -> VQBatch:
        from star.vq_train import patch_codes

        images = []
        indices = next(self.ranges)
        for i in indices:
            _, j = self.mixture.locate(i)
            try:
                images.append(self.dataset[j])
            except OSError:                    # ImageFileDataset: a file that became unreadable
                self.warn.add("corrupt_image")
        if not images:
            raise RuntimeError(f"every image of a micro-batch was unreadable (data_warnings: {self.warnings})")
        images = torch.stack(images)                                       # (b, 3, R, R) in [-1, 1]
        in_warmup = self.dictionary is not None and indices.start // self.batch_size < self.dict_warmup
        targets = patch_codes(images, self.dictionary, self.downsample, self.search_block) if in_warmup else None
        return VQBatch(images, targets)


class VQStage:
    name = "vq"
    trainable: tuple[str, ...] = ("encoder", "decoder", "quantize", "quant_conv", "post_quant_conv")
    frozen: tuple[str, ...] = ()

    def default_config(self) -> TrainConfig:
        return TrainConfig(
            out_dir="runs/vq",
            steps=2000,
            batch_size=16,
            checkpoint_every=250,
            optim=OptimConfig(lr=2e-4, min_lr=2e-5, warmup_steps=100, weight_decay=0.0, betas=(0.9, 0.95)),
        )

    def options(self, config: TrainConfig) -> VQOptions:
        return from_dict(VQOptions, config.stage_options, "stage_options.")

    def build(self, config: TrainConfig, device: torch.device, dtype: torch.dtype) -> nn.Module:
        from star.vq import VQModel

        from star.vq_train import principal_coordinates

        opts = self.options(config)
        self._weights = (opts.l1_weight, opts.l2_weight)
        model = VQModel(opts.vq_config())              # initialised from the trainer-seeded global RNG
        self._dictionary = dictionary_of(opts, config.seed) if opts.dict_warmup else None   # reused by batches()
        if self._dictionary is not None:              # codes start as their patches' principal coordinates
            with torch.no_grad():                      # (a resumed run's checkpoint then overwrites them)
                model.quantize.embedding.weight.copy_(principal_coordinates(self._dictionary, model.config.code_dim))
        return model.to(device)

    def batches(self, config: TrainConfig, rank: int, world_size: int, start_position: int) -> VQStream:
        return VQStream(config, self.options(config), rank, world_size, start_position,
                        getattr(self, "_dictionary", None))

    def loss(self, model: nn.Module, batch: VQBatch) -> tuple[Tensor, dict[str, float]]:
        device = next(model.parameters()).device
        images = batch.images.to(device)
        targets = None if batch.targets is None else batch.targets.to(device)
        out = model(images, targets=targets)
        loss, terms = vq_loss(out, images, *getattr(self, "_weights", (1.0, 1.0)),
                              quantizer_weight=1.0 if targets is None else 0.0)
        metrics = {k: float(v.detach()) for k, v in terms.items()}
        if targets is not None:
            metrics["target_acc"] = float((out.codes == targets).float().mean())
        metrics["tokens"] = float(out.codes.numel())
        core = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        metrics["batch_code_usage"] = float(out.codes.unique().numel()) / core.config.codebook_size
        return loss, metrics

    def export(self, model: nn.Module, out_dir: Path) -> None:
        model.save_pretrained(out_dir)
