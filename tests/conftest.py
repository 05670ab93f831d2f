"""Shared fixtures: a tiny randomly initialised causal LM saved like any Hugging Face folder; the
seed of this run's sample of snapshot items (printed in the header; WORKBENCH_SAMPLE_SEED repeats it)."""

import os
import random

import pytest
import torch

SAMPLE_SEED = int(os.environ.get("WORKBENCH_SAMPLE_SEED") or random.SystemRandom().randrange(2 ** 31))


def pytest_report_header(config):
    return (f"snapshot sample seed: {SAMPLE_SEED} (a new sample each run; "
            f"WORKBENCH_SAMPLE_SEED={SAMPLE_SEED} repeats this one)")


@pytest.fixture
def sample_rng(request):
    """A generator seeded by this run's sample seed and the test's name (each test its own draw)."""
    return random.Random(f"{SAMPLE_SEED}/{request.node.name}")


def _word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<eos>"] + [f"w{i}" for i in range(62)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory):
    """A 2-layer Llama with a 64-word vocabulary, saved with save_pretrained (as a hub model is)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True, eos_token_id=1, pad_token_id=1, bos_token_id=None)
    model = LlamaForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    _word_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_lm(tiny_lm_dir):
    from workbench.models import load_model

    return load_model(str(tiny_lm_dir))


@pytest.fixture
def tiny_text():
    g = torch.Generator().manual_seed(1)
    return " ".join(f"w{i}" for i in torch.randint(0, 62, (300,), generator=g).tolist())


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of many tiny tensor ops: on a shared 2-core CPU, thread
    hand-offs and OpenMP spin-waits cost more than the work (BCQ's tests ran 15x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
