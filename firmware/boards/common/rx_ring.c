/* Single-producer (RX interrupt) single-consumer (main loop) byte ring; see rx_ring.h. */
#include "rx_ring.h"

#include "cortexm_regs.h"
#include "ser_port.h"

#define RX_RING 4096u /* power of two */

static volatile uint8_t ring[RX_RING];
static volatile uint32_t head, tail;

void ser_rx_ring_put(uint8_t byte) {
  if (head - tail < RX_RING) {
    ring[head & (RX_RING - 1u)] = byte;
    head++;
  }
}

int ser_port_uart_read(uint8_t *byte) {
  if (head == tail) return 0;
  *byte = ring[tail & (RX_RING - 1u)];
  tail++;
  return 1;
}

void ser_port_idle(void) {
  ser_disable_irq();
  if (head == tail) ser_wfi(); /* an interrupt pending at WFI wakes it at once */
  ser_enable_irq();
}
