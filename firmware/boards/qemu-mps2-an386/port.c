/* Board port for QEMU's mps2-an386 (Cortex-M4F): CMSDK UART0 with a receive interrupt, SysTick as
 * the cycle counter, and the board's LAN9118 Ethernet controller as receive path 1 (rx_ring.h):
 * QEMU's UART model takes one byte per main-loop round (about 20 KiB/s), its Ethernet model a
 * whole packet. Each packet from the host carries a piece of the same byte stream: Ethernet header
 * (EtherType 0x88B5, local experimental), u16 little-endian byte count, the bytes (PROTOCOL.md 8).
 * QEMU's DWT reads as zero; under `-icount shift=0` one instruction takes 1 ns of virtual time and
 * SysTick runs at SYSCLK (25 MHz), so one tick is 40 instructions. */
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

/* LAN9118 registers used here (SMSC datasheet; QEMU hw/net/lan9118.c). */
#define ETH_BASE 0x40200000u
#define ETH(offset) (*(volatile uint32_t *)(ETH_BASE + (offset)))
#define ETH_RX_DATA 0x00u
#define ETH_RX_STATUS 0x40u
#define ETH_ID_REV 0x50u
#define ETH_IRQ_CFG 0x54u
#define ETH_INT_STS 0x58u
#define ETH_INT_EN 0x5Cu
#define ETH_RX_FIFO_INF 0x7Cu
#define ETH_MAC_CSR_CMD 0xA4u
#define ETH_MAC_CSR_DATA 0xA8u
#define ETH_IRQ_ACTIVE_HIGH 0x111u /* IRQ_EN | IRQ_POL | IRQ_TYPE (push-pull) */
#define ETH_INT_RSFL 0x8u          /* a packet status is waiting */
#define ETH_MAC_BUSY 0x80000000u
#define ETH_MAC_CR 1u
#define ETH_MAC_CR_RXEN 0x4u
#define ETH_MAC_CR_PRMS 0x40000u
#define ETH_IRQ 13 /* QEMU hw/arm/mps2.c: 13 on AN385/AN386/AN500 */
#define ETH_HEADER 16u /* 14 Ethernet + 2 byte count */

static struct {
  int present;
  uint32_t words_left; /* FIFO words of the current packet not read yet */
  uint32_t word;
  uint32_t word_bytes; /* bytes of `word` not taken yet */
  uint32_t payload_left;
} eth;

static void eth_mac_write(uint32_t reg, uint32_t value) {
  ETH(ETH_MAC_CSR_DATA) = value;
  ETH(ETH_MAC_CSR_CMD) = ETH_MAC_BUSY | reg;
  for (int i = 0; i < 1000 && (ETH(ETH_MAC_CSR_CMD) & ETH_MAC_BUSY); i++) {
  }
}

static void eth_init(void) {
  eth.present = (ETH(ETH_ID_REV) >> 16) == 0x0118u;
  if (!eth.present) return;
  eth_mac_write(ETH_MAC_CR, ETH_MAC_CR_RXEN | ETH_MAC_CR_PRMS);
  ETH(ETH_IRQ_CFG) = ETH_IRQ_ACTIVE_HIGH;
  ETH(ETH_INT_EN) = ETH_INT_RSFL;
  ser_nvic_enable(ETH_IRQ);
}

/* The interrupt only wakes the main loop; packets are read there. */
void ser_irq13_handler(void) { ETH(ETH_INT_STS) = ETH_INT_RSFL; }

static int eth_packets_waiting(void) { return eth.present && ((ETH(ETH_RX_FIFO_INF) >> 16) & 0xFFu) != 0; }

static int eth_raw_byte(uint8_t *byte) {
  if (eth.word_bytes == 0) {
    if (eth.words_left == 0) return 0;
    eth.word = ETH(ETH_RX_DATA);
    eth.words_left--;
    eth.word_bytes = 4;
  }
  *byte = (uint8_t)eth.word;
  eth.word >>= 8;
  eth.word_bytes--;
  return 1;
}

/* Drops the rest of the current packet and opens the next one; 0 if none is waiting. */
static int eth_next_packet(void) {
  while (eth.words_left) {
    (void)ETH(ETH_RX_DATA);
    eth.words_left--;
  }
  eth.word_bytes = 0;
  eth.payload_left = 0;
  if (!eth_packets_waiting()) return 0;
  uint32_t length = (ETH(ETH_RX_STATUS) >> 16) & 0x3FFFu; /* frame + 4 CRC bytes */
  eth.words_left = (length + 3u) / 4u;
  uint8_t header[ETH_HEADER];
  for (uint32_t i = 0; i < ETH_HEADER; i++) {
    if (!eth_raw_byte(&header[i])) return 1; /* a runt: nothing in it */
  }
  if (header[12] != 0x88u || header[13] != 0xB5u) return 1; /* not ours */
  uint32_t count = (uint32_t)header[14] | (uint32_t)header[15] << 8;
  uint32_t room = length >= ETH_HEADER + 4u ? length - ETH_HEADER - 4u : 0u;
  eth.payload_left = count < room ? count : room;
  return 1;
}

int ser_board_path1_take(uint8_t *byte) {
  while (eth.payload_left == 0) {
    if (!eth_next_packet()) return 0;
  }
  if (!eth_raw_byte(byte)) {
    eth.payload_left = 0;
    return 0;
  }
  eth.payload_left--;
  return 1;
}

int ser_board_path1_ready(void) { return eth.payload_left != 0 || eth_packets_waiting(); }

void ser_board_path1_flush(void) {
  while (eth_next_packet()) {
  }
}

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
  eth_init();
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
