"""Full-range BT.601 colour space: luma Y and the colour-difference axes Cb and Cr of RGB.

One definition for everything that works on colour apart from luma: the
colour jitter of the training data (data.pipeline.recolour), the tokenizer's
chroma loss (losses.chroma_l1) and the colour check (eval.colour).
"""

import numpy as np

# Rows: Y, Cb, Cr of an RGB triple (any range: the matrix is linear, with no offsets).
RGB_TO_YCBCR = np.array([[0.299, 0.587, 0.114],
                         [-0.168736, -0.331264, 0.5],
                         [0.5, -0.418688, -0.081312]], np.float32)
YCBCR_TO_RGB = np.linalg.inv(RGB_TO_YCBCR.astype(np.float64)).astype(np.float32)
