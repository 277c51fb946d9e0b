"""Data in and out: the competition layout, splits, the submission file, demo data and VOC devkits."""
