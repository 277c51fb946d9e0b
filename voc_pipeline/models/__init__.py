"""Keras models and how they learn: backbones, classifier, segmenter, losses, input pipelines, the
shared training recipe and the adversarial attacks against the trained models."""
