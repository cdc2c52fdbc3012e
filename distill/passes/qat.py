"""Quantization-aware training pass: fake-quantized linear layers (torch.ao.quantization FakeQuantize),
calibrated, frozen and exported as QDQ ONNX (QuantizeLinear/DequantizeLinear pairs) that ONNX Runtime
runs and TensorRT builds from.

Weights: per-channel (output channel), symmetric int8, zero point 0. Activations (each linear layer's
input): per-tensor, symmetric int8, zero point 0 (TensorRT's explicit quantization wants zero points of 0).
The int8 range is [-128, 127] because the ONNX exporter maps fake_quantize_* to QDQ only for that range.

Lifecycle: ``prepare`` wraps every nn.Linear; ``calibrate`` observes activation ranges on a few batches
with fake quantization off, then turns it on and freezes the activation ranges; training then moves the
weights (their per-channel ranges follow by moving average); ``freeze`` sets every range from the final
weights and stops all observers, and ``export_qdq`` refuses a model whose observers still run (an
observer left on would re-fit the ranges to the export's example batch).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from torch import nn
from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver

from distill.passes import onnx as onnx_export
from distill.tasks import SEQUENCE_CLASSIFICATION, TaskKind

QMIN, QMAX = -128, 127


def weight_fake_quant() -> FakeQuantize:
    return FakeQuantize(observer=MovingAveragePerChannelMinMaxObserver, quant_min=QMIN, quant_max=QMAX,
                        dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0)


def activation_fake_quant() -> FakeQuantize:
    return FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=QMIN, quant_max=QMAX,
                        dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)


class QuantLinear(nn.Linear):
    """nn.Linear whose input and weight pass through fake quantization (same weight/bias names, so the
    float parameters load and train as before)."""

    def __init__(self, linear: nn.Linear):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None,
                         device=linear.weight.device, dtype=linear.weight.dtype)
        self.weight = linear.weight
        if linear.bias is not None:
            self.bias = linear.bias
        self.input_fake_quant = activation_fake_quant()
        self.weight_fake_quant = weight_fake_quant()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(self.input_fake_quant(x), self.weight_fake_quant(self.weight), self.bias)


def prepare(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear of ``model`` (in place) with a QuantLinear; returns the model."""
    targets = [(name, module) for name, module in model.named_modules()
               if type(module) is nn.Linear]  # noqa: E721  (QuantLinear is an nn.Linear too: never wrap twice)
    if not targets and not quant_layers(model):
        raise ValueError("no nn.Linear layers to quantize")
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, QuantLinear(module))
    return model


def quant_layers(model: nn.Module) -> list[QuantLinear]:
    return [m for m in model.modules() if isinstance(m, QuantLinear)]


def fake_quants(model: nn.Module) -> list[FakeQuantize]:
    return [m for m in model.modules() if isinstance(m, FakeQuantize)]


def _set(fqs: Iterable[FakeQuantize], observe: bool | None = None, quantize: bool | None = None) -> None:
    for fq in fqs:
        if observe is not None:
            fq.enable_observer() if observe else fq.disable_observer()
        if quantize is not None:
            fq.enable_fake_quant() if quantize else fq.disable_fake_quant()


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> int:
    """Activation ranges from ``batches`` (fp32 forwards, fake quantization off), then fake quantization
    on everywhere and the activation ranges frozen. Returns the number of batches seen."""
    layers = quant_layers(model)
    if not layers:
        raise ValueError("calibrate: the model has no QuantLinear layers; call prepare first")
    acts = [m.input_fake_quant for m in layers]
    weights = [m.weight_fake_quant for m in layers]
    _set(acts + weights, observe=True, quantize=False)
    was_training = model.training
    model.eval()
    seen = 0
    for batch in batches:
        model(**batch)
        seen += 1
    if not seen:
        raise ValueError("calibrate: no batches")
    for m in layers:  # weight ranges from the weights themselves, not averaged over the forwards
        _refit_weight(m)
    _set(acts, observe=False, quantize=True)
    _set(weights, observe=True, quantize=True)
    model.train(was_training)
    return seen


def _refit_weight(m: QuantLinear) -> None:
    fq = m.weight_fake_quant
    fq.activation_post_process.reset_min_max_vals()
    fq.enable_observer()
    fq(m.weight.detach())
    fq.disable_observer()


@torch.no_grad()
def freeze(model: nn.Module) -> None:
    """Weight ranges set from the final weights, every observer stopped, fake quantization on: from
    here on the scales are constants (what the QDQ export writes)."""
    for m in quant_layers(model):
        _refit_weight(m)
    _set(fake_quants(model), observe=False, quantize=True)


def frozen(model: nn.Module) -> bool:
    return all(not bool(fq.observer_enabled.item()) and bool(fq.fake_quant_enabled.item()) for fq in fake_quants(model))


def export_qdq(model: nn.Module, path: Path, example: dict[str, torch.Tensor],
               kind: TaskKind = SEQUENCE_CLASSIFICATION) -> None:
    """The frozen fake-quantized model as QDQ ONNX (TorchScript exporter, opset 17: per-channel
    QuantizeLinear needs >= 13). Refuses a model whose observers still run or that has no fake quant."""
    if not quant_layers(model):
        raise ValueError("export_qdq: the model has no QuantLinear layers; call prepare, calibrate and freeze")
    if not frozen(model):
        raise ValueError("export_qdq: observers still running (or fake quantization off); call freeze first")
    onnx_export.export_fp32(model, Path(path), example, kind)  # hands the model back in its own mode
    fold_weight_quantization(Path(path))


def fold_weight_quantization(path: Path) -> int:
    """Store weights as int8: each QuantizeLinear of a constant fp32 initializer is computed once (round half
    to even, saturate) and its DequantizeLinear reads the int8 initializer instead,
    so the file holds int8 weights (a quarter of the size) and the graph stays QDQ. Returns how many."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    graph = m.graph
    inits = {i.name: i for i in graph.initializer}
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:  # constants, and the Identity nodes the exporter chains them through (topological order)
        if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR:
            values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        elif n.op_type == "Identity" and n.input[0] in values:
            values[n.output[0]] = values[n.input[0]]
    users: dict[str, int] = {}
    for n in graph.node:
        for name in n.input:
            users[name] = users.get(name, 0) + 1
    folded, drop_nodes, drop_inits = 0, [], set()
    for n in graph.node:
        if n.op_type != "QuantizeLinear" or n.input[0] not in inits or n.input[1] not in values:
            continue
        w = values[n.input[0]].astype(np.float32)
        scale = values[n.input[1]].astype(np.float32)
        zp = values[n.input[2]] if len(n.input) > 2 and n.input[2] in values else None
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and scale.size > 1:
            shape = [1] * w.ndim
            shape[axis] = scale.size
            scale = scale.reshape(shape)
            zp = zp.reshape(shape) if zp is not None else None
        dtype = zp.dtype if zp is not None else np.uint8
        info = np.iinfo(dtype)
        # w * (1 / scale) in float32, as torch's fake quantization computes it (x / scale, as the ONNX operator
        # is defined, rounds a few ties the other way): the stored weights are exactly the ones trained against
        q = np.rint(w * (np.float32(1.0) / scale)) + (zp.astype(np.int32) if zp is not None else 0)
        tensor = numpy_helper.from_array(np.clip(q, info.min, info.max).astype(dtype), n.output[0])
        graph.initializer.append(tensor)
        drop_nodes.append(n)
        if users.get(n.input[0]) == 1:
            drop_inits.add(n.input[0])
        folded += 1
    for n in drop_nodes:
        graph.node.remove(n)
    for init in [i for i in graph.initializer if i.name in drop_inits]:
        graph.initializer.remove(init)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return folded


def qdq_counts(path: Path) -> dict[str, int]:
    """QuantizeLinear / DequantizeLinear nodes, how many DequantizeLinear are per-channel (scale a vector)
    and how many read int8 weights stored as initializers."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR}
    values = {**consts, **inits}
    q = sum(n.op_type == "QuantizeLinear" for n in graph.node)
    dq = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    per_channel = sum(1 for n in dq if n.input[1] in values and values[n.input[1]].ndim == 1
                      and values[n.input[1]].size > 1)
    int8_weights = sum(1 for n in dq if n.input[0] in inits and inits[n.input[0]].dtype == "int8")
    return {"QuantizeLinear": q, "DequantizeLinear": len(dq), "per_channel": per_channel, "int8_weights": int8_weights}
