"""Reading .keras files safely (it imports nothing from models/: the lowest module there).

A .keras file is a zip of config.json (the model's layers) and the weights. Loading it
builds the layers the config names, so a file from elsewhere could run code: a `Lambda`
layer carries Python bytecode, and a class name resolves to whatever code is registered
under it. `load_keras_file` therefore
  - refuses any file whose config holds a Lambda layer (or a serialized Python function),
    before Keras sees it, whatever Keras's own safe-mode setting is;
  - loads with safe_mode=True, so only classes Keras and this project register are built,
    and refuses a file that names any other class;
and turns every refusal or failure into a CheckpointError whose str() is one line naming
the file (the CLIs print it without a traceback).
"""
import json
import os
import re
import zipfile

from data.errors import UserError

# The entry models.convert adds to a converted .keras file: where its weights came from.
PROVENANCE_ENTRY = "provenance.json"


class CheckpointError(UserError, ValueError):
    """A checkpoint file a user gave that cannot be used; str() is one line naming the file."""


# What Keras writes for a Lambda layer and for a Python function serialized by value.
_CODE_CLASS_NAMES = ("Lambda", "__lambda__")


def _holds_code(config):
    """True when a (nested) Keras config names a Lambda layer or a serialized Python function."""
    if isinstance(config, dict):
        if config.get("class_name") in _CODE_CLASS_NAMES:
            return True
        return any(_holds_code(value) for value in config.values())
    if isinstance(config, list):
        return any(_holds_code(value) for value in config)
    return False


def read_keras_file(path, *, flag="--checkpoint", compile=False):
    """A .keras file -> the Keras model in it, built only from registered classes (safe_mode=True).

    Registers nothing itself: models.checkpoints.load_keras_file registers the project's classes first.

    flag: how the user gave the path, for the message ("--checkpoint", "--weights", ...).
    compile: also restore the optimizer and losses (train.py's resume does; inference not).
    Raises CheckpointError (one line naming the file) for a missing file, a file that is not
    a .keras zip, a Lambda layer or serialized function, a class this project does not
    define, and any other failure to load.
    """
    import keras

    where = f"{flag} {path}" if flag else str(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{where}: no such file (a .keras file written by train.py or models.convert)")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{where}: not a .keras file (those are zip archives written by model.save; "
                              "a SavedModel or .h5 file needs converting first)")
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (KeyError, ValueError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"{where}: damaged .keras file (no readable config.json: {error})") from None
    if _holds_code(config):
        raise CheckpointError(f"{where}: refused: it holds a Lambda layer (Python code that would run on "
                              "loading); rebuild the model from registered layers, without Lambda")
    try:
        return keras.saving.load_model(path, compile=compile, safe_mode=True)
    except Exception as error:  # Keras raises TypeError/ValueError/... with multi-line texts: one line instead
        text = str(error)
        unknown = re.search(r"Could not locate (?:class|function) '([^']+)'", text)
        if unknown:
            raise CheckpointError(f"{where}: refused: it names {unknown.group(1)!r}, a class this project does not "
                                  "define (custom code is not loaded); use a checkpoint written by this "
                                  "project") from None
        if "Lambda" in text or "arbitrary code" in text:
            raise CheckpointError(f"{where}: refused: it holds Python code that would run on loading") from None
        first = text.strip().splitlines()[0] if text.strip() else ""
        raise CheckpointError(f"{where}: cannot load it as a Keras model ({type(error).__name__}: {first})") from None


def read_provenance(path):
    """The provenance record of a converted .keras file (models.convert.provenance), or None (a run's file)."""
    try:
        with zipfile.ZipFile(path) as archive:
            if PROVENANCE_ENTRY not in archive.namelist():
                return None
            return json.loads(archive.read(PROVENANCE_ENTRY))
    except (OSError, ValueError, zipfile.BadZipFile):
        return None


def describe_provenance(provenance):
    """One line: "converted from FILE (SOURCE, sha256 PREFIX): RELEASE reports METRIC on PROTOCOL"."""
    line = f"converted from {provenance['file']} ({provenance['source']}, sha256 {provenance['sha256'][:12]})"
    release = provenance.get("release")
    if release:
        line += f": {release['name']}, published {release['metric']} ({release['protocol']})"
    return line
