"""Stop strings: the one place that decides where generated text ends, on tokens and on text.

A stop string may begin or end inside a token, so the rule works on the text's bytes. `StopScanner` follows a
row's tokens as they come: it says how many to keep once a stop string appears (through the token where a stop
string that begins inside a token ends, so the text still holds it and `cut_at_stop` can cut it exactly), and how
many can be released while decoding goes on (those that cannot be part of a stop string still being written).
Each token costs only the bytes that could complete a stop string, so a long output is scanned in linear time.
"""

import bisect


class StopScanner:
    """Where a row's output ends, as its tokens arrive (`add` each one, in order)."""

    def __init__(self, encoder, stop):
        self.encoder = encoder
        self.stops = [s.encode("utf-8") for s in stop if s]
        self.longest = max(map(len, self.stops))
        self.text = bytearray()
        self.ends = []  # byte offset at which each token's text ends

    def add(self, token):
        """Take the next token; how many tokens to keep if a stop string now appears, else None.

        Tokens before the one where the stop string begins; if it begins inside a token, through the token where it
        ends, so the text still holds the whole stop string and can be cut exactly.
        """
        start = max(0, len(self.text) - self.longest + 1)  # an earlier start was ruled out by the earlier tokens
        self.text += self.encoder.decode_bytes([token])
        self.ends.append(len(self.text))
        hits = sorted((h, len(s)) for s in self.stops if (h := self.text.find(s, start)) >= 0)
        if not hits:
            return None
        first, size = hits[0]
        containing = bisect.bisect_right(self.ends, first)  # the token holding byte `first`
        if (self.ends[containing - 1] if containing else 0) == first:
            return containing
        return bisect.bisect_right(self.ends, first + size - 1) + 1

    def safe_end(self):
        """How many tokens can be released: those ending before the last (longest stop - 1) bytes."""
        return bisect.bisect_right(self.ends, len(self.text) - (self.longest - 1))


def cut_at_stop(text, stop):
    """`text` up to the earliest of the `stop` strings in it."""
    hits = [text.find(s) for s in stop if s and s in text]
    return text[: min(hits)] if hits else text
