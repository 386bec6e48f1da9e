"""Deploy: the model bundle, prediction (torch | ONNX Runtime), export, and the HTTP server.

    from picstory.deploy import load
    predictor = load("runs/my-run")            # or a bundle dir, or "efficientnet_lite0"
    predictor.predict(["cat.jpg"], top_k=3)

    from picstory.deploy.export import export  # export(run, "onnx") → model.onnx + parity figures
"""

from ..models.bundle import BUNDLE_FORMAT, find_bundle, load_bundle, save_bundle
from .predict import Predictor, expand_inputs, format_predictions, load, preprocess

__all__ = ["BUNDLE_FORMAT", "Predictor", "expand_inputs", "find_bundle", "format_predictions", "load",
           "load_bundle", "preprocess", "save_bundle"]
