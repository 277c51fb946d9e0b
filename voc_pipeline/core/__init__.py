"""The pure core: run-length encoding, the competition's score, thresholds, the joint rule, the baseline.

NumPy only: no TensorFlow, no Keras, no file I/O, so every piece is fast to test exhaustively.
"""
