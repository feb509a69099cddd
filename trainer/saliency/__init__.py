"""Where the model looks: Grad-CAM / Grad-CAM++ maps of the trained ResNet18 (MONAI), mapped back to the
input DICOM's pixels, drawn over the slice.

- :mod:`trainer.saliency.cam`: the maps (batched, any device), MONAI's ``GradCAM`` / ``GradCAMpp``;
- :mod:`trainer.saliency.geometry`: model-input pixel <-> decoded-slice pixel (crop, letterbox, resize undone);
- :mod:`trainer.saliency.overlay`: a map on the slice's grid, blended in a window, the peak ringed, PNG;
- :mod:`trainer.saliency.writer`: ``predict --saliency DIR`` (PNGs and the ``peak_row`` / ``peak_col`` columns);
- :mod:`trainer.saliency.gallery`: the report's true positive / false negative / false positive overlays.
"""
