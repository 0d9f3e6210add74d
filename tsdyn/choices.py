"""The values a config key may take, where the code that uses them needs torch: kept apart so that
validation (:mod:`tsdyn.config`) and the command line answer before torch loads."""
from __future__ import annotations

STEP_MODES = ("auto", "compiled", "fused", "autograd")        # step: the training step (tsdyn.fused)
LOSSES = ("mse", "cross_entropy")                             # loss (tsdyn.module)
CLIP_ALGORITHMS = ("norm", "value")                           # trainer.gradient_clip_algorithm
BN_PLACEMENTS = ("none", "after_relu", "before_relu")         # teacher.bn, student.bn (tsdyn.nets)
ROW_NORMS = ("weight", "fan_in")                              # teacher.normalize, optimizer.renormalize
INIT_MODES = ("default", "perturb", "same_dir", "same_sign", "gaussian_plus_teacher")  # student.init
