"""Data the model is measured on: dataset presets (class names, palettes), procedural synthetic scenes,
and the mIoU evaluation over a folder of images and labels. No torch.
"""
