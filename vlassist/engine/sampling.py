"""Per-row logits processing: each a function of one row's logits (V,), its options and its tokens so far.

A decode that steps several answers at once (each with its own options) applies these row by row; the
single-answer path applies them to its one row. The order is vLLM's and transformers': answer-length floor,
penalties, logit bias, then (after any grammar mask) the sampling filters — temperature, top-k, top-p, min-p.
Log-probabilities are reported from the model's own distribution, before any of this (vLLM's default).
V is the vocabulary (logits) width, n the number of answer tokens so far.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from functools import lru_cache

import torch

from vlassist.conversation import GenerationOptions, TokenLogprob

NEG_INF = float("-inf")


def needs_rows(options: GenerationOptions) -> bool:
    """True if `options` ask for any processing beyond plain greedy or plain sampling (penalties, bias…)."""
    return bool(options.frequency_penalty or options.presence_penalty or options.logit_bias
                or (options.penalize_greedy and options.repetition_penalty != 1.0))


def hold_end(logits: torch.Tensor, options: GenerationOptions, answer_len: int, eos_ids: Collection[int]
             ) -> torch.Tensor:
    """Forbid the end-of-answer tokens while the answer is shorter than `options.min_new_tokens`."""
    if answer_len >= options.min_new_tokens or not eos_ids:
        return logits
    out = logits.clone()
    out[[i for i in eos_ids if i < out.shape[0]]] = NEG_INF
    return out


def penalize(logits: torch.Tensor, options: GenerationOptions, answer: torch.Tensor,
             prompt: torch.Tensor | None = None) -> torch.Tensor:
    """Repetition penalty (over prompt and answer, as transformers and vLLM), then frequency and presence
    penalties (over the answer, as OpenAI): logits (V,), answer (n,) and prompt (L,) token ids."""
    out = logits
    repetition = options.repetition_penalty if (not options.precise or options.penalize_greedy) else 1.0
    if repetition != 1.0:
        seen = answer if prompt is None else torch.cat([prompt.to(answer.device), answer])
        if seen.numel():
            ids = seen.unique()
            ids = ids[ids < out.shape[0]]
            picked = out[ids]
            out = out.clone()
            out[ids] = torch.where(picked > 0, picked / repetition, picked * repetition)
    if (options.frequency_penalty or options.presence_penalty) and answer.numel():
        counts = torch.bincount(answer, minlength=out.shape[0])[:out.shape[0]].to(out.dtype)  # (V,)
        out = out - options.frequency_penalty * counts - options.presence_penalty * (counts > 0).to(out.dtype)
    return out


def bias(logits: torch.Tensor, options: GenerationOptions) -> torch.Tensor:
    """Add each (token id, bias) of `options.logit_bias` to that token's logit."""
    if not options.logit_bias:
        return logits
    out = logits.clone()
    for token, amount in options.logit_bias:
        if 0 <= token < out.shape[0]:
            out[token] += amount
    return out


def adjust(logits: torch.Tensor, options: GenerationOptions, answer: torch.Tensor, eos_ids: Collection[int],
           prompt: torch.Tensor | None = None) -> torch.Tensor:
    """Everything that comes before a grammar mask: the length floor, penalties and bias, for one row (V,)."""
    return bias(penalize(hold_end(logits, options, int(answer.numel()), eos_ids), options, answer, prompt), options)


def warp(logits: torch.Tensor, options: GenerationOptions) -> torch.Tensor:
    """The sampling filters for one row (V,): temperature, then top-k, top-p and min-p set dropped tokens to -inf.

    Greedy options return the logits unchanged (argmax needs no filter).
    """
    if options.precise:
        return logits
    out = logits / max(options.temperature, 1e-5)
    if 0 < options.top_k < out.shape[0]:
        kth = torch.topk(out, options.top_k).values[-1]
        out = out.masked_fill(out < kth, NEG_INF)
    if options.top_p < 1.0:
        ordered, order = torch.sort(out, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        # Keep the smallest head whose mass reaches top_p: a token is dropped when the mass before it already does.
        drop = (torch.cumsum(probs, dim=-1) - probs) >= options.top_p
        drop[0] = False
        out = out.clone()
        out[order[drop]] = NEG_INF
    if options.min_p > 0:
        probs = torch.softmax(out, dim=-1)
        out = out.masked_fill(probs < options.min_p * probs.max(), NEG_INF)
    return out


def pick(logits: torch.Tensor, options: GenerationOptions, generator: torch.Generator | None = None) -> int:
    """The next token of one row from its processed logits (V,): the argmax, or a draw from the softmax."""
    if options.precise:
        return int(torch.argmax(logits))
    return int(torch.multinomial(torch.softmax(logits.float(), dim=-1), 1, generator=generator))


def next_token(logits: torch.Tensor, options: GenerationOptions, answer: torch.Tensor, eos_ids: Collection[int],
               prompt: torch.Tensor | None = None, mask: Callable[[torch.Tensor], torch.Tensor] | None = None,
               generator: torch.Generator | None = None) -> int:
    """One row's next token from its raw logits (V,): adjust, the row's grammar `mask` if any, warp, pick."""
    out = adjust(logits, options, answer, eos_ids, prompt)
    if mask is not None:
        out = mask(out)
    return pick(warp(out, options), options, generator)


def logprobs_of(raw: torch.Tensor, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """The chosen token's log-probability under the raw logits (V,), and the `top` likeliest (id, logprob)."""
    logprobs = torch.log_softmax(raw.float(), dim=-1)
    best = torch.topk(logprobs, top) if top > 0 else None
    alternatives = list(zip(best.indices.tolist(), best.values.tolist())) if best is not None else []
    return float(logprobs[token]), alternatives


class RowsProcessor:
    """`adjust` and `warp` as a transformers-style logits processor: (sequence (B, S), scores (B, V)) → scores.

    Answer tokens are the sequence's columns from `prompt_len` on; `prompt_known` False (a left-padded batch)
    leaves the prompt out of the repetition penalty.
    """

    def __init__(self, options: GenerationOptions, prompt_len: int, eos_ids: Collection[int], stage: str,
                 prompt_known: bool = True):
        self.options, self.prompt_len, self.eos_ids = options, prompt_len, sorted(eos_ids)
        self.stage, self.prompt_known = stage, prompt_known

    def __call__(self, sequence: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        rows = []
        for row in range(scores.shape[0]):
            if self.stage == "warp":
                rows.append(warp(scores[row], self.options))
                continue
            answer = sequence[row, self.prompt_len:]
            prompt = sequence[row, :self.prompt_len] if self.prompt_known else None
            rows.append(adjust(scores[row], self.options, answer, self.eos_ids, prompt))
        return torch.stack(rows)


@lru_cache(maxsize=4)
def _byte_decoder() -> dict[str, int]:
    # Byte-level BPE (GPT-2's, which Qwen's tokenizers use) writes each byte as one printable character: printable
    # Latin-1 bytes stand for themselves, the others for characters from U+0100 on, in byte order.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


def token_bytes(tokenizer, token_id: int) -> bytes:
    """The bytes a token stands for; special tokens give their own text."""
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    if piece is None:
        return b""
    decoder = _byte_decoder()
    if piece in getattr(tokenizer, "all_special_tokens", ()) or not all(c in decoder for c in piece):
        return piece.encode("utf-8")
    return bytes(decoder[c] for c in piece)


def _entry(tokenizer, token_id: int, logprob: float) -> TokenLogprob:
    data = token_bytes(tokenizer, token_id)
    # A token can hold part of a UTF-8 character: its text shows the replacement mark, its bytes stay exact.
    return TokenLogprob(token=data.decode("utf-8", "replace"), logprob=logprob, bytes=list(data))


def token_logprob(tokenizer, raw: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """The chosen token's TokenLogprob (with `top` alternatives) from one row's raw logits (V,)."""
    chosen, alternatives = logprobs_of(raw, token, top)
    entry = _entry(tokenizer, token, chosen)
    entry.top = [_entry(tokenizer, t, lp) for t, lp in alternatives]
    return entry


def rows_processors(options: GenerationOptions, prompt_len: int, eos_ids: Sequence[int], prompt_known: bool = True
                    ) -> tuple[list, list]:
    """The processors before a grammar mask (length floor, penalties, bias) and after it (sampling filters)."""
    before = []
    if options.min_new_tokens or needs_rows(options) or (not options.precise and options.repetition_penalty != 1.0):
        before.append(RowsProcessor(options, prompt_len, eos_ids, "adjust", prompt_known))
    after = [] if options.precise else [RowsProcessor(options, prompt_len, eos_ids, "warp")]
    return before, after
