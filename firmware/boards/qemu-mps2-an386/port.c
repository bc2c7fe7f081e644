/* Board port for QEMU's mps2-an386 (Cortex-M4F): CMSDK UART0 with a receive interrupt, SysTick as
 * the cycle counter. QEMU's DWT reads as zero; under `-icount shift=0` one instruction takes 1 ns of
 * virtual time and SysTick runs at SYSCLK (25 MHz), so one tick is 40 instructions. */
#include "ser_port.h"

#include "cortexm_regs.h"
#include "rx_ring.h"

#define SYSCLK_HZ 25000000u
#define INSTRUCTIONS_PER_TICK 40u /* 1 GHz of virtual instruction time / 25 MHz */
#define BAUD 115200u

typedef struct {
  volatile uint32_t DATA, STATE, CTRL, INTSTATUS, BAUDDIV;
} cmsdk_uart;
#define UART0 ((cmsdk_uart *)0x40004000u)
#define UART_STATE_TXFULL 1u
#define UART_STATE_RXFULL 2u
#define UART_CTRL_TX_EN 1u
#define UART_CTRL_RX_EN 2u
#define UART_CTRL_RX_INT 8u
#define UART_INT_RX 2u
#define UART0_RX_IRQ 0

static void drain_uart(void) {
  while (UART0->STATE & UART_STATE_RXFULL) {
    uint8_t byte = (uint8_t)UART0->DATA;
    ser_rx_ring_put(byte);
  }
}

void ser_irq0_handler(void) {
  UART0->INTSTATUS = UART_INT_RX; /* write 1 to clear */
  drain_uart();
}

void ser_port_init(void) {
  UART0->BAUDDIV = SYSCLK_HZ / BAUD;
  UART0->CTRL = UART_CTRL_TX_EN | UART_CTRL_RX_EN | UART_CTRL_RX_INT;
  drain_uart(); /* a byte that arrived before the interrupt was enabled raises no interrupt */
  ser_nvic_enable(UART0_RX_IRQ);
  ser_systick_start();
}

const char *ser_port_board_name(void) { return "qemu-mps2-an386"; }
uint32_t ser_port_core_clock_hz(void) { return SYSCLK_HZ; }
const char *ser_port_counter_kind(void) {
  return "QEMU -icount shift=0 instructions (SysTick x 40); emulator counts, not silicon cycles";
}

uint32_t ser_port_cycles(void) { return (uint32_t)(ser_systick_ticks() * INSTRUCTIONS_PER_TICK); }
uint32_t ser_port_millis(void) { return (uint32_t)(ser_systick_ticks() / (SYSCLK_HZ / 1000u)); }

void ser_port_uart_write(const uint8_t *data, size_t n) {
  for (size_t i = 0; i < n; i++) {
    while (UART0->STATE & UART_STATE_TXFULL) {
    }
    UART0->DATA = data[i];
  }
}

void ser_port_led(int on) { (void)on; /* the FPGA LEDs are not visible under QEMU */ }

uint8_t ser_port_reset_reason(void) { return SER_RESET_POWER_ON; }
const char *ser_port_reset_reason_text(void) { return "power-on (QEMU has no reset cause register)"; }

void ser_port_reset(void) { ser_system_reset(); }
