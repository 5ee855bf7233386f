"""Streaming a call's tokens as they are chosen.

`streamer=` takes either
- one transformers streamer (an object with put() and end(), e.g. TextStreamer): it gets what
  generate gives it, the prompt ids [B, L] then each step's tokens [B] (rows that stopped get
  pad), then end(). transformers' own streamers accept B = 1 only;
- a list of B streamers, one per row (per-row streaming for batches): streamer i gets row i
  alone, as generate would give it for that prompt at batch 1: its prompt without the left
  padding ([1, L_i]), then each of its new tokens ([1]) while the row runs (nothing after it
  stopped), then end() once the call finishes.
"""

from __future__ import annotations

from typing import Sequence

import torch


class RowStreams:
    """Feeds `streamer` (None, one streamer, or a list of one per row) for a batch."""

    def __init__(self, streamer, batch: int):
        self.single = None if isinstance(streamer, (list, tuple)) or streamer is None else streamer
        self.rows: Sequence = list(streamer) if isinstance(streamer, (list, tuple)) else ()
        self.active = streamer is not None

    def start(self, prompt: torch.Tensor, mask: torch.Tensor | None) -> None:
        """prompt int64 [B, L] (left padded), mask [B, L] or None."""
        if self.single is not None:
            self.single.put(prompt.cpu())
        if self.rows:
            prompt = prompt.cpu()
            keep = mask.cpu().bool() if mask is not None else torch.ones_like(prompt, dtype=torch.bool)
            for row, streamer in enumerate(self.rows):
                streamer.put(prompt[row][keep[row]].unsqueeze(0))

    def put(self, tokens: torch.Tensor, running: Sequence[bool]) -> None:
        """tokens int64 [B] on the host (pad where a row had stopped); running: whether each row was
        still running before this step."""
        if self.single is not None:
            self.single.put(tokens)
        for row, streamer in enumerate(self.rows):
            if running[row]:
                streamer.put(tokens[row:row + 1])

    def end(self) -> None:
        if self.single is not None:
            self.single.end()
        for streamer in self.rows:
            streamer.end()
