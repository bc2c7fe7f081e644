/* The few Armv7-M core registers the board ports use (NVIC, SysTick, DWT, SCB), defined here so
 * ports compile with nothing but the cross-compiler. Addresses from the Armv7-M Architecture
 * Reference Manual (the System Control Space at 0xE000E000). */
#ifndef SER_CORTEXM_REGS_H_
#define SER_CORTEXM_REGS_H_

#include <stdint.h>

#define SER_REG32(addr) (*(volatile uint32_t *)(addr))

/* SysTick */
#define SYST_CSR SER_REG32(0xE000E010u)
#define SYST_RVR SER_REG32(0xE000E014u)
#define SYST_CVR SER_REG32(0xE000E018u)
#define SYST_CSR_ENABLE (1u << 0)
#define SYST_CSR_TICKINT (1u << 1)
#define SYST_CSR_CLKSOURCE (1u << 2) /* the processor clock */
#define SYST_MAX 0x00FFFFFFu

/* NVIC */
#define NVIC_ISER(n) SER_REG32(0xE000E100u + 4u * (n))
static inline void ser_nvic_enable(unsigned irq) { NVIC_ISER(irq >> 5) = 1u << (irq & 31u); }

/* SCB */
#define SCB_AIRCR SER_REG32(0xE000ED0Cu)
#define SCB_AIRCR_SYSRESETREQ (0x05FA0000u | (1u << 2))

/* Debug: DEMCR.TRCENA turns the DWT on; DWT_CYCCNT counts core cycles (zero under QEMU). */
#define DEMCR SER_REG32(0xE000EDFCu)
#define DEMCR_TRCENA (1u << 24)
#define DWT_CTRL SER_REG32(0xE0001000u)
#define DWT_CYCCNT SER_REG32(0xE0001004u)
#define DWT_CTRL_CYCCNTENA 1u

static inline void ser_disable_irq(void) { __asm volatile("cpsid i" ::: "memory"); }
static inline void ser_enable_irq(void) { __asm volatile("cpsie i" ::: "memory"); }
static inline void ser_wfi(void) { __asm volatile("wfi"); }

static inline void ser_system_reset(void) __attribute__((noreturn));
static inline void ser_system_reset(void) {
  __asm volatile("dsb" ::: "memory");
  SCB_AIRCR = SCB_AIRCR_SYSRESETREQ;
  __asm volatile("dsb" ::: "memory");
  for (;;) {
  }
}

/* SysTick as a 64-bit tick counter: the wrap interrupt (ser_systick_wraps++) extends it. */
extern volatile uint32_t ser_systick_wraps;
static inline void ser_systick_start(void) {
  SYST_RVR = SYST_MAX;
  SYST_CVR = 0;
  SYST_CSR = SYST_CSR_CLKSOURCE | SYST_CSR_TICKINT | SYST_CSR_ENABLE;
}
static inline uint64_t ser_systick_ticks(void) {
  uint32_t wraps, val;
  do { /* re-read if a wrap was counted meanwhile */
    wraps = ser_systick_wraps;
    val = SYST_CVR;
  } while (wraps != ser_systick_wraps);
  return ((uint64_t)wraps << 24) + (SYST_MAX - val);
}

#endif /* SER_CORTEXM_REGS_H_ */
