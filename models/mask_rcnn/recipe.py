"""The Mask R-CNN training recipe (mask-head stage): its configuration and
presets, the run and the built-in demo.

    config = dataclasses.replace(PRESETS["maskrcnn_r50_fpn_mask_head_coco"], data="/data/coco", out="runs/mh")
    train_mask_head(config)   # or `python train.py --model mask_rcnn --data ...`
"""
import dataclasses
import os

from models.recipes import check_choice, check_not_negative, check_out_outside_data, check_positive, start_run


@dataclasses.dataclass
class MaskHeadConfig:
    """A Mask R-CNN mask-head training run (--model mask_rcnn --stage mask_head): class and mask branches
    on a ResNet-FPN, trained on RoIs sampled around the ground-truth boxes (no RPN yet)."""

    preset: str = "maskrcnn_r50_fpn_mask_head_coco"
    stage: str = "mask_head"
    data: str = ""  # COCO root: annotations/instances_{train,val}2017.json, {train,val}2017/
    out: str = ""
    resume: bool = False
    # model
    depth: int = 50
    base_width: int = 64
    fpn_channels: int = 256
    head_channels: int = 256
    fc_units: int = 1024
    freeze_backbone: bool = False
    # data
    short_side: int = 800
    long_side: int = 1333
    batch_size: int = 16
    num_rois: int = 512  # sampled RoIs per image (the paper's 512, a quarter positive)
    positive_fraction: float = 0.25
    skip_empty_images: bool = False
    # schedule: Detectron's 1x (90k steps at batch 16, x0.1 at 60k and 80k, linear warm-up)
    steps: int = 90000
    steps_per_epoch: int = 5000
    lr: float = 0.02
    milestones: tuple = (60000, 80000)
    warmup_steps: int = 1000
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # runtime
    strategy: str = "none"
    mixed_precision: bool = False
    jit_compile: bool = False
    keep_checkpoints: int = 2
    save_every: int = 0  # also save every N optimizer steps (0: at epoch ends only)
    deterministic: bool = False  # tf.config.experimental.enable_op_determinism: same seed, same weights
    seed: int = 0
    verbose: int = 1


PRESETS = {
    "maskrcnn_r50_fpn_mask_head_coco": MaskHeadConfig(),
    # Built-in demo: a ResNet-18 FPN mask head on the generated COCO-format sample, a few CPU minutes.
    "maskrcnn_demo": MaskHeadConfig(
        preset="maskrcnn_demo", data="samples/coco", out="runs/maskrcnn_demo", resume=True, depth=18,
        base_width=16, fpn_channels=64, head_channels=64, fc_units=256, short_side=256, long_side=320,
        batch_size=2, num_rois=32, positive_fraction=0.5, steps=300, steps_per_epoch=60, lr=0.004,
        milestones=(240,), warmup_steps=30),
}
DEMO_PRESET = "maskrcnn_demo"
CONFIG = MaskHeadConfig  # what train.py builds the flags from


def check_config(config):
    """One-line SystemExit naming the flag for a setting no run can use."""
    if config.stage != "mask_head":
        raise SystemExit(f"--stage {config.stage}: only mask_head exists so far (the RPN and box head come next)")
    if config.strategy == "multiworker":
        raise SystemExit("--strategy multiworker: the mask-head stage supports none and mirrored for now")
    check_positive(config, ("batch_size", "short_side", "long_side", "num_rois", "steps", "steps_per_epoch",
                            "base_width", "fpn_channels", "head_channels", "fc_units"))
    check_not_negative(config, ("save_every", "warmup_steps", "keep_checkpoints"))
    check_choice(config, "depth", (18, 34, 50, 101, 152))
    check_out_outside_data(config)


def read_coco_split(config, split):
    """data.coco.read_coco with one-line errors for a wrong --data."""
    from data import coco

    try:
        return coco.read_coco(config.data, split, skip_images_without_annotations=config.skip_empty_images)
    except FileNotFoundError as error:
        raise SystemExit(f"--data {config.data}: {error}")


def train_mask_head(config, strategy=None):
    """Trains (or resumes) the Mask R-CNN class and mask heads; returns the run folder.

    Loss: the shared losses.mask_rcnn_mask_loss (positive RoIs, ground-truth class channel, BCE from
    logits) + softmax class loss, both exact global means under tf.distribute (MaskHeadTrainer).
    Best checkpoint by val_loss on the ground-truth boxes; evaluate.py scores mask AP.
    """
    import losses  # noqa: F401  (registers what a resumed checkpoint names)
    from data import coco
    from models.run_state import load_run_model
    from models.mask_rcnn import MaskHeadTrainer, build_mask_head_model
    from models.training import SegmentationSGD, WarmupStepDecay, fit_from_step, standard_callbacks

    check_config(config)
    strategy, state = start_run(config, strategy)
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
        else:
            network = build_mask_head_model(
                train_split.categories.num_classes, depth=config.depth, base_width=config.base_width,
                fpn_channels=config.fpn_channels, head_channels=config.head_channels, fc_units=config.fc_units,
                freeze_backbone=config.freeze_backbone, sync_bn=strategy.num_replicas_in_sync > 1)
            trainer = MaskHeadTrainer(network, num_rois=config.num_rois, positive_fraction=config.positive_fraction,
                                      seed=config.seed)
            schedule = WarmupStepDecay(config.lr, milestones=config.milestones, warmup_steps=config.warmup_steps)
            trainer.compile(optimizer=SegmentationSGD(schedule, momentum=config.momentum, l2=config.weight_decay),
                            jit_compile=config.jit_compile)
    print(f"training {config.preset}: {epochs} epochs x {config.steps_per_epoch} steps (batch {config.batch_size}); "
          f"starting at epoch {start_step // config.steps_per_epoch + 1} (step {start_step}); run folder {config.out}")
    callbacks, _ = standard_callbacks(config.out, monitor="val_loss", mode="min", keep=config.keep_checkpoints,
                                      initial_state=state, save_every=config.save_every)
    fit_from_step(trainer, train_data, start_step=start_step, steps_per_epoch=config.steps_per_epoch, epochs=epochs,
                  callbacks=callbacks, validation_data=val_data, verbose=config.verbose, shuffle=False)
    return config.out


def run_mask_head_demo(config):
    """`make demo-maskrcnn`: COCO-format sample (generated once), train the heads, oracle-box mask AP."""
    import evaluate
    from data import samples

    if not os.path.isdir(os.path.join(config.data, "annotations")):
        samples.main(["coco", config.data])  # the built-in sample, at its default size
    run_dir = train_mask_head(config)
    eval_dir = os.path.join(run_dir, "eval")
    metrics = evaluate.main(["--model", "mask_rcnn", "--boxes", "gt", "--checkpoint",
                             os.path.join(run_dir, "last.keras"), "--data", config.data, "--split", "val",
                             "--out", eval_dir, "--overwrite"])
    print("\ndemo finished:")
    print(f"  oracle-box segm AP  {metrics['segm_AP']:.4f} (AP50 {metrics['segm_AP50']:.4f})")
    print(f"  checkpoints, curves {run_dir}/")
    print(f"  evaluation          {eval_dir}/ (metrics.json, segm_results.json)")
    return metrics


def run(config):
    """What `python train.py --model mask_rcnn` does with a resolved config: the demo, or one training run."""
    return run_mask_head_demo(config) if config.preset == DEMO_PRESET else train_mask_head(config)
