"""Exporting trained models for serving: pspnet.py / mask_rcnn.py build the served graphs (uint8 images in,
labels or detections out); formats.py writes them for each runtime; clients.py runs them with nothing of the
project; verify.py compares that with predict.py; quantize.py makes int8; command.py is python -m models.export."""
