"""Train PSPNet on Cityscapes, or (--model mask_rcnn) the Mask R-CNN detector on COCO.

    python train.py                      # the demo: sample data, small PSPNet, CPU, a few minutes
    python train.py --preset pspnet101_cityscapes_713 --data /data/cityscapes --out runs/psp101
    python train.py --preset pspnet101_cityscapes_713 --data /data/zips --tfds --strategy mirrored
    python train.py --help

A preset fixes every setting of a published recipe; flags override single
settings. The resolved configuration is printed and saved as config.json in the
run folder beside the checkpoints (see models/training/callbacks.py for the folder
layout). An interrupted run continues with --resume (the demo resumes by itself):
--steps N ends the run at optimizer step N, fresh or resumed.

Each model family owns its recipe (config, presets, run function):
models/pspnet/recipe.py and models/mask_rcnn/recipe.py; the flags are built
from the family's config dataclass by models/training/recipe.py.
"""
import dataclasses
import json
import sys

from data.cli import set_tensorflow_environment  # imports no TensorFlow

# Before TensorFlow is imported (it reads these once): quiet C++ logging, oneDNN CPU kernels where they help.
set_tensorflow_environment()


def family_recipe(model):
    """The recipe module of --model (imported here, after the environment above is set)."""
    if model == "mask_rcnn":
        from models.mask_rcnn import recipe
    else:
        from models.pspnet import recipe
    return recipe


def main(argv=None):
    from data import cli
    from models.training.recipe import parse_config

    pre = cli.ArgumentParser(add_help=False)  # --model picks the recipe, whose parser then reads every flag
    pre.add_argument("--model", choices=["pspnet", "mask_rcnn"], default="pspnet")
    known, _ = pre.parse_known_args(argv)
    recipe = family_recipe(known.model)

    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    with cli.user_errors(debug):  # a user error: one line, unless --debug asks where it came from
        config = parse_config(recipe, argv, description=__doc__.split("\n\n")[0])
        cli.check_output_dir("--out", config.out)  # before the data is read or a model built
        print("configuration:\n" + json.dumps(dataclasses.asdict(config), indent=2))
        recipe.run(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
