/* Received UART bytes, filled by a board's RX interrupt and read by the application: the part of
 * ser_port_uart_read()/ser_port_idle() that is the same on every board (common/rx_ring.c). */
#ifndef SER_RX_RING_H_
#define SER_RX_RING_H_

#include <stdint.h>

/* Called from the RX interrupt; a byte that finds the ring full is dropped (the protocol's CRC and
 * retries recover it). */
void ser_rx_ring_put(uint8_t byte);

#endif /* SER_RX_RING_H_ */
