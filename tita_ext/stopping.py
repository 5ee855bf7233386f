"""Stop strings: a row stops once its new text contains one of them (the token that completes
it is kept, as in `generate`)."""

from __future__ import annotations

from typing import Sequence


class StopStrings:
    """Watches each row's newest tokens for stop strings.

    Only the last `window` tokens of a row are decoded per step: a string of n characters is
    completed within the last n + 4 tokens (every token decodes to at least one character, but
    for a few partial UTF-8 bytes), and an earlier completion would have stopped the row already.
    """

    def __init__(self, tokenizer, stop_strings: Sequence[str], batch: int):
        self.tokenizer = tokenizer
        self.stop_strings = tuple(stop_strings)
        self.window = max(len(s) for s in self.stop_strings) + 4
        self.tails: list[list[int]] = [[] for _ in range(batch)]

    def update(self, tokens: Sequence[int], active: Sequence[bool]) -> list[int]:
        """Append this step's token per row (host ints); return the active rows that now stop."""
        stopped = []
        for row, (token, live) in enumerate(zip(tokens, active)):
            if not live:
                continue
            tail = self.tails[row]
            tail.append(token)
            del tail[:-self.window]
            text = self.tokenizer.decode(tail, skip_special_tokens=False)
            if any(s in text for s in self.stop_strings):
                stopped.append(row)
        return stopped
