"""fer_analysis: the analysis suite of trained runs, command ``fer-analyze``. Installed from ``analysis/``.

It sits at the top of the stack (``fer_runtime`` <- ``fer_train`` <- ``fer_export`` <- ``fer_analysis``):
it imports the others and nothing imports it. One module per analysis, each with an ``analyze_*``
function that takes a :class:`~fer_analysis.inputs.Target` (run + split) and an output folder and
writes PNGs plus the CSV/JSON of the numbers behind them (:mod:`fer_analysis.results`):

* :mod:`fer_analysis.confusion` - confusion heatmap and most-confused pairs;
* :mod:`fer_analysis.saliency` - saliency rows and per-class mean maps (TF or ONNX engine,
  :mod:`fer_analysis.onnx_saliency`);
* :mod:`fer_analysis.filters` - filter visualisation by gradient ascent;
* :mod:`fer_analysis.layer_outputs` - the feature maps of a layer;
* :mod:`fer_analysis.class_max` - inputs maximising each class;
* :mod:`fer_analysis.adversarial` - FGSM and iterative FGSM;
* :mod:`fer_analysis.mistakes` - the most confident errors;
* :mod:`fer_analysis.compare` - two runs side by side;
* :mod:`fer_analysis.report` - every analysis in one self-contained HTML page;
* :mod:`fer_analysis.cli` - the ``fer-analyze`` command.

Model inference (member logits, probabilities, TF's reference saliency) is :mod:`fer_train.inference`;
figure conventions are :mod:`fer_analysis.figures`. TensorFlow is imported by the functions that need it.
"""
