/* The board port: the only code that differs between boards (in the spirit of MLPerf Tiny's th_*
 * layer). Everything else -- protocol, front end, inference -- is portable and calls only this. */
#ifndef SER_PORT_H_
#define SER_PORT_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Clocks, UART (receive interrupt into a ring buffer), cycle counter, LED. Called once at start-up. */
void ser_port_init(void);

const char *ser_port_board_name(void);
uint32_t ser_port_core_clock_hz(void);
/* What ser_port_cycles() counts, said in every report: silicon cycles or emulator instructions. */
const char *ser_port_counter_kind(void);
/* Free-running 32-bit counter of the unit above; callers take differences (wrap-safe). */
uint32_t ser_port_cycles(void);
/* Milliseconds since start-up (for protocol timeouts; coarse is fine). */
uint32_t ser_port_millis(void);

/* Take one received byte if there is one (returns 1), else 0. Never blocks. */
int ser_port_uart_read(uint8_t *byte);
/* Send bytes; blocks until they are queued to the hardware. */
void ser_port_uart_write(const uint8_t *data, size_t n);
/* Sleep until something happens (an interrupt); returns at once if bytes are waiting. */
void ser_port_idle(void);

/* Receive paths (PROTOCOL.md section 8): how many ways in the host's byte stream has (path 0: the
 * UART), and reading it from path p from the next byte on (0, or -1 for no such path).
 * common/rx_ring.c. */
unsigned ser_port_rx_paths(void);
int ser_port_set_rx_path(unsigned p);

void ser_port_led(int on);

/* Why the board last started: SER_RESET_* below, with a short text. */
enum { SER_RESET_POWER_ON = 1, SER_RESET_PIN = 2, SER_RESET_SOFTWARE = 3, SER_RESET_WATCHDOG = 4, SER_RESET_OTHER = 5 };
uint8_t ser_port_reset_reason(void);
const char *ser_port_reset_reason_text(void);

/* The text of a SER_RESET_* code, with the board's own words for a cause it cannot name. */
static inline const char *ser_reset_reason_name(uint8_t code, const char *other) {
  switch (code) {
    case SER_RESET_POWER_ON: return "power-on";
    case SER_RESET_PIN: return "reset pin";
    case SER_RESET_SOFTWARE: return "software reset";
    case SER_RESET_WATCHDOG: return "watchdog";
    default: return other;
  }
}
void ser_port_reset(void) __attribute__((noreturn));

#ifdef __cplusplus
}
#endif

#endif /* SER_PORT_H_ */
