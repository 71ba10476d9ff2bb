"""The causal language model of report generation (``reportgen.lm``), from a local Hugging Face
directory only (never the network), and what trains in it.

``train``:
- ``projector``: the LM is frozen (LLaVA's first stage; COLIPRI C.4 trains the projector only);
- ``lora``: peft LoRA adapters on ``lora_targets`` train beside the projector, the base is frozen;
- ``full``: every LM weight trains.

:func:`write_tiny_causal_lm` writes a small random-weight Qwen2 with a byte-level BPE tokenizer
trained on given reports: the offline LM of tests and of the CPU demo (``ctvlp tiny-lm``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

LM_TRAIN_MODES = ("projector", "lora", "full")
IMAGE_START, IMAGE_END = "<image>", "</image>"
# A tokenizer's vocabulary file in any of transformers' formats (fast JSON, BPE, WordPiece, SentencePiece).
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model")


class LanguageModelError(ValueError):
    """A report-generation LM directory that cannot be used, with what to do about it."""


def _check_directory(path: str | Path) -> Path:
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise LanguageModelError(
            f"reportgen.lm.name_or_path={path}: no such directory. Give a local Hugging Face causal LM "
            "(e.g. a downloaded Qwen2.5 base), or for CPU runs build a tiny random one with "
            "`ctvlp tiny-lm --reports <ct-rate root> --out <dir>`"
        )
    if not (directory / "config.json").is_file():
        raise LanguageModelError(f"{directory} has no config.json: it is not a Hugging Face model directory")
    return directory


def load_lm_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The LM's tokenizer; a directory without one, or a tokenizer without a pad or end-of-sequence
    token, is an error that says what to do."""
    directory = _check_directory(path)
    if not any((directory / name).is_file() for name in _TOKENIZER_FILES):
        raise LanguageModelError(
            f"{directory} has no tokenizer (none of {', '.join(_TOKENIZER_FILES)}); save the LM's tokenizer "
            "into the same directory (tokenizer.save_pretrained)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, TypeError) as error:
        raise LanguageModelError(
            f"{directory} has no usable tokenizer ({error}); save the LM's tokenizer into the same directory "
            "(tokenizer.save_pretrained)"
        ) from error
    if tokenizer.eos_token_id is None:
        raise LanguageModelError(f"The tokenizer of {directory} has no eos_token: reports could never end")
    if tokenizer.pad_token_id is None:
        raise LanguageModelError(
            f"The tokenizer of {directory} has no pad token; set one in its tokenizer_config.json "
            f'(e.g. "pad_token": "{tokenizer.eos_token}", as Qwen2.5 does) and retry'
        )
    return tokenizer


def load_causal_lm(
    path: str | Path,
    train: str,
    lora_rank: int,
    lora_alpha: int,
    lora_dropout: float,
    lora_targets: Sequence[str],
    gradient_checkpointing: bool,
    num_tokens: int | None = None,
) -> PreTrainedModel | nn.Module:
    """The LM with only the ``train`` part trainable (peft-wrapped for ``lora``); its embeddings
    grown to ``num_tokens`` when the tokenizer gained tokens (RadFM's ``<image>``, ``</image>``)."""
    if train not in LM_TRAIN_MODES:
        raise LanguageModelError(f"reportgen.lm.train={train!r}; choose one of {', '.join(LM_TRAIN_MODES)}")
    directory = _check_directory(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as error:
        raise LanguageModelError(f"The causal LM in {directory} could not be loaded: {error}") from error
    if num_tokens is not None and num_tokens > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(num_tokens)
    if gradient_checkpointing:
        # transformers 5 renamed gradient_checkpointing_enable (and its keyword argument).
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.config.use_cache = False
    if train == "full":
        return model
    model.requires_grad_(False)
    if train == "projector":
        return model
    from peft import LoraConfig, get_peft_model  # imported only when LoRA is asked for

    config = LoraConfig(
        r=lora_rank,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=list(lora_targets),
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as error:
        raise LanguageModelError(
            f"LoRA could not be attached to {directory} ({error}); set reportgen.lm.lora_targets to module "
            "names of this architecture (e.g. q_proj, v_proj for Qwen2 and Llama)"
        ) from error


def write_tiny_causal_lm(
    out: str | Path,
    reports: Iterable[str],
    vocab_size: int = 1024,
    hidden_size: int = 128,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
) -> Path:
    """A random-weight Qwen2 causal LM and a byte-level BPE tokenizer trained on ``reports``,
    saved to ``out`` (a Hugging Face directory that ``reportgen.lm.name_or_path`` can name)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    special = ["<pad>", "<s>", "</s>", "<unk>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [t for t in reports if t]
    if not texts:
        raise ValueError("write_tiny_causal_lm needs some report texts to train its tokenizer on")
    tokenizer.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    config = Qwen2Config(
        vocab_size=len(fast),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=1024,
        pad_token_id=fast.pad_token_id,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    fast.save_pretrained(directory)
    parameters = sum(p.numel() for p in model.parameters())
    log.info(
        "Wrote a tiny random Qwen2 (%d parameters, vocabulary %d) to %s", parameters, len(fast), directory
    )
    return directory
