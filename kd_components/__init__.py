"""BraTS-KD: a hybrid VGG19-3D + ViT teacher distilled into a compact 3D CNN student.

The Python that the bundles in ``bundles/`` reference by ``_target_``.
"""

__version__ = "0.1.0"
