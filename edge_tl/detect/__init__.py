"""Object detection (``finetune --task detect``, issue 27): boxes of defect classes from an ImageNet backbone.

- :mod:`.data`: Pascal VOC XML, COCO JSON and YOLO txt layouts read into one checked list of boxes, and the
  seeded split by image.
- :mod:`.model`: an FCOS-style anchor-free head (Tian et al., 2019) with depthwise-separable convolutions
  on the backbone's stride-16 and stride-32 taps; boxes decoded inside the graph.
- NMS and the map back to image pixels: :mod:`edge_tl.runtime.nms` (numpy; the device runtime runs it too);
  :mod:`.nms` is its old name.
- :mod:`.train`: ``fit_detector``, through ``training.optimise`` / ``run_epochs``.
- :mod:`.evaluate`: mAP (pycocotools, the COCO definition) and box agreement between two models.
- :mod:`.export`: the ONNX graph and its check against torch.
- :mod:`.ship`: ``export`` and ``bench`` of a detection run; :mod:`.bundle`: ``bundle`` (boxes, a box QC policy
  tuned on the validation images, golden images with their expected boxes).
- :mod:`.evalset`: what a bench measures on: the validation split or a ``bench --data`` box folder.
- :mod:`.gallery`: the report's pictures (ground truth, reference and candidate boxes).

Importing this package is cheap (no torch, no pycocotools); :mod:`.model` registers the ``detect`` model
builder with :mod:`edge_tl.builders` when imported, which the package root does.
"""
