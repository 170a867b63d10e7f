"""PSPNet: the model (layout variants), its inference (whole / sliding / flip / multi-scale), converters
(models/convert/semseg_mmseg.py) and fine-tuning from a saved model; evaluation.py (Cityscapes scores, what
evaluate.py runs) and prediction.py (a user's images, what predict.py runs)."""
from models.pspnet.fine_tuning import build_from, init_from
from models.pspnet.model import LAYOUTS, PSPNet, build_pspnet, head_layer_names, inference_model

__all__ = ["LAYOUTS", "PSPNet", "build_from", "build_pspnet", "head_layer_names", "inference_model", "init_from"]
