"""The quantization methods by name: a new method is one file that calls `register_method` once.

    from workbench.quant.registry import METHODS, QuantMethod, register_method
    @dataclass(frozen=True)
    class MyConfig(QuantConfig):                     # the grid's fields, and the method's own
        method: str = "mine"
        strength: float = 1.0                        # what the field does, where it is declared
    register_method(QuantMethod("mine", my_handler, MyConfig))   # then QuantConfig(method="mine", strength=2)

A method's handler quantizes its share of a model's linear layers in place:

    handler(model, plan, calibration=None, hessians=None, progress=True) -> list of rows
        plan         {module name: its config (the method's QuantConfig subclass)}
        calibration  token ids [n, seqlen] or None
        hessians     {module name: H [in, in]} of the one-shot methods' layers, when calibrated
        each row     {"module": name, "state": what save_quantized stores for it (a QuantizedWeight
                     or the QuantConfig of a module the method replaced), and any measures:
                     time_s, note, rel_output_error, ...} — every key becomes a report column

`quantize_model` runs the methods in registration order, the `sequential` ones (GPTQ: each block
is calibrated on the outputs of the already-quantized blocks before it) after the others. This
file imports nothing from the workbench: the methods import it, never the reverse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class QuantMethod:
    name: str                          # the value of QuantConfig.method
    quantize: Callable[..., list]      # the handler described above
    config: type                       # its config class: a frozen dataclass subclassing grid.QuantConfig
    min_bits: int = 2                  # fewest bits (BCQ: one binary plane)
    needs_calibration: bool = False    # quantize_model refuses to run it without calibration data
    sequential: bool = False           # runs after the one-shot methods, on the partly quantized model


METHODS: dict[str, QuantMethod] = {}   # name -> method, in registration order


def register_method(method: QuantMethod) -> QuantMethod:
    """Add `method` under its name (a name registered twice is an error); return it."""
    if method.name in METHODS and METHODS[method.name] != method:
        raise ValueError(f"a quantization method named {method.name!r} is already registered")
    METHODS[method.name] = method
    return method
