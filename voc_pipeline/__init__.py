"""voc-pipeline: a staged, reproducible pipeline for the KU Leuven PASCAL VOC Kaggle competition.

Multi-label classification of 20 classes and semantic segmentation, scored together by the mean
Dice over one classification row and one segmentation row per test image.
"""

__version__ = "0.2.0"
