/* Board port for STM32F4 (NUCLEO-F446RE; the same code runs on QEMU's netduinoplus2, an STM32F405).
 * Minimal register-level drivers of our own: RCC clock tree, USART2 on PA2/PA3 with an RX interrupt,
 * DWT cycle counter, LED on PA5. Under QEMU, RCC reads as zero and DWT does not count: every wait
 * is bounded, and the port detects the emulator and says so in its counter description. */
#include "ser_port.h"

#include "cortexm_regs.h"
#include "rx_ring.h"

#ifndef SER_BAUD
#define SER_BAUD 921600u
#endif
#define HSE_HZ 8000000u   /* ST-LINK's MCO on the Nucleo */
#define HSI_HZ 16000000u
#define QEMU_CORE_HZ 168000000u

#define REG(addr) (*(volatile uint32_t *)(addr))
#define RCC_BASE 0x40023800u
#define RCC_CR REG(RCC_BASE + 0x00u)
#define RCC_PLLCFGR REG(RCC_BASE + 0x04u)
#define RCC_CFGR REG(RCC_BASE + 0x08u)
#define RCC_AHB1ENR REG(RCC_BASE + 0x30u)
#define RCC_APB1ENR REG(RCC_BASE + 0x40u)
#define RCC_CSR REG(RCC_BASE + 0x74u)
#define PWR_CR REG(0x40007000u)
#define PWR_CSR REG(0x40007004u)
#define FLASH_ACR REG(0x40023C00u)
#define GPIOA_BASE 0x40020000u
#define GPIOA_MODER REG(GPIOA_BASE + 0x00u)
#define GPIOA_OSPEEDR REG(GPIOA_BASE + 0x08u)
#define GPIOA_PUPDR REG(GPIOA_BASE + 0x0Cu)
#define GPIOA_ODR REG(GPIOA_BASE + 0x14u)
#define GPIOA_AFRL REG(GPIOA_BASE + 0x20u)
#define USART2_BASE 0x40004400u
#define USART2_SR REG(USART2_BASE + 0x00u)
#define USART2_DR REG(USART2_BASE + 0x04u)
#define USART2_BRR REG(USART2_BASE + 0x08u)
#define USART2_CR1 REG(USART2_BASE + 0x0Cu)
#define USART2_IRQ 38

#define SR_RXNE (1u << 5)
#define SR_TXE (1u << 7)
#define SR_ORE (1u << 3)
#define CR1_RE (1u << 2)
#define CR1_TE (1u << 3)
#define CR1_RXNEIE (1u << 5)
#define CR1_OVER8 (1u << 15)
#define CR1_UE (1u << 13)

#define BOUNDED_WAIT 200000u

static uint32_t core_hz = HSI_HZ;
static uint32_t apb1_hz = HSI_HZ;
static int emulated = 0;
static int dwt_counts = 0;
static uint8_t reset_reason = SER_RESET_OTHER;

static int wait_set(volatile uint32_t *reg, uint32_t mask) {
  for (uint32_t i = 0; i < BOUNDED_WAIT; i++) {
    if (*reg & mask) return 1;
  }
  return 0;
}

/* 180 MHz from the 8 MHz HSE: PLLM 4, PLLN 180, PLLP 2; over-drive on; 5 wait states; APB1 /4, APB2 /2.
 * On the F405 under QEMU the same sequence is harmless; QEMU models RCC as reading zero, so HSERDY
 * never rises: the port then keeps QEMU's fixed 168 MHz core clock. */
static void clock_init(void) {
  RCC_CR |= 1u << 16; /* HSEON (with HSEBYP for the ST-LINK clock) */
  RCC_CR |= 1u << 18;
  if (!wait_set(&RCC_CR, 1u << 17)) {
    emulated = 1;
    core_hz = QEMU_CORE_HZ;
    apb1_hz = QEMU_CORE_HZ / 4u;
    return;
  }
  RCC_APB1ENR |= 1u << 28; /* PWREN */
  PWR_CR |= 3u << 14;      /* VOS scale 1 */
  FLASH_ACR = (1u << 8) | (1u << 9) | (1u << 10) | 5u; /* prefetch, I/D cache, 5 WS */
  RCC_PLLCFGR = 4u | (180u << 6) | (0u << 16) | (1u << 22) | (7u << 24);
  RCC_CR |= 1u << 24; /* PLLON */
  PWR_CR |= 1u << 16; /* ODEN */
  (void)wait_set(&PWR_CSR, 1u << 16);
  PWR_CR |= 1u << 17; /* ODSWEN */
  (void)wait_set(&PWR_CSR, 1u << 17);
  if (!wait_set(&RCC_CR, 1u << 25)) return; /* PLL never locked: stay on HSI */
  RCC_CFGR = (5u << 10) | (4u << 13) | 2u; /* APB1 /4, APB2 /2, SW = PLL */
  for (uint32_t i = 0; i < BOUNDED_WAIT && ((RCC_CFGR >> 2) & 3u) != 2u; i++) {
  }
  core_hz = 180000000u;
  apb1_hz = 45000000u;
}

static void uart_init(void) {
  RCC_AHB1ENR |= 1u << 0;  /* GPIOA */
  RCC_APB1ENR |= 1u << 17; /* USART2 */
  GPIOA_MODER = (GPIOA_MODER & ~(0xFu << 4)) | (0xAu << 4); /* PA2, PA3 alternate function */
  GPIOA_OSPEEDR |= 0xFu << 4;
  GPIOA_PUPDR = (GPIOA_PUPDR & ~(0xFu << 4)) | (0x4u << 4); /* pull-up on RX */
  GPIOA_AFRL = (GPIOA_AFRL & ~(0xFFu << 8)) | (0x77u << 8); /* AF7 = USART2 */
  GPIOA_MODER = (GPIOA_MODER & ~(3u << 10)) | (1u << 10);   /* PA5 LED output */
  /* OVER8: USARTDIV = apb1 / (8 * baud), mantissa in [15:4], fraction (3 bits) in [2:0]. */
  uint32_t div16 = (2u * apb1_hz + SER_BAUD / 2u) / SER_BAUD; /* 16 * apb1 / (8 * baud) */
  USART2_BRR = ((div16 >> 4) << 4) | ((div16 & 0xFu) >> 1);
  USART2_CR1 = CR1_UE | CR1_TE | CR1_RE | CR1_RXNEIE | CR1_OVER8;
  ser_nvic_enable(USART2_IRQ);
}

static void drain_uart(void) {
  uint32_t sr;
  while ((sr = USART2_SR) & (SR_RXNE | SR_ORE)) {
    uint8_t byte = (uint8_t)USART2_DR; /* reading DR after SR also clears an overrun */
    if (sr & SR_RXNE) ser_rx_ring_put(byte);
  }
}

void ser_irq38_handler(void) { drain_uart(); }

static void counter_init(void) {
  DEMCR |= DEMCR_TRCENA;
  DWT_CYCCNT = 0;
  DWT_CTRL |= DWT_CTRL_CYCCNTENA;
  for (volatile int i = 0; i < 100; i++) {
  }
  dwt_counts = DWT_CYCCNT != 0; /* QEMU's DWT reads zero: fall back to SysTick */
  ser_systick_start();
}

static uint8_t read_reset_reason(void) {
  uint32_t csr = RCC_CSR;
  RCC_CSR |= 1u << 24; /* RMVF: clear the flags for the next reset */
  if (csr & (3u << 29)) return SER_RESET_WATCHDOG;
  if (csr & (1u << 28)) return SER_RESET_SOFTWARE;
  if (csr & (1u << 27)) return SER_RESET_POWER_ON;
  if (csr & (1u << 26)) return SER_RESET_PIN;
  return SER_RESET_OTHER;
}

void ser_port_init(void) {
  reset_reason = read_reset_reason();
  clock_init();
  counter_init();
  uart_init();
  drain_uart();
}

const char *ser_port_board_name(void) { return SER_BOARD_NAME; }
uint32_t ser_port_core_clock_hz(void) { return core_hz; }
const char *ser_port_counter_kind(void) {
  if (dwt_counts) return "DWT cycles";
  return emulated ? "QEMU SysTick ticks at 168 MHz (instruction-derived under -icount); emulator counts, not silicon cycles"
                  : "SysTick core-clock ticks";
}

uint32_t ser_port_cycles(void) { return dwt_counts ? DWT_CYCCNT : (uint32_t)ser_systick_ticks(); }
uint32_t ser_port_millis(void) { return (uint32_t)(ser_systick_ticks() / (core_hz / 1000u)); }

void ser_port_uart_write(const uint8_t *data, size_t n) {
  for (size_t i = 0; i < n; i++) {
    for (uint32_t w = 0; w < BOUNDED_WAIT && !(USART2_SR & SR_TXE); w++) {
    }
    USART2_DR = data[i];
  }
}

void ser_port_led(int on) {
  if (on) {
    GPIOA_ODR |= 1u << 5;
  } else {
    GPIOA_ODR &= ~(1u << 5);
  }
}

uint8_t ser_port_reset_reason(void) { return reset_reason; }
const char *ser_port_reset_reason_text(void) {
  return ser_reset_reason_name(reset_reason, emulated ? "unknown (QEMU models no RCC_CSR)" : "unknown");
}

void ser_port_reset(void) { ser_system_reset(); }
