"""Built-in datasets, readers and tf.data pipelines (Cityscapes, COCO)."""
