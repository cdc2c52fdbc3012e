"""Dropout masks on CPU at about 60% of their cost, bit for bit the masks PyTorch draws.

On CPU, ``bernoulli_(p)`` (how dropout, eager attention and SDPA's math path draw their masks) takes,
for each element, one 64-bit number from the Mersenne Twister, keeps its low 53 bits as a double u in
[0, 1) and writes ``u < p``, one element at a time on one core: 11-12 ns an element here, ~95 ms of a
~500 ms bench-train distillation step while the second core waits. ``random_()`` on an int64 tensor draws
the same 64-bit numbers in the same order (keeping their low 63 bits) at ~6 ns an element, and
``low 53 bits < ceil(p * 2**53)`` is the same comparison in integers: the same mask, and the generator
ends in the same state.

``FastBernoulli`` is a dispatch mode that answers contiguous CPU ``bernoulli_`` calls that way and passes
every other operation through. A dispatch mode sends each operation through Python (~10-20 us), so it is
switched on only where masks are drawn: ``install(model)`` hooks every nn.Dropout and the attention
step of every self-attention block (whose probability dropout runs inside SDPA or eager attention). The
trainer installs it on the model it trains on CPU. A build of PyTorch whose kernel draws differently is
caught by a one-time check and left alone.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from students.modeling import attention_blocks

_BERNOULLI = torch.ops.aten.bernoulli_.float
_LOW_53 = (1 << 53) - 1
_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
MIN_ELEMENTS = 4096  # below this the original kernel is as fast
CHUNK = 1 << 20  # elements drawn at a time: the scratch buffer stays at 8 MB whatever the mask's size
_SAME_AS_TORCH: bool | None = None  # the one-time check's answer


def fill_mask(target: torch.Tensor, p: float, scratch: torch.Tensor, generator=None) -> torch.Tensor:
    """Write into contiguous ``target`` the 0/1 mask ``target.bernoulli_(p, generator)`` would write;
    ``scratch``: an int64 buffer (chunks of its size are drawn in order: the same numbers)."""
    flat, threshold = target.view(-1), math.ceil(p * 2.0 ** 53)
    for start in range(0, flat.numel(), scratch.numel()):
        part = flat[start:start + scratch.numel()]
        bits = scratch[:part.numel()].random_(generator=generator)  # serial: the generator
        bits.bitwise_and_(_LOW_53)
        torch.lt(bits, threshold, out=part)  # elementwise: every core
    return target


def same_as_torch() -> bool:
    """Whether this PyTorch's bernoulli_ kernel draws as ``fill_mask`` assumes (checked once, above the
    size the fast path starts at, with an explicit generator and with the default one)."""
    global _SAME_AS_TORCH
    if _SAME_AS_TORCH is None:
        shape, scratch = (64, 1024), torch.empty(CHUNK, dtype=torch.int64)
        expected = torch.empty(shape).bernoulli_(0.9, generator=torch.Generator().manual_seed(0))
        mine = fill_mask(torch.empty(shape), 0.9, scratch, torch.Generator().manual_seed(0))
        same = torch.equal(expected, mine)
        with torch.random.fork_rng(devices=[]):  # the global generator is left as it was
            state = torch.get_rng_state()
            expected = torch.empty(shape, dtype=torch.float64).bernoulli_(0.3)
            torch.set_rng_state(state)
            mine = fill_mask(torch.empty(shape, dtype=torch.float64), 0.3, scratch)
        _SAME_AS_TORCH = same and torch.equal(expected, mine)
    return _SAME_AS_TORCH


class FastBernoulli(TorchDispatchMode):
    """Within ``with FastBernoulli():`` on this thread, large contiguous CPU ``bernoulli_(p)`` calls take
    the ``fill_mask`` path; everything else runs as usual."""

    def __init__(self):
        super().__init__()
        self._scratch = torch.empty(0, dtype=torch.int64)
        self.filled = 0  # masks filled this way (for tests)
        self._handles = []
        self._stack: list[bool] = []  # per hooked module now running: whether it switched the mode on

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _BERNOULLI:
            target = args[0]
            p = float(args[1]) if len(args) > 1 else float(kwargs.get("p", 0.5))
            if (target.device.type == "cpu" and target.dtype in _FLOATS and target.is_contiguous()
                    and target.numel() >= MIN_ELEMENTS and 0.0 <= p <= 1.0 and same_as_torch()):
                if self._scratch.numel() < min(target.numel(), CHUNK):  # kept: no fresh pages every step
                    self._scratch = torch.empty(min(target.numel(), CHUNK), dtype=torch.int64)
                self.filled += 1
                return fill_mask(target, p, self._scratch, kwargs.get("generator"))
        return func(*args, **kwargs)

    def install(self, model: nn.Module) -> "FastBernoulli":
        """Switch the mode on while ``model`` draws masks in training: inside each nn.Dropout, and in each
        self-attention block from its value projection's output to the block's end (the attention itself,
        whose probability dropout runs inside SDPA or eager attention; the q/k/v projections before it,
        with their packing hooks, stay off the mode's detour). ``remove`` takes the hooks off again; a second
        ``install`` replaces the first's hooks."""
        self.remove()
        try:
            blocks = attention_blocks(model)
        except ValueError:  # not a BERT-style model: its nn.Dropout modules only
            blocks = []
        for module in [m for m in model.modules() if isinstance(m, nn.Dropout)]:
            self._handles.append(module.register_forward_pre_hook(self._enter))
            self._handles.append(module.register_forward_hook(self._exit, always_call=True))
        for block in blocks:
            self._handles.append(block.register_forward_pre_hook(self._open))
            self._handles.append(block.value.register_forward_hook(self._enter_block(block)))
            self._handles.append(block.register_forward_hook(self._exit, always_call=True))
        return self

    def _switch_on(self) -> None:
        if not any(self._stack):  # not on already (an enclosing hooked module switched it on)
            self.__enter__()

    def _enter(self, module: nn.Module, _args) -> None:
        on = module.training  # evaluation draws no masks: it runs without the mode's detour
        if on:
            self._switch_on()
        self._stack.append(on)

    def _open(self, _block: nn.Module, _args) -> None:
        self._stack.append(False)  # switched on later, once the block's value projection has run

    def _enter_block(self, block: nn.Module):
        def hook(_value, _args, _output):
            if block.training and self._stack and not self._stack[-1]:
                self._switch_on()
                self._stack[-1] = True
        return hook

    def _exit(self, _module: nn.Module, _args, _output) -> None:
        if self._stack.pop() and not any(self._stack):
            self.__exit__(None, None, None)

    def remove(self) -> None:
        """Take the hooks off, and the mode too if an interrupt (KeyboardInterrupt skips forward hooks)
        left it on."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if any(self._stack):
            self.__exit__(None, None, None)
        self._stack = []
