"""The Mask R-CNN training recipe: its configuration and presets, the staged detector run and the built-in demo.

    config = dataclasses.replace(PRESETS["maskrcnn_r50_fpn_1x_coco"], data="/data/coco", out="runs/mrcnn")
    train_detector(config)   # or `python train.py --model mask_rcnn --stage all --data ...`

Stages (models/mask_rcnn/trainer.py): heads, mask_head, all. A run
starts from random weights, from --init-from (a converted torchvision detector,
a torchvision-resnet50 backbone, or an earlier run's checkpoint), or resumes
with --resume.
"""
import dataclasses
import os

from models.training.recipe import (
    RunSettings, check_choice, check_not_negative, check_out_outside_data, check_positive, start_run,
)

@dataclasses.dataclass
class DetectorConfig(RunSettings):
    """A Mask R-CNN detector training run (--model mask_rcnn). Field names are the CLI flags (with - for _)."""

    preset: str = "maskrcnn_r50_fpn_1x_coco"
    stage: str = "all"  # heads | mask_head | all (models/mask_rcnn/trainer.py)
    data: str = ""  # COCO root: annotations/instances_{train,val}2017.json, {train,val}2017/
    out: str = ""
    resume: bool = False
    init_from: str = ""  # .keras to start from: a detector (models.convert torchvision-maskrcnn, a run) or a backbone
    # model (torchvision's maskrcnn_resnet50_fpn; the widths are small in the demo)
    backbone: str = "resnet50"
    variant: str = "v1"
    base_width: int = 64
    fpn_channels: int = 256
    mask_head_channels: int = 256
    box_head_units: int = 1024
    trainable_backbone_stages: int = 3  # stage all: conv3..conv5 train (torchvision's default with pretrained weights)
    freeze_batch_norm: bool = True  # stage all: the ResNet's BN keeps its statistics (off to train from scratch)
    # training targets (torchvision's)
    mask_rois: str = "proposals"  # stage mask_head: the detector's own proposals, or gt (jittered ground truth)
    rpn_pre_nms_top_n: int = 2000
    rpn_post_nms_top_n: int = 2000
    rpn_batch_size: int = 256
    box_batch_size: int = 512
    box_positive_fraction: float = 0.25
    # data
    short_side: int = 800
    long_side: int = 1333
    batch_size: int = 16
    skip_empty_images: bool = False
    # schedule: the 1x schedule (90k steps at batch 16, x0.1 at 60k and 80k, linear warm-up over 1000 from 0.001x)
    steps: int = 90000
    steps_per_epoch: int = 5000
    lr: float = 0.02
    milestones: tuple = (60000, 80000)
    warmup_steps: int = 1000
    momentum: float = 0.9
    weight_decay: float = 1e-4
    clip_norm: float = 0.0  # global gradient-norm clipping (0: off, as torchvision)


PRESETS = {
    # torchvision's / Detectron's maskrcnn_R_50_FPN_1x on COCO train2017 (start from --init-from a torchvision-resnet50).
    "maskrcnn_r50_fpn_1x_coco": DetectorConfig(),
    # Built-in demo: a narrow ResNet-50 FPN detector trained from scratch on the generated COCO-format sample (CPU).
    "maskrcnn_demo": DetectorConfig(
        preset="maskrcnn_demo", data="samples/coco", out="runs/maskrcnn_demo", resume=True, base_width=16,
        fpn_channels=64, mask_head_channels=64, box_head_units=256, trainable_backbone_stages=5,
        freeze_batch_norm=False, rpn_pre_nms_top_n=500, rpn_post_nms_top_n=250, box_batch_size=64,
        short_side=256, long_side=320, batch_size=4, steps=400, steps_per_epoch=50, lr=0.02,
        milestones=(300,), warmup_steps=50, clip_norm=5.0),
}
DEMO_PRESET = "maskrcnn_demo"
CONFIG = DetectorConfig  # what train.py builds the flags from


def check_config(config):
    """A setting no run can use: data.cli.UsageError (or SystemExit), one line naming the flag."""
    from models.mask_rcnn.trainer import MASK_ROIS, STAGES

    check_choice(config, "stage", STAGES)
    check_choice(config, "mask_rois", MASK_ROIS)
    check_choice(config, "backbone", ("resnet50", "resnet101"))
    check_choice(config, "variant", ("v1", "v2"))
    if config.jit_compile:
        # Measured: CombinedNonMaxSuppression (the proposals) and the per-image resize to sizes held in
        # tensors (models/mask_rcnn/transform.py) have no XLA kernels; a step would fail at its first call.
        raise SystemExit("--jit-compile: the detector's NMS and input resize have no XLA kernels; "
                         "train Mask R-CNN without it")
    check_positive(config, ("batch_size", "short_side", "long_side", "steps", "steps_per_epoch", "base_width",
                            "fpn_channels", "mask_head_channels", "box_head_units", "rpn_pre_nms_top_n",
                            "rpn_post_nms_top_n", "rpn_batch_size", "box_batch_size", "box_positive_fraction"))
    check_not_negative(config, ("save_every", "warmup_steps", "keep_checkpoints", "clip_norm",
                                "trainable_backbone_stages"))
    if config.trainable_backbone_stages > 5:
        raise SystemExit(f"--trainable-backbone-stages {config.trainable_backbone_stages}: at most 5")
    if config.init_from and not os.path.isfile(config.init_from):
        raise SystemExit(f"--init-from {config.init_from}: no such file (a .keras detector or backbone)")
    check_out_outside_data(config)


def read_coco_split(config, split):
    """data.coco.read_coco with one-line errors for a wrong --data."""
    from data import coco

    try:
        return coco.read_coco(config.data, split, skip_images_without_annotations=config.skip_empty_images)
    except FileNotFoundError as error:
        raise SystemExit(f"--data {config.data}: {error}")


def build_trainer(config, categories):
    """A compiled DetectorTrainer for a new run: the detector (with --init-from's weights), staged, its optimizer."""
    from models.mask_rcnn.detector import build_mask_rcnn
    from models.mask_rcnn.loading import init_from
    from models.mask_rcnn.trainer import DetectorTrainer, set_stage
    from models.training.optimizer import SegmentationSGD, WarmupStepDecay

    detector = build_mask_rcnn(categories.num_classes, category_ids=categories.coco_ids,
                              category_names=categories.names, backbone=config.backbone, variant=config.variant,
                              base_width=config.base_width, fpn_channels=config.fpn_channels,
                              mask_head_channels=config.mask_head_channels, box_head_units=config.box_head_units)
    if config.init_from:
        try:
            skipped = init_from(detector, config.init_from)
        except ValueError as error:
            raise SystemExit(f"--init-from {error}")
        if skipped:
            print(f"--init-from: {len(skipped)} weights of another shape left as initialised: {', '.join(skipped)}")
    set_stage(detector, config.stage, trainable_backbone_stages=config.trainable_backbone_stages,
              freeze_batch_norm=config.freeze_batch_norm)
    trainer = DetectorTrainer(detector, stage=config.stage, mask_rois=config.mask_rois,
                              rpn_pre_nms_top_n=config.rpn_pre_nms_top_n, rpn_post_nms_top_n=config.rpn_post_nms_top_n,
                              rpn_batch_size=config.rpn_batch_size, box_batch_size=config.box_batch_size,
                              box_positive_fraction=config.box_positive_fraction, seed=config.seed)
    schedule = WarmupStepDecay(config.lr, milestones=config.milestones, warmup_steps=config.warmup_steps)
    optimizer = SegmentationSGD(schedule, momentum=config.momentum, l2=config.weight_decay,
                                global_clipnorm=config.clip_norm or None)
    trainer.compile(optimizer=optimizer, jit_compile=config.jit_compile)
    return trainer


def train_detector(config, strategy=None):
    """Trains (or resumes) one stage of the detector; returns the run folder.

    Best checkpoint by val_loss (the same five losses on the val split);
    evaluate.py scores bbox and segm AP from raw images. history.csv and
    curves.png hold the total and each loss component per epoch.
    """
    import losses  # noqa: F401  (registers what a resumed checkpoint names)
    from data import coco
    from models.training.run_state import load_run_model
    from models.mask_rcnn.trainer import METRIC_NAMES
    from models.training.callbacks import fit_from_step, standard_callbacks

    check_config(config)
    strategy, state = start_run(config, strategy)
    if config.strategy == "multiworker":
        return train_multiworker(config, strategy, state)
    train_split, val_split = read_coco_split(config, "train"), read_coco_split(config, "val")
    print(f"COCO train: {train_split.summary()}; val: {val_split.summary()}")
    sizes = dict(short_side=config.short_side, long_side=config.long_side)

    def train_data(skip):  # the same batches in the same order as a run that was never stopped
        return coco.make_dataset(train_split, batch_size=config.batch_size, training=True, seed=config.seed,
                                 **sizes).skip(skip)

    val_data = coco.make_dataset(val_split, batch_size=config.batch_size, training=False, **sizes)
    epochs = -(-config.steps // config.steps_per_epoch)
    start_step = state["steps_done"] if state else 0
    with strategy.scope():
        if state:
            trainer = load_run_model(config.out, state)
            trainer.jit_compile = config.jit_compile
        else:
            trainer = build_trainer(config, train_split.categories)
    print(f"training {config.preset}, stage {config.stage}: {epochs} epochs x {config.steps_per_epoch} steps "
          f"(batch {config.batch_size}); starting at epoch {start_step // config.steps_per_epoch + 1} "
          f"(step {start_step}); run folder {config.out}")
    callbacks, _ = standard_callbacks(config.out, monitor="val_loss", mode="min", keep=config.keep_checkpoints,
                                      initial_state=state, save_every=config.save_every,
                                      curve_components=METRIC_NAMES[1:])
    fit_from_step(trainer, train_data, start_step=start_step, steps_per_epoch=config.steps_per_epoch, epochs=epochs,
                  callbacks=callbacks, validation_data=val_data, verbose=config.verbose, shuffle=False)
    return config.out


def train_multiworker(config, strategy, state):
    """train_detector under MultiWorkerMirroredStrategy: models/training/custom_loop.py with the detector's step.

    Each worker reads its own share of the train records (input_context); no per-epoch validation
    (evaluate.py scores the checkpoints).
    """
    from data import coco
    from models.training.custom_loop import train_with_strategy_run
    from models.mask_rcnn.trainer import METRIC_NAMES

    train_split = read_coco_split(config, "train")
    print(f"COCO train: {train_split.summary()}")

    def dataset_fn(input_context, start_step):
        batch_size = input_context.get_per_replica_batch_size(config.batch_size)
        return coco.make_dataset(train_split, batch_size=batch_size, training=True, seed=config.seed,
                                 short_side=config.short_side, long_side=config.long_side,
                                 input_context=input_context).skip(start_step)

    def make_replica_step(trainer):
        return lambda data: trainer.logged(trainer.optimizer_step(data))

    return train_with_strategy_run(
        config, strategy, state, build_model=lambda: build_trainer(config, train_split.categories),
        make_replica_step=make_replica_step, dataset_fn=dataset_fn, epochs=-(-config.steps // config.steps_per_epoch),
        steps_per_epoch=config.steps_per_epoch, curve_components=METRIC_NAMES[1:])


def run_detector_demo(config):
    """`make demo-maskrcnn`: COCO-format sample (generated once), train the detector, evaluate from raw images."""
    import time

    from data import samples
    from models.mask_rcnn.evaluation import evaluate_on_coco

    if not os.path.isdir(os.path.join(config.data, "annotations")):
        samples.main(["coco", config.data])  # the built-in sample, at its default size
    started = time.time()
    run_dir = train_detector(config)
    trained = time.time()
    eval_dir = os.path.join(run_dir, "eval")
    metrics = evaluate_on_coco(os.path.join(run_dir, "last.keras"), config.data, eval_dir, split="val")
    print("\ndemo finished:")
    print(f"  segm AP (from raw images)  {metrics['segm_AP']:.4f} (AP50 {metrics['segm_AP50']:.4f})")
    print(f"  bbox AP                    {metrics['bbox_AP']:.4f} (AP50 {metrics['bbox_AP50']:.4f})")
    print(f"  training {trained - started:.0f} s, evaluation {time.time() - trained:.0f} s")
    print(f"  checkpoints, curves        {run_dir}/")
    print(f"  evaluation                 {eval_dir}/ (metrics.json, bbox_results.json, segm_results.json)")
    return metrics


def run(config):
    """What `python train.py --model mask_rcnn` does with a resolved config: the demo, or one training run."""
    return run_detector_demo(config) if config.preset == DEMO_PRESET else train_detector(config)
