"""Tolerances for a pass run where the code's placement rule puts it (distill.engine.placement) compared with
a full-precision reference on the CPU. On a machine without an accelerator the rule gives the CPU in fp32 and
the comparison is close to exact; on a GPU machine ``mixed_precision: auto`` gives bf16 (fp16 on a card
without it) on CUDA, and every matmul rounds its inputs to 8 significant bits."""
import numpy as np

# fp32 on both sides: only the order of summation differs (batched vs one example, CUDA vs CPU), ~1e-6
# relative; PyTorch leaves TF32 off for float32 matmuls
FP32_ATOL = 1e-4
# bf16 autocast: 2^-8 = 0.4% relative per rounding, compounded over the few layers of the tiny test models;
# measured worst (tests/test_cuda.py, on an H200 and on the CPU's bf16 autocast alike): 0.42% of the logits'
# scale, 0.22% of a NER/QA loss term, 0.08% of a 2a feature-cache loss term
BF16_RTOL = 2e-2


def logit_atol(place, reference) -> float:
    """Absolute tolerance for logits computed on ``place`` against full-precision ``reference`` logits:
    FP32_ATOL in full precision, BF16_RTOL of the reference's largest magnitude under autocast."""
    if place.dtype is None:
        return FP32_ATOL
    return BF16_RTOL * float(np.abs(np.asarray(reference)).max())


def loss_tolerance(place) -> dict:
    """pytest.approx arguments for a loss computed from logits made on ``place``."""
    return {"abs": FP32_ATOL} if place.dtype is None else {"rel": BF16_RTOL}
