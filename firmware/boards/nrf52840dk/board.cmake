# nRF52840-DK: nRF52840, Cortex-M4F at 64 MHz, 1 MB flash at 0x0, 256 KB RAM at 0x20000000,
# J-Link virtual COM port on UART0 (P0.06 TX, P0.08 RX). Builds and is budgeted here; runs on a desk.
set(SER_CPU_FLAGS -mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16)
set(SER_ARM_CPU ARMCM4)
set(SER_FLASH_ORIGIN 0x00000000)
set(SER_FLASH_SIZE 1024K)
set(SER_RAM_ORIGIN 0x20000000)
set(SER_RAM_SIZE 256K)
set(SER_STACK_SIZE 0x800)  # deepest use measured 1.3 KB (firmware_benchmark.py: stack painting)
set(SER_PORT_SOURCES ${CMAKE_CURRENT_LIST_DIR}/port.c ${CMAKE_CURRENT_LIST_DIR}/../common/rx_ring.c)
set(SER_FLASH_COMMAND pyocd flash -t nrf52840 $<TARGET_FILE:ser_fw>)
