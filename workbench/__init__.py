"""quant-workbench: quantize, fine-tune and probe pre-trained language models.

    from workbench.models import load_model
    from workbench.data import evaluation_text
    from workbench.evaluate import perplexity
    from workbench.quant import QuantConfig, quantize_model

    model, tokenizer, record = load_model("smollm2-135m")
    ppl = perplexity(model, tokenizer, evaluation_text("lee"))
    qmodel, report = quantize_model(model, QuantConfig(bits=4, group_size=128))
"""

__version__ = "0.1.0"

import logging as _logging

from workbench import numerics as _numerics

_numerics.pin()   # the AVX2 kernels on every x86-64 CPU, before torch's first operation (numerics.py)

# transformers imports torchao (when installed) on every model load; on a CPU machine torchao
# then warns that its CUDA kernels cannot load, and torch warns about torchao's pytree enums.
# Neither concerns CPU use; silence them so notebook outputs hold only what the code says.
for _name in ("torchao", "torch.utils._pytree"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)
