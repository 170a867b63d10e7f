"""Training the Mask R-CNN class and mask heads on ground-truth-derived RoIs (no RPN yet).

    network = build_mask_head_model(num_classes, ...)
    trainer = MaskHeadTrainer(network, num_rois=64)
    schedule = models.training.WarmupStepDecay(0.02, milestones=(60000, 80000), warmup_steps=1000)
    trainer.compile(optimizer=models.training.SegmentationSGD(schedule, momentum=0.9, l2=1e-4))
    trainer.fit(train_dataset, steps_per_epoch=..., epochs=...)   # data.coco.make_dataset(training=True)
    trainer.evaluate(val_dataset)                                  # losses on the ground-truth boxes

Loss = mask loss (losses.mask_rcnn_mask_loss from logits: positive RoIs, their
ground-truth class's channel, binary cross-entropy) + class_loss_weight * class
loss (softmax cross-entropy over K + 1 classes, mean over sampled RoIs).
Both are exact global means under tf.distribute (sum / global count).
"""
import keras
import tensorflow as tf

import losses
from losses.distribute import replica_share_of_mean
from models.mask_rcnn.targets import mask_targets, sample_rois
from models.mask_rcnn.transform import detector_inputs


def head_losses(outputs, targets):
    """Mask and class losses of one batch; each this replica's share of its global mean.

    outputs: the heads model's outputs (class_logits [B, R, K+1], mask_logits [B, R, m, m, K+1]).
    targets: class_ids [B, R] int (0 = background), masks [B, R, m, m] float 0/1,
             valid [B, R] bool (False = padding RoI, left out of the class loss).
    Returns {"mask_loss", "class_loss"} scalars and "accuracy" (class accuracy over valid RoIs).
    """
    mask_total, mask_count = losses.mask_rcnn_mask_sum_and_count(
        targets["masks"], targets["class_ids"], outputs["mask_logits"], from_logits=True)
    class_total, class_count = losses.box_class_sum_and_count(
        targets["class_ids"], outputs["class_logits"], targets["valid"])
    valid = tf.cast(targets["valid"], tf.float32)
    correct = tf.cast(tf.argmax(outputs["class_logits"], -1, output_type=tf.int32) == targets["class_ids"],
                      tf.float32)
    return {"mask_loss": replica_share_of_mean(mask_total, mask_count),
            "class_loss": replica_share_of_mean(class_total, class_count),
            "accuracy": tf.math.divide_no_nan(tf.reduce_sum(correct * valid), tf.reduce_sum(valid))}


@keras.saving.register_keras_serializable(package="models")
class MaskHeadTrainer(keras.Model):
    """Trains a build_mask_head_model network; `fit`/`evaluate` take data.coco batches.

    train_step samples num_rois RoIs per image (sample_rois: ground truth,
    jittered copies, random boxes), cuts their mask targets from the compact
    ground-truth masks and minimises mask_loss + class_loss_weight * class_loss.
    test_step scores the ground-truth boxes themselves (the oracle-box setting).
    Reported metrics: loss, mask_loss, class_loss, class_accuracy.
    """

    def __init__(self, network, *, num_rois=64, positive_fraction=0.5, class_loss_weight=1.0, seed=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.num_rois = int(num_rois)
        self.positive_fraction = float(positive_fraction)
        self.class_loss_weight = float(class_loss_weight)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.trackers = {name: keras.metrics.Mean(name=name)
                         for name in ("loss", "mask_loss", "class_loss", "class_accuracy")}
        # The network is a built functional model: nothing is left to build here.
        self.built = True

    def call(self, inputs, training=False):
        return self.network(inputs, training=training)

    @property
    def metrics(self):
        return list(self.trackers.values())

    def _step(self, data, sampled, training):
        images = detector_inputs(data)["images"]  # the data.coco batch's uint8 images, as the network takes them
        outputs = self.network({"image": images, "rois": sampled["rois"]}, training=training)
        mask_size = outputs["mask_logits"].shape[2]
        targets = dict(sampled, masks=mask_targets(data["masks"], data["boxes"], sampled["rois"],
                                                   sampled["gt_index"], mask_size))
        parts = head_losses(outputs, targets)
        loss = parts["mask_loss"] + self.class_loss_weight * parts["class_loss"]
        # The losses are this replica's shares of global means: scale back up for the logs.
        replicas = float(tf.distribute.get_strategy().num_replicas_in_sync)
        self.trackers["loss"].update_state(loss * replicas)
        self.trackers["mask_loss"].update_state(parts["mask_loss"] * replicas)
        self.trackers["class_loss"].update_state(parts["class_loss"] * replicas)
        self.trackers["class_accuracy"].update_state(parts["accuracy"])
        return loss

    @staticmethod
    def _batch(data):
        # fit/evaluate pass the dataset's dict itself; train_on_batch/test_on_batch wrap it as (x, y, sample_weight).
        return data[0] if isinstance(data, tuple) else data

    def train_step(self, data):
        data = self._batch(data)
        sampled = sample_rois(data["boxes"], data["class_ids"], data["image_size"], num_rois=self.num_rois,
                              positive_fraction=self.positive_fraction, crowd_boxes=data.get("crowd_boxes"),
                              seed=self.seed_generator)
        with tf.GradientTape() as tape:
            loss = self._step(data, sampled, training=True)
            scaled = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def test_step(self, data):
        data = self._batch(data)
        class_ids = tf.cast(data["class_ids"], tf.int32)
        sampled = {"rois": data["boxes"], "class_ids": class_ids, "valid": class_ids > 0,
                   "gt_index": tf.broadcast_to(tf.range(tf.shape(class_ids)[1]), tf.shape(class_ids))}
        self._step(data, sampled, training=False)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def get_config(self):
        return {**super().get_config(), "network": keras.saving.serialize_keras_object(self.network),
                "num_rois": self.num_rois, "positive_fraction": self.positive_fraction,
                "class_loss_weight": self.class_loss_weight, "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        return cls(**config)
