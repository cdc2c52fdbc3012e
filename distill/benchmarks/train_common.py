"""What both bench-train modes share: their error, the folder TextBrewer is installed in, and TextBrewer's
GeneralDistiller set up to record every step's loss (the CPU mode's worker and the device mode build it alike).

TextBrewer is never a project dependency: both modes time it only when it imports from a folder given with
--textbrewer-path DIR or TEXTBREWER_PATH (the top of distill/benchmarks/train.py says how to fill one)."""
from __future__ import annotations

from pathlib import Path

from distill.base.errors import UserError


class BenchTrainError(UserError, ValueError):
    pass


def textbrewer_folder(path: str | None) -> Path | None:
    """The folder TextBrewer is installed in (None: run without it); checked before any run starts."""
    if not path:
        return None
    folder = Path(path).expanduser()
    if not (folder / "textbrewer" / "__init__.py").is_file():
        raise BenchTrainError(f"--textbrewer-path / TEXTBREWER_PATH {path!r} has no textbrewer package; install it "
                              "with `pip install --no-deps --target DIR textbrewer==0.2.1.post1 tensorboard absl-py`")
    return folder


def recording_distiller(device, out: str, steps: int, dcfg, teacher, student, adaptor_t, adaptor_s,
                         losses: list[float]):
    """TextBrewer's GeneralDistiller writing into ``out``, appending each step's total loss to ``losses``."""
    from textbrewer import GeneralDistiller, TrainingConfig

    config = TrainingConfig(device=device, log_dir=None, output_dir=out, ckpt_steps=steps)
    distiller = GeneralDistiller(config, dcfg, model_T=teacher, model_S=student, adaptor_T=adaptor_t,
                                 adaptor_S=adaptor_s)
    write_loss = distiller.write_loss

    def record_loss(total, step, terms=None):
        losses.append(float(total.detach()))
        write_loss(total, step, terms)

    distiller.write_loss = record_loss
    return distiller
