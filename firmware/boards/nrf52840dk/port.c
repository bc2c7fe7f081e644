/* Board port for the nRF52840-DK: 64 MHz from the HFXO, UART0 (the UARTE0 instance in legacy UART
 * mode) on P0.06/P0.08 to the J-Link virtual COM port with an RX interrupt, DWT cycle counter,
 * LED1 on P0.13. Minimal register-level code of our own. */
#include "ser_port.h"

#include "cortexm_regs.h"
#include "rx_ring.h"

#define REG(addr) (*(volatile uint32_t *)(addr))
#define CLOCK_TASKS_HFCLKSTART REG(0x40000000u)
#define CLOCK_EVENTS_HFCLKSTARTED REG(0x40000100u)
#define POWER_RESETREAS REG(0x40000400u)
#define UART0_BASE 0x40002000u
#define UART_STARTRX REG(UART0_BASE + 0x000u)
#define UART_STARTTX REG(UART0_BASE + 0x008u)
#define UART_EVENTS_RXDRDY REG(UART0_BASE + 0x108u)
#define UART_EVENTS_TXDRDY REG(UART0_BASE + 0x11Cu)
#define UART_INTENSET REG(UART0_BASE + 0x304u)
#define UART_ENABLE REG(UART0_BASE + 0x500u)
#define UART_PSEL_RTS REG(UART0_BASE + 0x508u)
#define UART_PSEL_TXD REG(UART0_BASE + 0x50Cu)
#define UART_PSEL_CTS REG(UART0_BASE + 0x510u)
#define UART_PSEL_RXD REG(UART0_BASE + 0x514u)
#define UART_RXD REG(UART0_BASE + 0x518u)
#define UART_TXD REG(UART0_BASE + 0x51Cu)
#define UART_BAUDRATE REG(UART0_BASE + 0x524u)
#define UART0_IRQ 2
#define P0_OUTSET REG(0x50000508u)
#define P0_OUTCLR REG(0x5000050Cu)
#define P0_DIRSET REG(0x50000518u)
#define LED1_PIN 13u
#define BAUD_921600 0x0F000000u
#define BOUNDED_WAIT 1000000u

static uint8_t reset_reason = SER_RESET_OTHER;

void ser_irq2_handler(void) {
  while (UART_EVENTS_RXDRDY) {
    UART_EVENTS_RXDRDY = 0;
    uint8_t byte = (uint8_t)UART_RXD;
    ser_rx_ring_put(byte);
  }
}

void ser_port_init(void) {
  uint32_t reas = POWER_RESETREAS;
  POWER_RESETREAS = reas; /* write 1s to clear */
  reset_reason = (reas & 1u)   ? SER_RESET_PIN
                 : (reas & 2u) ? SER_RESET_WATCHDOG
                 : (reas & 4u) ? SER_RESET_SOFTWARE
                 : reas == 0u  ? SER_RESET_POWER_ON
                               : SER_RESET_OTHER;
  CLOCK_EVENTS_HFCLKSTARTED = 0;
  CLOCK_TASKS_HFCLKSTART = 1;
  for (uint32_t i = 0; i < BOUNDED_WAIT && !CLOCK_EVENTS_HFCLKSTARTED; i++) {
  }
  DEMCR |= DEMCR_TRCENA;
  DWT_CYCCNT = 0;
  DWT_CTRL |= DWT_CTRL_CYCCNTENA;
  ser_systick_start();
  P0_DIRSET = 1u << LED1_PIN;
  P0_OUTSET = 1u << LED1_PIN; /* LED1 is active low: off */
  UART_PSEL_TXD = 6u;
  UART_PSEL_RXD = 8u;
  UART_PSEL_RTS = 0xFFFFFFFFu;
  UART_PSEL_CTS = 0xFFFFFFFFu;
  UART_BAUDRATE = BAUD_921600;
  UART_ENABLE = 4u;
  UART_INTENSET = 1u << 2; /* RXDRDY */
  UART_STARTRX = 1;
  UART_STARTTX = 1;
  ser_nvic_enable(UART0_IRQ);
}

const char *ser_port_board_name(void) { return SER_BOARD_NAME; }
uint32_t ser_port_core_clock_hz(void) { return 64000000u; }
const char *ser_port_counter_kind(void) { return "DWT cycles"; }
uint32_t ser_port_cycles(void) { return DWT_CYCCNT; }

uint32_t ser_port_millis(void) { return (uint32_t)(ser_systick_ticks() / 64000u); }

void ser_port_uart_write(const uint8_t *data, size_t n) {
  for (size_t i = 0; i < n; i++) {
    UART_EVENTS_TXDRDY = 0;
    UART_TXD = data[i];
    for (uint32_t w = 0; w < BOUNDED_WAIT && !UART_EVENTS_TXDRDY; w++) {
    }
  }
}

void ser_port_led(int on) {
  if (on) {
    P0_OUTCLR = 1u << LED1_PIN;
  } else {
    P0_OUTSET = 1u << LED1_PIN;
  }
}

uint8_t ser_port_reset_reason(void) { return reset_reason; }
const char *ser_port_reset_reason_text(void) {
  return ser_reset_reason_name(reset_reason, "other (see POWER.RESETREAS)");
}

void ser_port_reset(void) { ser_system_reset(); }
