"""Object detection (``finetune --task detect``, issue 27): boxes of defect classes from an ImageNet backbone.

- :mod:`.data`: Pascal VOC XML, COCO JSON and YOLO txt layouts read into one checked list of boxes, and the
  seeded split by image.
- :mod:`.model`: an FCOS-style anchor-free head (Tian et al., 2019) with depthwise-separable convolutions
  on the backbone's stride-16 and stride-32 taps; boxes decoded inside the graph.
- :mod:`.nms`: non-maximum suppression and the map back to image pixels, in numpy (torch-free: the device
  runtime uses it).
- :mod:`.train`: ``fit_detector``, through ``training.optimise`` / ``run_epochs``.
- :mod:`.evaluate`: mAP (pycocotools, the COCO definition) and box agreement between two models.
- :mod:`.export`: the ONNX graph and its check against torch.
- :mod:`.evalset`: what a bench measures on: the validation split or a ``bench --data`` box folder.
- :mod:`.gallery`: the report's pictures (ground truth, reference and candidate boxes).

Importing this package is cheap (no torch, no pycocotools); :mod:`.model` registers the ``detect`` model
builder with :mod:`edge_tl.builders` when imported, which the package root does.
"""
