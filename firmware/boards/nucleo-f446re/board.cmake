# NUCLEO-F446RE: STM32F446RE, Cortex-M4F at 180 MHz, 512 KB flash at 0x08000000, 128 KB SRAM
# (112 KB + 16 KB contiguous), ST-LINK virtual COM port on USART2 (PA2/PA3).
set(SER_CPU_FLAGS -mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16)
set(SER_ARM_CPU ARMCM4)
set(SER_FLASH_ORIGIN 0x08000000)
set(SER_FLASH_SIZE 512K)
set(SER_RAM_ORIGIN 0x20000000)
set(SER_RAM_SIZE 128K)
set(SER_STACK_SIZE 0x800)  # deepest use measured 1.3 KB (firmware_benchmark.py: stack painting)
set(SER_PORT_SOURCES ${CMAKE_CURRENT_LIST_DIR}/../stm32f4/port_stm32f4.c ${CMAKE_CURRENT_LIST_DIR}/../common/rx_ring.c)
set(SER_FLASH_COMMAND openocd -f board/st_nucleo_f4.cfg -c "program $<TARGET_FILE:ser_fw> verify reset exit")
