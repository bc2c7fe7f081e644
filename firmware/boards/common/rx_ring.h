/* Received UART bytes, filled by a board's RX interrupt and read by the application: the part of
 * ser_port_uart_read()/ser_port_idle() that is the same on every board (common/rx_ring.c).
 *
 * Receive paths (PROTOCOL.md section 8): path 0 is this UART ring. A board whose build sets
 * SER_RX_PATHS 2 has a second way in for the host's byte stream and provides the two hooks below;
 * after an RX_PATH command the stream is read from there. Only the emulated board has one (QEMU's
 * Ethernet controller): QEMU's UART model moves one byte per main-loop round. */
#ifndef SER_RX_RING_H_
#define SER_RX_RING_H_

#include <stdint.h>

#ifndef SER_RX_PATHS
#define SER_RX_PATHS 1
#endif

/* Called from the RX interrupt; a byte that finds the ring full is dropped (the protocol's CRC and
 * retries recover it). */
void ser_rx_ring_put(uint8_t byte);

#if SER_RX_PATHS > 1
/* The board's path 1: take one byte if there is one (1), else 0; and whether one is waiting. */
int ser_board_path1_take(uint8_t *byte);
int ser_board_path1_ready(void);
/* Drop whatever path 1 holds (bytes of an older stream). */
void ser_board_path1_flush(void);
#endif

#endif /* SER_RX_RING_H_ */
