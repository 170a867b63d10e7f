"""The optimizer recipe both families train with: SGD with momentum and L2 weight decay, and its schedules.

SegmentationSGD: SGD whose weight decay is an L2 term (l2 * kernel added to the
gradient, as Caffe / PyTorch weight_decay), with a learning-rate multiplier for
the head's layers (semseg's 10x). poly_schedule: PSPNet's lr * (1 - t / T)^0.9.
WarmupStepDecay: torchvision's detection schedule (linear warm-up, x0.1 steps).
"""
import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="models")
class SegmentationSGD(keras.optimizers.SGD):
    """SGD with momentum, L2 weight decay on kernels, and a learning-rate multiplier for new layers.

    This is the PSPNet (and Caffe-era) recipe: the L2 term `l2 * kernel` is added
    to each convolution/dense kernel's gradient before momentum (coupled L2, as
    Caffe's weight_decay and PyTorch's SGD(weight_decay=...)), not to biases or
    BatchNorm parameters; variables of the layers named in `head_layers` (the
    newly initialised pyramid pooling module and classifiers) use
    `head_lr_multiplier` times the learning rate.

    Args:
      learning_rate: float or a keras LearningRateSchedule (e.g. `poly_schedule`).
      momentum: 0.9 in the paper.
      l2: weight decay coefficient (1e-4 in the paper).
      head_layers: names of top-level layers whose variables get the multiplier.
      head_lr_multiplier: 10 in the paper's reference code; 1 turns it off.
    """

    def __init__(self, learning_rate=0.01, momentum=0.9, l2=1e-4, head_layers=(), head_lr_multiplier=1.0,
                 name="segmentation_sgd", **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, name=name, **kwargs)
        self.l2 = float(l2)
        self.head_layers = tuple(head_layers)
        self.head_lr_multiplier = float(head_lr_multiplier)
        self._head_prefixes = tuple(f"{layer}/" for layer in self.head_layers)

    def update_step(self, gradient, variable, learning_rate):
        # Decided per variable while tracing, from its Keras path ("layer/kernel"): no run-time cost.
        # (The TF backend hands over the raw tf.Variable; its Keras variable has the path.)
        path = self._trainable_variables[self._get_variable_index(variable)].path
        if self.l2 and path.endswith("/kernel"):
            # l2 * kernel depends only on the kernel, so TensorFlow's executor computed every one at the start of
            # the step and held them through the whole forward and backward (168 MiB at the Mask R-CNN detector's
            # training-step peak, measured): computed once the gradient exists, each lives only for its update.
            with tf.control_dependencies([gradient] if isinstance(gradient, tf.Tensor) else []):
                gradient = gradient + self.l2 * keras.ops.cast(variable, gradient.dtype)
        if self.head_lr_multiplier != 1.0 and path.startswith(self._head_prefixes):
            learning_rate = learning_rate * self.head_lr_multiplier
        if self.momentum and not self.nesterov and isinstance(gradient, tf.Tensor) and not tf.distribute.has_strategy():
            # Keras's momentum step (m = momentum * m - lr * g; w += m) as TensorFlow's in-place kernel.
            # Keras's ops make three variable-sized temporaries per variable, and the executor runs the
            # updates of all variables whose gradients are ready at once: about 0.4 GB at the Mask R-CNN
            # detector's training-step peak (BENCHMARKS.md 4b). Under a tf.distribute strategy, Keras's path.
            dtype = variable.dtype
            tf.raw_ops.ResourceApplyKerasMomentum(
                var=variable.handle, accum=self.momentums[self._get_variable_index(variable)].value.handle,
                lr=tf.cast(learning_rate, dtype), grad=tf.cast(gradient, dtype), momentum=tf.cast(self.momentum, dtype),
                use_nesterov=False)
            return
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config.update(l2=self.l2, head_layers=list(self.head_layers), head_lr_multiplier=self.head_lr_multiplier)
        return config


def poly_schedule(base_lr, total_steps, power=0.9):
    """lr(step) = base_lr * (1 - step / total_steps) ** power, 0 after total_steps (the PSPNet "poly" policy)."""
    return keras.optimizers.schedules.PolynomialDecay(
        initial_learning_rate=base_lr, decay_steps=max(int(total_steps), 1), end_learning_rate=0.0, power=power)


@keras.saving.register_keras_serializable(package="models")
class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from base_lr * warmup_factor, then x `gamma` at each of `milestones` (Mask R-CNN's schedule)."""

    def __init__(self, base_lr, milestones, gamma=0.1, warmup_steps=0, warmup_factor=0.001):
        self.base_lr = float(base_lr)
        self.milestones = [int(m) for m in milestones]
        self.gamma = float(gamma)
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        decays = sum(keras.ops.cast(step >= m, "float32") for m in self.milestones) if self.milestones else 0.0
        lr = self.base_lr * keras.ops.power(self.gamma, decays)
        if self.warmup_steps > 0:
            alpha = keras.ops.minimum(step / self.warmup_steps, 1.0)
            lr = lr * (self.warmup_factor * (1.0 - alpha) + alpha)
        return lr

    def get_config(self):
        return dict(base_lr=self.base_lr, milestones=self.milestones, gamma=self.gamma,
                    warmup_steps=self.warmup_steps, warmup_factor=self.warmup_factor)
