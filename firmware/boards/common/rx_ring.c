/* Single-producer (RX interrupt) single-consumer (main loop) byte ring, and the choice of receive
 * path; see rx_ring.h. */
#include "rx_ring.h"

#include "cortexm_regs.h"
#include "ser_port.h"

#define RX_RING 4096u /* power of two */
#define PATH_REVERT_MS 100u /* path 1 silent this long while the UART has bytes: back to path 0 */

static volatile uint8_t ring[RX_RING];
static volatile uint32_t head, tail;
#if SER_RX_PATHS > 1
static unsigned path; /* where the host's stream is read from */
static int stalled;   /* path 1 empty while the UART has bytes, since stall_ms */
static uint32_t stall_ms;
#endif

void ser_rx_ring_put(uint8_t byte) {
  if (head - tail < RX_RING) {
    ring[head & (RX_RING - 1u)] = byte;
    head++;
  }
}

static int ring_take(uint8_t *byte) {
  if (head == tail) return 0;
  *byte = ring[tail & (RX_RING - 1u)];
  tail++;
  return 1;
}

#if SER_RX_PATHS > 1
/* A host that does not use path 1 (a new tool on a board left there) talks on the UART only. */
static void check_stall(void) {
  if (head == tail) {
    stalled = 0;
  } else if (!stalled) {
    stalled = 1;
    stall_ms = ser_port_millis();
  } else if (ser_port_millis() - stall_ms > PATH_REVERT_MS) {
    path = 0;
    stalled = 0;
  }
}
#endif

int ser_port_uart_read(uint8_t *byte) {
#if SER_RX_PATHS > 1
  if (path == 1) {
    if (ser_board_path1_take(byte)) {
      stalled = 0;
      return 1;
    }
    check_stall();
    return 0;
  }
#endif
  return ring_take(byte);
}

void ser_port_idle(void) {
  ser_disable_irq();
  int ready = head != tail; /* on path 1 too: UART bytes then mean waiting out PATH_REVERT_MS */
#if SER_RX_PATHS > 1
  if (path == 1 && !ready) ready = ser_board_path1_ready();
#endif
  if (!ready) ser_wfi(); /* an interrupt pending at WFI wakes it at once */
  ser_enable_irq();
}

unsigned ser_port_rx_paths(void) { return SER_RX_PATHS; }

int ser_port_set_rx_path(unsigned p) {
  if (p >= SER_RX_PATHS) return -1;
#if SER_RX_PATHS > 1
  if (p == 1) ser_board_path1_flush(); /* bytes left from an older stream (a host cut off, a reset) */
  path = p;
  stalled = 0;
#endif
  return 0;
}
