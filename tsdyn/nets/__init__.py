"""ReLU networks for teacher and student, with an ensemble dimension.

Every network holds ``E`` independent copies of the same architecture (``E = 1`` for the
teacher, ``E = student.num_students`` for the student) as batched weights, so that many
students train in one process with one kernel launch per layer. Layer 0 is the lowest hidden
layer everywhere.

Two families share one interface (``ks``, ``num_hidden``, ``num_members``, ``weights``,
``biases``, ``bns``, ``fan_out``, ``member``, ``arch``):

- :class:`ReLUNet`, fully connected: inputs ``x`` are ``[N, d]`` (shared by all copies) or
  ``[E, N, d]``; hidden activations are ``[E, N, K_l]`` (post-ReLU, i.e. the node's output);
- :class:`ConvReLUNet`, 3x3 convolutions without padding: inputs ``[N, C, H, W]`` or
  ``[E, N, C, H, W]``; hidden maps ``[E, N, K_l, H_l, W_l]`` (channels are the nodes).

The output is ``[E, N, d_out]`` for both.

The package: :mod:`.networks` (the nets), :mod:`.teacher` (teacher init), :mod:`.student`
(student init), :mod:`.files` (teacher files); every public name imports from ``tsdyn.nets``.
"""
from __future__ import annotations

from tsdyn.nets.networks import (  # noqa: F401 - re-exported
    BN_PLACEMENTS, ConvReLUNet, EnsembleBatchNorm, EnsembleNet, NETS, normalize_rows, per_student_loss,
    predict, ReLUNet, renormalize_, ROW_NORMS,
)
from tsdyn.nets.teacher import (  # noqa: F401 - re-exported
    calibrate_bn_, DEFAULT_WEIGHT_CHOICES, init_teacher_, make_conv_teacher, make_teacher,
    separable_rows, standardize_outputs_, tune_biases_,
)
from tsdyn.nets.student import (  # noqa: F401 - re-exported
    active_widths, INIT_MODES, make_student,
)
from tsdyn.nets.files import (  # noqa: F401 - re-exported
    load_teacher, read_teacher_file, save_teacher, TEACHER_FILE_FORMAT,
)
