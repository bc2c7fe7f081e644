/* Minimal Cortex-M start-up shared by every board: vector table, .data/.bss set-up, FPU on,
 * C/C++ constructors, main. Boards name their interrupt handlers; the rest default to a loop. */
#include <stdint.h>

void SysTick_Handler(void);

extern uint32_t __data_load__, __data_start__, __data_end__, __bss_start__, __bss_end__, __stack_limit__, __stack_top__;
extern int main(void);
extern void __libc_init_array(void);

void Reset_Handler(void);
void Default_Handler(void);
void NMI_Handler(void) __attribute__((weak, alias("Default_Handler")));
void HardFault_Handler(void) __attribute__((weak, alias("Default_Handler")));
void MemManage_Handler(void) __attribute__((weak, alias("Default_Handler")));
void BusFault_Handler(void) __attribute__((weak, alias("Default_Handler")));
void UsageFault_Handler(void) __attribute__((weak, alias("Default_Handler")));
void SVC_Handler(void) __attribute__((weak, alias("Default_Handler")));
void PendSV_Handler(void) __attribute__((weak, alias("Default_Handler")));
/* External interrupts: boards define ser_irq<N>_handler for the lines they use. */
#define SER_IRQ(n) void ser_irq##n##_handler(void) __attribute__((weak, alias("Default_Handler")));
SER_IRQ(0) SER_IRQ(1) SER_IRQ(2) SER_IRQ(3) SER_IRQ(4) SER_IRQ(5) SER_IRQ(6) SER_IRQ(7)
SER_IRQ(8) SER_IRQ(9) SER_IRQ(10) SER_IRQ(11) SER_IRQ(12) SER_IRQ(13) SER_IRQ(14) SER_IRQ(15)
SER_IRQ(16) SER_IRQ(17) SER_IRQ(18) SER_IRQ(19) SER_IRQ(20) SER_IRQ(21) SER_IRQ(22) SER_IRQ(23)
SER_IRQ(24) SER_IRQ(25) SER_IRQ(26) SER_IRQ(27) SER_IRQ(28) SER_IRQ(29) SER_IRQ(30) SER_IRQ(31)
SER_IRQ(32) SER_IRQ(33) SER_IRQ(34) SER_IRQ(35) SER_IRQ(36) SER_IRQ(37) SER_IRQ(38) SER_IRQ(39)

typedef void (*vector_t)(void);
__attribute__((section(".isr_vector"), used)) const vector_t ser_vectors[16 + 40] = {
    (vector_t)&__stack_top__, Reset_Handler, NMI_Handler, HardFault_Handler, MemManage_Handler,
    BusFault_Handler, UsageFault_Handler, 0, 0, 0, 0, SVC_Handler, 0, 0, PendSV_Handler, SysTick_Handler,
    ser_irq0_handler, ser_irq1_handler, ser_irq2_handler, ser_irq3_handler, ser_irq4_handler,
    ser_irq5_handler, ser_irq6_handler, ser_irq7_handler, ser_irq8_handler, ser_irq9_handler,
    ser_irq10_handler, ser_irq11_handler, ser_irq12_handler, ser_irq13_handler, ser_irq14_handler,
    ser_irq15_handler, ser_irq16_handler, ser_irq17_handler, ser_irq18_handler, ser_irq19_handler,
    ser_irq20_handler, ser_irq21_handler, ser_irq22_handler, ser_irq23_handler, ser_irq24_handler,
    ser_irq25_handler, ser_irq26_handler, ser_irq27_handler, ser_irq28_handler, ser_irq29_handler,
    ser_irq30_handler, ser_irq31_handler, ser_irq32_handler, ser_irq33_handler, ser_irq34_handler,
    ser_irq35_handler, ser_irq36_handler, ser_irq37_handler, ser_irq38_handler, ser_irq39_handler,
};

/* Stack painting: every stack word below Reset_Handler's frame starts as SER_STACK_PAINT, so the
 * deepest use so far is the lowest word that differs (benchmarks/firmware_benchmark.py reads it
 * through QEMU's GDB stub and sizes SER_STACK_SIZE from it). */
#define SER_STACK_PAINT 0x5AC4C0DEu
static void paint_stack(void) {
  uint32_t *sp;
  __asm volatile("mov %0, sp" : "=r"(sp));
  for (uint32_t *p = &__stack_limit__; p < sp - 16; p++) *p = SER_STACK_PAINT;
}

void Reset_Handler(void) {
  paint_stack();
  uint32_t *src = &__data_load__;
  for (uint32_t *dst = &__data_start__; dst < &__data_end__;) *dst++ = *src++;
  for (uint32_t *dst = &__bss_start__; dst < &__bss_end__;) *dst++ = 0;
#if defined(__ARM_FP)
  /* CPACR: full access to CP10 and CP11 (the FPU) before any float instruction runs. */
  *(volatile uint32_t *)0xE000ED88u |= (0xFu << 20);
  __asm volatile("dsb\n isb" ::: "memory");
#endif
  __libc_init_array();
  main();
  for (;;) {
  }
}

/* SysTick wraps every 2^24 ticks; counting the wraps gives every board a 64-bit tick counter. */
volatile uint32_t ser_systick_wraps;
void SysTick_Handler(void) { ser_systick_wraps++; }

void Default_Handler(void) {
  for (;;) {
  }
}

/* __libc_init_array calls _init (normally from crti.o, which -nostartfiles leaves out). */
void _init(void);
void _init(void) {}

/* No heap: nothing may allocate after start-up (or before). A call to malloc fails loudly here. */
void *_sbrk(int increment) {
  (void)increment;
  return (void *)-1;
}
