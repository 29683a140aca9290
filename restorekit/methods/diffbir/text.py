"""SD 2.1's text side as DiffBIR uses it: the OpenCLIP BPE tokenizer and the OpenCLIP-H text tower
(penultimate layer) on a transformers ``CLIPTextModel``.

* :class:`CLIPBPETokenizer` reads SD 2.1's ``tokenizer/vocab.json`` and ``merges.txt`` and tokenizes as
  OpenCLIP's ``tokenize`` does (ftfy + HTML unescape + whitespace clean + lower case, the OpenCLIP split
  pattern, byte-level BPE with ``</w>`` word ends, ``<start_of_text>`` ... ``<end_of_text>``, truncated to 77
  with the end token kept last, padded with id 0). A test compares its ids with ``open_clip.tokenize``.
* :func:`openclip_text_to_transformers` maps ``cond_stage_model.model.*`` (OpenCLIP naming) onto a
  ``CLIPTextModel`` with one layer less than the checkpoint (the penultimate layer, then ``ln_final``, is
  what DiffBIR's ``FrozenOpenCLIPEmbedder(layer="penultimate")`` returns).
"""

from __future__ import annotations

import html
import json
import os
from functools import lru_cache

import torch

from ...errors import WeightsError

CONTEXT_LENGTH = 77


@lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP reversible byte -> printable unicode character table."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _clean(text: str) -> str:
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:  # pragma: no cover - ftfy only repairs mis-decoded text
        pass
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).lower()


class CLIPBPETokenizer:
    """OpenCLIP-compatible tokenizer built from ``vocab.json`` + ``merges.txt`` (SD 2.1's tokenizer files)."""

    model_max_length = CONTEXT_LENGTH
    pad_token_id = 0

    def __init__(self, vocab_file: str | os.PathLike, merges_file: str | os.PathLike):
        import regex

        try:
            with open(vocab_file, encoding="utf-8") as f:
                self.encoder: dict[str, int] = json.load(f)
            with open(merges_file, encoding="utf-8") as f:
                lines = f.read().split("\n")
        except (OSError, ValueError) as e:
            raise WeightsError(f"cannot read the tokenizer files {vocab_file} / {merges_file}: {e}") from None
        if lines and lines[0].startswith("#version"):
            lines = lines[1:]
        merges = [tuple(line.split()) for line in lines if line.strip()]
        self.ranks = {m: i for i, m in enumerate(merges)}
        try:
            self.sot, self.eot = self.encoder["<|startoftext|>"], self.encoder["<|endoftext|>"]
        except KeyError:
            raise WeightsError(f"{vocab_file} has no <|startoftext|> / <|endoftext|> tokens; "
                               f"it is not SD 2.1's CLIP vocabulary") from None
        self.specials = {"<start_of_text>": self.sot, "<end_of_text>": self.eot}
        self.pattern = regex.compile(r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"
                                     r"[^\s\p{L}\p{N}]+", regex.IGNORECASE)
        self.byte_map = _byte_to_unicode()
        self._cache: dict[str, list[int]] = {}

    def _bpe(self, word: str) -> list[int]:
        if word in self._cache:
            return self._cache[word]
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            best, best_rank = None, None
            for i in range(len(symbols) - 1):
                r = self.ranks.get((symbols[i], symbols[i + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = (symbols[i], symbols[i + 1]), r
            if best is None:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i < len(symbols) - 1 and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        ids = [self.encoder[s] for s in symbols]
        self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without the start / end tokens."""
        ids: list[int] = []
        for piece in self.pattern.findall(_clean(text)):
            if piece in self.specials:
                ids.append(self.specials[piece])
                continue
            ids.extend(self._bpe("".join(self.byte_map[b] for b in piece.encode("utf-8"))))
        return ids

    def __call__(self, texts: list[str] | str) -> torch.Tensor:
        """(N, 77) long tensor: start, tokens, end, zeros; over-long texts keep their first 75 tokens."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = torch.zeros(len(texts), CONTEXT_LENGTH, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = [self.sot] + self.encode(t) + [self.eot]
            if len(ids) > CONTEXT_LENGTH:
                ids = ids[:CONTEXT_LENGTH - 1] + [self.eot]
            out[i, :len(ids)] = torch.tensor(ids)
        return out


# ----------------------------------------------------------------------------- weights

#: keys of ``cond_stage_model.model`` that DiffBIR's penultimate-layer embedder never reads
def _unused_text_key(rest: str, n_layers: int) -> bool:
    if rest in ("text_projection", "logit_scale"):
        return True
    if rest.startswith("transformer.resblocks."):
        return int(rest.split(".")[2]) >= n_layers
    return False


_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
          "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def openclip_text_to_transformers(ckpt: dict, model, source: str, prefix: str = "cond_stage_model.model."
                                  ) -> tuple[dict, list[str]]:
    """OpenCLIP text-tower tensors of an SD 2.x checkpoint -> ``model``'s (a ``CLIPTextModel``) state dict.

    Returns (state dict, checkpoint keys deliberately not used: the blocks after the penultimate one,
    ``text_projection`` and ``logit_scale``). Any other ``prefix`` key the mapping does not know is an error.
    """
    n_layers = model.config.num_hidden_layers
    own = model.state_dict()
    root = "text_model." if any(k.startswith("text_model.") for k in own) else ""
    out, unused, unknown = {}, [], []
    for key, v in ckpt.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        if _unused_text_key(rest, n_layers):
            unused.append(key)
        elif rest == "token_embedding.weight":
            out["embeddings.token_embedding.weight"] = v
        elif rest == "positional_embedding":
            out["embeddings.position_embedding.weight"] = v
        elif rest.startswith("ln_final."):
            out["final_layer_norm." + rest.split(".", 1)[1]] = v
        elif rest.startswith("transformer.resblocks."):
            _, _, i, sub = rest.split(".", 3)
            base = f"encoder.layers.{i}."
            if sub in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = "weight" if sub.endswith("weight") else "bias"
                q, k, vv = v.chunk(3, dim=0)
                for name, t in (("q_proj", q), ("k_proj", k), ("v_proj", vv)):
                    out[f"{base}self_attn.{name}.{kind}"] = t.contiguous()
                continue
            mod, param = sub.rsplit(".", 1)
            if mod not in _BLOCK:
                unknown.append(key)
                continue
            out[f"{base}{_BLOCK[mod]}.{param}"] = v
        else:
            unknown.append(key)
    if unknown:
        raise WeightsError(f"{source}: {len(unknown)} unexpected text-encoder keys, e.g. {unknown[:3]}")
    if not out:
        raise WeightsError(f"{source} holds no OpenCLIP text encoder ({prefix}*)")
    return {root + k: v for k, v in out.items()}, unused
