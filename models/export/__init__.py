"""Exporting trained models for serving: pspnet.py / mask_rcnn.py build the served graphs; formats.py, verify.py,
quantize.py, command.py (the lead writes these)."""
