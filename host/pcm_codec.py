"""PCM chunk encodings of the serial protocol: the host's lossless encoder (and a decoder for tests).

Encoding 1 (firmware/PROTOCOL.md, "PCM encodings"; the board decodes in ser_pcm_codec.c):
``k u8 | x[0] i16 LE | bitstream``, MSB first, zero-padded to a byte, one code per sample
n = 1 .. N-1 for the order-2 residual ``e[n] = x[n] - (2 x[n-1] - x[n-2])`` (``x[1] - x[0]`` for
n = 1), zigzag-mapped to ``u``, as ``u >> k`` zero bits, a one bit and the k low bits of ``u``, or,
when ``u >> k >= 16``, 16 zero bits and x[n] itself in 16 bits (so any int16 input round-trips).
k (0..15) minimises the chunk's size. The encoder is vectorised over whole clips: a 3 s clip takes
about 10 ms (20 ms chunk by chunk), far less than the ~0.6 s the serial line needs to send it.
"""

from __future__ import annotations

import numpy as np

RAW = 0
RICE = 1
MAX_K = 15
ESCAPE = 16  # zero bits announcing an escaped sample
HEADER_SIZE = 3
_KS = np.arange(MAX_K + 1, dtype=np.int32)[:, None]


def _as_pcm(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1 or x.dtype != np.int16:
        raise ValueError(f"PCM must be a 1-D int16 array, got {x.dtype} with shape {x.shape}")
    return x


def _rice_segments(x: np.ndarray, starts: np.ndarray) -> list[bytes]:
    """Encoding-1 data of each segment x[starts[i]:starts[i+1]], all segments in one vectorised pass."""
    n, n_seg = len(x), len(starts)
    # One code per sample but the segment's first: code j is sample j + 1 minus the later starts.
    d = np.diff(x.astype(np.int32))  # first differences: d[j] = x[j+1] - x[j]
    e = d.copy()
    e[1:] -= d[:-1]  # order-2 residual = difference of differences
    later = starts[1:]
    e[later[later < n - 1]] = d[later[later < n - 1]]  # a segment's second sample: order-1 residual
    u = (e << 1) ^ (e >> 31)  # zigzag
    x_c = x[1:]
    if n_seg > 1:
        u, x_c = np.delete(u, later - 1), np.delete(x_c, later - 1)
    counts = np.diff(np.append(starts, n)) - 1  # codes per segment
    first = np.concatenate(([0], np.cumsum(counts)))  # index of each segment's first code, then the end

    # Size of every segment for every k: sum(min(q, 16)) + codes * (1 + k) + escapes * (15 - k).
    sizes = np.zeros((len(_KS), n_seg), np.int64)
    if len(u):
        # A zero code at the end keeps reduceat's indices in range; empty segments are zeroed after.
        q = np.minimum(np.append(u, 0)[None, :] >> _KS, ESCAPE)
        sums = np.add.reduceat(q, first[:-1], axis=1, dtype=np.int64)
        escapes = np.add.reduceat(q == ESCAPE, first[:-1], axis=1, dtype=np.int64)
        sizes = sums + counts * (1 + _KS) + escapes * (ESCAPE - 1 - _KS)
        sizes[:, counts == 0] = 0
    best_k = np.argmin(sizes, axis=0)
    seg_bits = sizes[best_k, np.arange(n_seg)]

    seg = np.repeat(np.arange(n_seg), counts)
    k_c = best_k[seg] if n_seg > 1 else np.full(len(u), best_k[0])
    q_c = u >> k_c
    esc = q_c >= ESCAPE
    width = np.where(esc, ESCAPE + 16, q_c + 1 + k_c)
    value = np.where(esc, x_c.astype(np.int64) & 0xFFFF, (1 << k_c) | (u & ((1 << k_c) - 1)))

    # Each segment starts on a 32-bit word; a code (<= 32 bits) spans at most two words.
    base_word = np.concatenate(([0], np.cumsum((seg_bits + 31) // 32)))
    w_excl = np.concatenate(([0], np.cumsum(width)))
    pos = w_excl[:-1] + (base_word[:-1] * 32 - w_excl[first[:-1]])[seg]
    word, off = pos >> 5, pos & 31
    shifted = value.astype(np.uint64) << (64 - off - width).astype(np.uint64)
    n_words = int(base_word[-1]) + 1
    hi = np.bincount(word, weights=(shifted >> np.uint64(32)).astype(np.float64), minlength=n_words)
    lo = np.bincount(word + 1, weights=(shifted & np.uint64(0xFFFFFFFF)).astype(np.float64), minlength=n_words + 1)
    stream = (hi + lo[:n_words]).astype(np.uint64).astype(">u4").tobytes()  # bits never overlap: sums are ORs

    out = []
    for i, s in enumerate(starts):
        b0 = int(base_word[i]) * 4
        head = bytes([int(best_k[i])]) + x[s : s + 1].astype("<i2").tobytes()
        out.append(head + stream[b0 : b0 + (int(seg_bits[i]) + 7) // 8])
    return out


def encode_rice(x: np.ndarray) -> bytes:
    """Encoding-1 data of one chunk, even when it is larger than raw."""
    x = _as_pcm(x)
    if len(x) == 0:
        raise ValueError("a chunk holds at least one sample")
    return _rice_segments(x, np.array([0]))[0]


def _best(x: np.ndarray, rice: bytes) -> tuple[int, bytes]:
    return (RICE, rice) if len(rice) < 2 * len(x) else (RAW, x.astype("<i2").tobytes())


def encode_chunk(x: np.ndarray) -> tuple[int, bytes]:
    """(encoding, data) of one chunk: encoding 1 when it is smaller than raw, else 0."""
    return _best(_as_pcm(x), encode_rice(x))


def encode_chunks(x: np.ndarray, chunk_samples: int) -> list[tuple[int, bytes]]:
    """(encoding, data) of each chunk x[i*chunk_samples : (i+1)*chunk_samples], the whole clip at once."""
    x = _as_pcm(x)
    if chunk_samples < 1:
        raise ValueError("chunk_samples must be >= 1")
    if len(x) == 0:
        return []
    starts = np.arange(0, len(x), chunk_samples)
    rice = _rice_segments(x, starts)
    return [_best(x[s : s + chunk_samples], r) for s, r in zip(starts, rice, strict=True)]


def _rice_prefix(x: np.ndarray, k: int, max_bytes: int) -> int:
    """Most leading samples of x whose encoding-1 data with parameter k fits in max_bytes."""
    d = np.diff(x.astype(np.int32))
    e = d.copy()
    e[1:] -= d[:-1]
    q = ((e << 1) ^ (e >> 31)) >> k
    bits = np.cumsum(np.where(q < ESCAPE, q + 1 + k, ESCAPE + 16))
    return 1 + int(np.searchsorted(bits, 8 * (max_bytes - HEADER_SIZE), side="right"))


def fit_chunk(x: np.ndarray, max_samples: int, max_bytes: int) -> tuple[int, int, bytes]:
    """(n_samples, encoding, data) for a prefix of x of at most max_samples whose data fits in max_bytes.

    For a board that offers more samples per chunk than a raw frame carries: compressed speech
    still sends them all or nearly, noise falls back to a raw chunk of max_bytes // 2 samples.
    At most two encodings: when the first does not fit, its k tells how many samples will.
    """
    x = _as_pcm(x)
    n = min(len(x), max_samples)
    if n < 1 or max_bytes < 2:
        raise ValueError("nothing to send, or no room for one sample")
    encoding, data = encode_chunk(x[:n])
    if len(data) > max_bytes:
        # k optimal for the prefix is no worse than this chunk's k, so the prefix fits; raw always fits.
        m = _rice_prefix(x[:n], data[0], max_bytes) if encoding == RICE else 0
        n = max(min(m, n - 1), max_bytes // 2)
        encoding, data = encode_chunk(x[:n])
    assert len(data) <= max_bytes
    return n, encoding, data


def decode_chunk(encoding: int, data: bytes, n_samples: int) -> np.ndarray:
    """Reference decoder with the C decoder's checks (slow: for tests and tools, not the data path)."""
    if n_samples < 1:
        raise ValueError("a chunk holds at least one sample")
    if encoding == RAW:
        if len(data) != 2 * n_samples:
            raise ValueError(f"raw chunk of {n_samples} samples needs {2 * n_samples} bytes, got {len(data)}")
        return np.frombuffer(data, "<i2").astype(np.int16)
    if encoding != RICE:
        raise ValueError(f"unknown PCM encoding {encoding}")
    if len(data) < HEADER_SIZE or data[0] > MAX_K:
        raise ValueError("encoding-1 header missing or k out of range")
    k = data[0]
    bits = (np.unpackbits(np.frombuffer(data, np.uint8, offset=HEADER_SIZE)) + ord("0")).tobytes().decode()
    total = len(bits)
    bits += "0" * 32 * n_samples  # reads past the end see zeros, like the C reader
    out = np.empty(n_samples, np.int16)
    x1 = x2 = int(np.frombuffer(data, "<i2", count=1, offset=1)[0])
    out[0] = x1
    pos = 0
    for i in range(1, n_samples):
        one = bits.find("1", pos, pos + ESCAPE)
        if one < 0:
            v = int(bits[pos + ESCAPE : pos + ESCAPE + 16], 2)
            x = v - 65536 if v >= 32768 else v
            pos += ESCAPE + 16
        else:
            u = ((one - pos) << k) | (int(bits[one + 1 : one + 1 + k], 2) if k else 0)
            pos = one + 1 + k
            x = 2 * x1 - x2 + ((u >> 1) ^ -(u & 1))
            if not -32768 <= x <= 32767:
                raise ValueError(f"sample {i} decodes out of the int16 range")
        out[i] = x
        x2, x1 = x1, x
    if pos > total or total - pos >= 8 or "1" in bits[pos:total]:
        raise ValueError("encoding-1 stream has the wrong length or non-zero padding")
    return out
