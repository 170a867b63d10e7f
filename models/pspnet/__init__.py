"""PSPNet: the model (layout variants), its inference (whole / sliding / flip / multi-scale), and converters."""
from models.pspnet.model import build_pspnet, head_layer_names, inference_model

__all__ = ["build_pspnet", "head_layer_names", "inference_model"]
