# QEMU netduinoplus2: STM32F405 (same USART and RCC blocks as the F446), 1 MB flash, 128 KB SRAM
# (QEMU has no CCM). Runs the NUCLEO-F446RE port unchanged so its UART path is tested here;
# USART2 is QEMU's second serial port: -serial null -serial tcp:...
set(SER_CPU_FLAGS -mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16)
set(SER_ARM_CPU ARMCM4)
set(SER_FLASH_ORIGIN 0x08000000)
set(SER_FLASH_SIZE 1024K)
set(SER_RAM_ORIGIN 0x20000000)
set(SER_RAM_SIZE 128K)
set(SER_STACK_SIZE 0x800)  # deepest use measured 1.3 KB (firmware_benchmark.py: stack painting)
set(SER_PORT_SOURCES ${CMAKE_CURRENT_LIST_DIR}/../stm32f4/port_stm32f4.c ${CMAKE_CURRENT_LIST_DIR}/../common/rx_ring.c)
set(SER_QEMU_MACHINE netduinoplus2)
set(SER_QEMU_SERIAL_BEFORE -serial null)  # USART1 unused
