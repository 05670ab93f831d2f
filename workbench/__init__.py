"""quant-workbench: quantize, fine-tune and probe pre-trained language models.

    from workbench.models import load_model
    from workbench.data import evaluation_text
    from workbench.evaluate import perplexity
    from workbench.quantize import QuantConfig, quantize_model

    model, tokenizer, record = load_model("smollm2-135m")
    ppl = perplexity(model, tokenizer, evaluation_text("lee"))
    qmodel, report = quantize_model(model, QuantConfig(bits=4, group_size=128))
"""

__version__ = "0.1.0"
