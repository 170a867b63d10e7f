"""PSPNet: the model and its layouts (model.py), this project's inference (inference.py: whole / sliding / flip /
multi-scale), the sources' own test protocols (protocols.py: semseg's and mmsegmentation's, exactly;
protocol_settings.py: which flags each reads), fine-tuning from a saved model (fine_tuning.py), Cityscapes
scores (evaluation.py, what evaluate.py runs), a user's images (prediction.py, what predict.py runs) and the
training recipe (recipe.py). Converters of semseg / mmsegmentation checkpoints: models/convert/semseg_mmseg.py."""
from models.pspnet.fine_tuning import build_from, init_from
from models.pspnet.model import LAYOUTS, PSPNet, build_pspnet, head_layer_names, inference_model

__all__ = ["LAYOUTS", "PSPNet", "build_from", "build_pspnet", "head_layer_names", "inference_model", "init_from"]
