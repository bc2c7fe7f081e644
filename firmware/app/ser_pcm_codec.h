/* Board side of the PCM chunk encodings of the serial protocol (firmware/PROTOCOL.md, "PCM encodings").
 *
 * Encoding 0 (SER_PCM_RAW): int16 LE samples. Encoding 1 (SER_PCM_RICE), lossless:
 *   k u8 (0..15) | x[0] i16 LE | bitstream, MSB first, zero-padded to a byte
 * with one code per sample n = 1 .. N-1 for the residual of the order-2 fixed predictor,
 *   e[1] = x[1] - x[0],  e[n] = x[n] - (2 x[n-1] - x[n-2]),  u = zigzag(e) = 2e or -2e - 1,
 * Rice-coded as q = u >> k zero bits, a one bit, then the k low bits of u -- or, when q >= 16,
 * the escape: 16 zero bits then x[n] itself as 16 bits. The host (host/pcm_codec.py) encodes.
 *
 * Decoding writes only out[0..n_samples), never reads past data[size - 1], and rejects a stream
 * that is too short or too long for n_samples, has non-zero padding, or leaves the int16 range.
 */
#ifndef SER_PCM_CODEC_H_
#define SER_PCM_CODEC_H_

#include <stddef.h>
#include <stdint.h>

#include "ser_protocol.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SER_PCM_RICE_MAX_K 15
#define SER_PCM_RICE_ESCAPE 16 /* zero bits that announce an escaped sample */
#define SER_PCM_RICE_HEADER_SIZE 3
/* Bit n set: encoding n decodes here (INFO's PCM_ENCODINGS). */
#define SER_PCM_ENCODINGS_SUPPORTED ((1u << SER_PCM_RAW) | (1u << SER_PCM_RICE))

/* Decodes n_samples samples of the given encoding from data[0..size) into out[0..n_samples).
 * Returns 0, SER_ERR_BAD_LENGTH (n_samples == 0, or a raw chunk whose size is not 2 * n_samples)
 * or SER_ERR_BAD_ENCODING (unknown encoding, or a stream that does not decode). out may be
 * partly written on error. */
int ser_pcm_decode(uint8_t encoding, const uint8_t *data, size_t size, int16_t *out, size_t n_samples);

#ifdef __cplusplus
}
#endif

#endif /* SER_PCM_CODEC_H_ */
