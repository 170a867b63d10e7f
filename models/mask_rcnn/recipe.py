"""The Mask R-CNN training recipe: its configuration and presets, the staged detector (DetectorRecipe: what the
shared run in models/training/skeleton.py needs from it) and the built-in demo.

    config = dataclasses.replace(PRESETS["maskrcnn_r50_fpn_1x_coco"], data="/data/coco", out="runs/mrcnn")
    train_detector(config)   # or `python train.py --model mask_rcnn --stage all --data ...`

Stages (models/mask_rcnn/trainer.py): heads, mask_head, all. A run
starts from random weights, from --init-from (a converted torchvision detector,
a torchvision-resnet50 backbone, or an earlier run's checkpoint), or resumes
with --resume.
"""
import dataclasses
import os

from data.errors import UsageError
from models.training.recipe import (
    RunSettings, check_choice, check_not_negative, check_out_outside_data, check_positive, setting,
)
from models.training.skeleton import Recipe, train


@dataclasses.dataclass
class DetectorConfig(RunSettings):
    """A Mask R-CNN detector training run (--model mask_rcnn). Field names are the CLI flags (with - for _)."""

    preset: str = setting("maskrcnn_r50_fpn_1x_coco", "named recipe")
    stage: str = setting("all", "what trains: heads (RPN and RoI heads), mask_head, or all "
                                "(models/mask_rcnn/trainer.py)")
    data: str = setting("", "COCO root: annotations/instances_{train,val}2017.json, {train,val}2017/")
    out: str = setting("", "run folder: checkpoints, config.json, history.csv, curves.png "
                           "(default: runs/<preset>)")
    resume: bool = setting(False, "continue the run in --out from its last saved step, with its saved settings")
    init_from: str = setting("", ".keras to start from: a detector (python -m models.convert torchvision-maskrcnn, "
                                 "an earlier run) or a backbone (torchvision-resnet50)")
    # model (torchvision's maskrcnn_resnet50_fpn; the widths are small in the demo)
    backbone: str = setting("resnet50", "resnet50 or resnet101")
    variant: str = setting("v1", "v1 (maskrcnn_resnet50_fpn) or v2 (maskrcnn_resnet50_fpn_v2's heads)")
    base_width: int = setting(64, "channels of the ResNet's first stage (64: torchvision's; small for tests)")
    fpn_channels: int = setting(256, "FPN channels")
    mask_head_channels: int = setting(256, "channels of the mask head's convolutions")
    box_head_units: int = setting(1024, "units of the box head's two dense layers")
    trainable_backbone_stages: int = setting(3, "stage all: how many ResNet stages train, from the top (3: "
                                                "conv3..conv5, torchvision's default with pretrained weights)")
    freeze_batch_norm: bool = setting(True, "stage all: the ResNet's BatchNorm keeps its statistics "
                                            "(--no-freeze-batch-norm to train from scratch)")
    # training targets (torchvision's)
    mask_rois: str = setting("proposals", "stage mask_head: the detector's own proposals, or gt (jittered "
                                          "ground-truth boxes)")
    rpn_pre_nms_top_n: int = setting(2000, "proposals per image kept before NMS in training")
    rpn_post_nms_top_n: int = setting(2000, "proposals per image kept after NMS in training")
    rpn_batch_size: int = setting(256, "anchors sampled per image for the RPN losses")
    box_batch_size: int = setting(512, "RoIs sampled per image for the box and mask losses")
    box_positive_fraction: float = setting(0.25, "fraction of positives among the sampled RoIs")
    # data
    short_side: int = setting(800, "images are resized so that their short side is this")
    long_side: int = setting(1333, "... and their long side at most this")
    batch_size: int = setting(16, "global batch, split over the replicas")
    skip_empty_images: bool = setting(False, "leave out training images without annotations")
    # schedule: the 1x schedule (90k steps at batch 16, x0.1 at 60k and 80k, linear warm-up over 1000 from 0.001x)
    steps: int = setting(90000, "the optimizer step at which the run ends")
    steps_per_epoch: int = setting(5000, "optimizer steps between validations and checkpoints")
    lr: float = setting(0.02, "base learning rate")
    milestones: tuple = setting((60000, 80000), "optimizer steps at which the learning rate drops x0.1")
    warmup_steps: int = setting(1000, "linear warm-up from 0.001 x --lr over these steps")
    momentum: float = setting(0.9, "SGD momentum")
    weight_decay: float = setting(1e-4, "L2 weight decay on kernels")
    clip_norm: float = setting(0.0, "global gradient-norm clipping (0: off, as torchvision)")


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
RESUMABLE = ()  # nothing beside models.training.recipe.RESUMABLE: every detector setting shapes the model or data


def check_config(config):
    """A setting no run can use: data.errors.UsageError, one line naming the flag."""
    from models.mask_rcnn.trainer import MASK_ROIS, STAGES

    check_choice(config, "stage", STAGES)
    check_choice(config, "mask_rois", MASK_ROIS)
    check_choice(config, "backbone", ("resnet50", "resnet101"))
    check_choice(config, "variant", ("v1", "v2"))
    if config.jit_compile:
        # Measured: CombinedNonMaxSuppression (the proposals) and the per-image resize to sizes held in
        # tensors (models/mask_rcnn/transform.py) have no XLA kernels; a step would fail at its first call.
        raise UsageError("--jit-compile: the detector's NMS and input resize have no XLA kernels; "
                         "train Mask R-CNN without it")
    check_positive(config, ("batch_size", "short_side", "long_side", "steps", "steps_per_epoch", "base_width",
                            "fpn_channels", "mask_head_channels", "box_head_units", "rpn_pre_nms_top_n",
                            "rpn_post_nms_top_n", "rpn_batch_size", "box_batch_size", "box_positive_fraction"))
    check_not_negative(config, ("save_every", "warmup_steps", "keep_checkpoints", "clip_norm",
                                "trainable_backbone_stages"))
    if config.trainable_backbone_stages > 5:
        raise UsageError(f"--trainable-backbone-stages {config.trainable_backbone_stages}: at most 5")
    if config.init_from and not os.path.isfile(config.init_from):
        raise UsageError(f"--init-from {config.init_from}: no such file (a .keras detector or backbone)")
    check_out_outside_data(config)


def read_coco_split(config, split):
    """data.coco.read_coco with one-line errors for a wrong --data."""
    from data import coco

    try:
        return coco.read_coco(config.data, split, skip_images_without_annotations=config.skip_empty_images)
    except FileNotFoundError as error:
        raise UsageError(f"--data {config.data}: {error}") from None


def learning_rate(config):
    """torchvision's detection schedule: linear warm-up, x0.1 at each milestone (absolute steps: --steps moves none)."""
    from models.training.optimizer import WarmupStepDecay

    return WarmupStepDecay(config.lr, milestones=config.milestones, warmup_steps=config.warmup_steps)


def build_trainer(config, categories):
    """A compiled DetectorTrainer for a new run: the detector (with --init-from's weights), staged, its optimizer."""
    from models.mask_rcnn.detector import build_mask_rcnn
    from models.mask_rcnn.loading import init_from
    from models.mask_rcnn.trainer import DetectorTrainer, set_stage
    from models.training.optimizer import SegmentationSGD

    detector = build_mask_rcnn(categories.num_classes, category_ids=categories.coco_ids,
                              category_names=categories.names, backbone=config.backbone, variant=config.variant,
                              base_width=config.base_width, fpn_channels=config.fpn_channels,
                              mask_head_channels=config.mask_head_channels, box_head_units=config.box_head_units)
    if config.init_from:
        try:
            skipped = init_from(detector, config.init_from)
        except ValueError as error:
            raise UsageError(f"--init-from {error}") from None
        if skipped:
            print(f"--init-from: {len(skipped)} weights of another shape left as initialised: {', '.join(skipped)}")
    set_stage(detector, config.stage, trainable_backbone_stages=config.trainable_backbone_stages,
              freeze_batch_norm=config.freeze_batch_norm)
    trainer = DetectorTrainer(detector, stage=config.stage, mask_rois=config.mask_rois,
                              rpn_pre_nms_top_n=config.rpn_pre_nms_top_n, rpn_post_nms_top_n=config.rpn_post_nms_top_n,
                              rpn_batch_size=config.rpn_batch_size, box_batch_size=config.box_batch_size,
                              box_positive_fraction=config.box_positive_fraction, seed=config.seed)
    optimizer = SegmentationSGD(learning_rate(config), momentum=config.momentum, l2=config.weight_decay,
                                global_clipnorm=config.clip_norm or None)
    trainer.compile(optimizer=optimizer, jit_compile=config.jit_compile)
    return trainer


class DetectorRecipe(Recipe):
    """Mask R-CNN's part of the shared run (models/training/skeleton.py): COCO, one stage of the detector.

    Best checkpoint by val_loss (the same five losses on the val split, Keras's validation in fit);
    evaluate.py scores bbox and segm AP from raw images. history.csv and curves.png hold the total and
    each loss component per epoch. Under multiworker each worker reads its own share of the train
    records (input_context), without per-epoch validation (evaluate.py scores the checkpoints).
    """

    resumable = RESUMABLE

    def __init__(self, config):
        super().__init__(config)
        import losses  # noqa: F401  (registers what a resumed checkpoint names)
        from models.mask_rcnn.trainer import METRIC_NAMES

        self.curve_components = METRIC_NAMES[1:]

    def check(self):
        check_config(self.config)

    def read_data(self):
        self.train_split = read_coco_split(self.config, "train")
        print(f"COCO train: {self.train_split.summary()}")

    def plan(self):
        return self.config.steps_per_epoch, self.config.steps

    def learning_rate(self, total_steps):
        return learning_rate(self.config)

    def build_model(self, total_steps, sync_bn):
        return build_trainer(self.config, self.train_split.categories)

    def train_dataset(self, skip, input_context=None):
        """The same batches in the same order as a run that was never stopped."""
        from data import coco

        config = self.config
        batch = input_context.get_per_replica_batch_size(config.batch_size) if input_context else config.batch_size
        return coco.make_dataset(self.train_split, batch_size=batch, training=True, seed=config.seed,
                                 short_side=config.short_side, long_side=config.long_side,
                                 input_context=input_context).skip(skip)

    def validation(self):
        from data import coco

        config = self.config
        val_split = read_coco_split(config, "val")
        print(f"COCO val: {val_split.summary()}")
        val_data = coco.make_dataset(val_split, batch_size=config.batch_size, training=False,
                                     short_side=config.short_side, long_side=config.long_side)
        return [], {"validation_data": val_data, "shuffle": False}

    def make_replica_step(self, trainer):
        return lambda data: trainer.logged(trainer.optimizer_step(data))

    def describe(self):
        return f"{self.config.preset}, stage {self.config.stage}"


def train_detector(config, strategy=None):
    """Trains (or resumes) one stage of the detector until optimizer step --steps; returns the run folder
    (models.training.skeleton.train, which says what it raises)."""
    return train(DetectorRecipe(config), strategy)


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
