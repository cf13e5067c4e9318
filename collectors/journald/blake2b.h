/* BLAKE2b (RFC 7693), unkeyed, for the event ids of journal entries: the same digest as
 * Python's hashlib.blake2b(data, digest_size=N). tests/test_journald_fastpath.py compares the
 * two on many inputs. */
#ifndef ALPACON_BLAKE2B_H
#define ALPACON_BLAKE2B_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static const uint64_t b2b_iv[8] = {
    0x6A09E667F3BCC908ULL, 0xBB67AE8584CAA73BULL, 0x3C6EF372FE94F82BULL, 0xA54FF53A5F1D36F1ULL,
    0x510E527FADE682D1ULL, 0x9B05688C2B3E6C1FULL, 0x1F83D9ABFB41BD6BULL, 0x5BE0CD19137E2179ULL,
};

static const uint8_t b2b_sigma[10][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
};

static inline uint64_t b2b_rotr(uint64_t x, int n) { return (x >> n) | (x << (64 - n)); }

static inline uint64_t b2b_load64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

#define B2B_G(a, b, c, d, x, y)                 \
    do {                                        \
        v[a] = v[a] + v[b] + (x);               \
        v[d] = b2b_rotr(v[d] ^ v[a], 32);       \
        v[c] = v[c] + v[d];                     \
        v[b] = b2b_rotr(v[b] ^ v[c], 24);       \
        v[a] = v[a] + v[b] + (y);               \
        v[d] = b2b_rotr(v[d] ^ v[a], 16);       \
        v[c] = v[c] + v[d];                     \
        v[b] = b2b_rotr(v[b] ^ v[c], 63);       \
    } while (0)

static void b2b_compress(uint64_t h[8], const uint8_t block[128], uint64_t t, int last) {
    uint64_t v[16], m[16];
    for (int i = 0; i < 8; i++) {
        v[i] = h[i];
        v[i + 8] = b2b_iv[i];
    }
    v[12] ^= t; /* the high word of the counter stays 0: inputs are far below 2^64 bytes */
    if (last)
        v[14] = ~v[14];
    for (int i = 0; i < 16; i++)
        m[i] = b2b_load64(block + 8 * i);
    for (int r = 0; r < 12; r++) {
        const uint8_t *s = b2b_sigma[r % 10];
        B2B_G(0, 4, 8, 12, m[s[0]], m[s[1]]);
        B2B_G(1, 5, 9, 13, m[s[2]], m[s[3]]);
        B2B_G(2, 6, 10, 14, m[s[4]], m[s[5]]);
        B2B_G(3, 7, 11, 15, m[s[6]], m[s[7]]);
        B2B_G(0, 5, 10, 15, m[s[8]], m[s[9]]);
        B2B_G(1, 6, 11, 12, m[s[10]], m[s[11]]);
        B2B_G(2, 7, 8, 13, m[s[12]], m[s[13]]);
        B2B_G(3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
    for (int i = 0; i < 8; i++)
        h[i] ^= v[i] ^ v[i + 8];
}

/* The digest (outlen <= 64 bytes) of the concatenation of two inputs. */
static void blake2b_2(uint8_t *out, size_t outlen, const uint8_t *a, size_t alen, const uint8_t *b, size_t blen) {
    uint64_t h[8];
    uint8_t block[128];
    size_t fill = 0;
    uint64_t t = 0;
    memcpy(h, b2b_iv, sizeof h);
    h[0] ^= 0x01010000ULL ^ (uint64_t)outlen;
    const uint8_t *parts[2] = {a, b};
    size_t lens[2] = {alen, blen};
    for (int p = 0; p < 2; p++) {
        const uint8_t *d = parts[p];
        size_t n = lens[p];
        while (n > 0) {
            if (fill == 128) { /* a full block with more to come: not the last */
                t += 128;
                b2b_compress(h, block, t, 0);
                fill = 0;
            }
            size_t take = 128 - fill < n ? 128 - fill : n;
            memcpy(block + fill, d, take);
            fill += take;
            d += take;
            n -= take;
        }
    }
    t += fill;
    memset(block + fill, 0, 128 - fill);
    b2b_compress(h, block, t, 1);
    for (size_t i = 0; i < outlen; i++)
        out[i] = (uint8_t)(h[i / 8] >> (8 * (i % 8)));
}

#endif
