"""Data: COCO person instances -> letterboxed images + 3-class ROI targets, and generated data sets.

Modules, one concept each:

- ``cocoio``: read COCO files with errors that name the file (``DataError``), write painted scenes.
- ``coco_person``: person-only, no-crowd COCO files and deterministic subsets.
- ``letterbox``: aspect-preserving fit into the square network input, forward and inverse.
- ``targets``: ROI from a box, 3-class targets sampled where RoIAlign samples.
- ``augment``: flip / scale / colour jitter, consistent across image, masks and boxes.
- ``dataset``: ``PersonRoiDataset`` (one sample = one image with all its ROIs) and its collate.
- ``stats``: class pixel ratios and log class weights.
- ``synth``: procedural people (no downloads); ``video_people``: real people from vtest.avi.
- ``commands``: the ``edgeseg data ...`` CLI group.
"""
