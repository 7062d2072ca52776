"""deeplense-tf: learn dark-matter properties from strong-lensing images with TensorFlow/Keras.

Sub-packages follow the data flow (see docs/architecture.md):
simulation -> data -> models -> training -> evaluation / clustering / export -> serving.
"""

__version__ = "0.1.0"
